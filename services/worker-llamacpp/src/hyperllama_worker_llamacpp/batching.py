"""Continuous batching, the engine-free part: which sequence sits in which slot and what each decode
step feeds the model.

Every step advances all running sequences at once: a sequence that is generating feeds its last sampled
token, and sequences still reading their prompt share what is left of the step's token budget, so a long
prompt is prefilled in chunks while the others keep generating. New sequences join between steps.

A slot keeps the tokens its KV cells hold after its sequence finishes, so a new sequence whose prompt
starts the same way (a system prompt, a chat history) decodes only the rest. The prefix can come from
the free slot the sequence takes, or be copied from any other slot, busy or free, or from the prompt
cache (the engine copies the KV cells): a tenant with two requests in flight then reuses its prompt
twice instead of pushing another tenant's prompt out to make room. The slot given up is the one whose
cache is worth least: the tokens it holds that no other slot or cached prompt also holds. What it held
is parked in the prompt cache (host memory, a budget of tokens, least recently used out first), so a
worker remembers more prompts than it has slots.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sequence:
    prompt: list[int]
    limit: int  # most tokens to generate
    state: Any = None  # the engine's per-sequence data (sampler, output sink, text filters)
    slot: int = -1
    pending: list[int] = field(default_factory=list)  # tokens to feed at the next steps
    produced: int = 0
    cancelled: bool = False
    reused: int = 0  # prompt tokens found in the slot's cache

    @property
    def prefilling(self) -> bool:
        return self.produced == 0


@dataclass
class Slot:
    index: int
    seq: Sequence | None = None
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells this slot holds, in order
    last_used: int = 0  # admission counter when it was last seated: the older, the sooner given up


@dataclass
class Parked:
    """A prompt prefix a slot gave up, in the prompt cache; the engine holds its KV cells under ``key``."""

    key: int
    cached: list[int]
    last_used: int


@dataclass(frozen=True)
class Seat:
    """A sequence seated in ``seq.slot``. The engine, in this order: keeps the slot's current cells in
    the prompt cache under ``park``; forgets the parked prompts in ``drop``; replaces the slot's cells
    with those of slot ``copy_from`` or of parked prompt ``restore``; drops the slot's cells from
    ``kept`` on (cells before it are the reused prefix)."""

    seq: Sequence
    kept: int
    copy_from: int | None = None
    restore: int | None = None
    park: int | None = None
    drop: tuple[int, ...] = ()


@dataclass(frozen=True)
class Feed:
    """One token of a decode step: ``seq`` reads ``token`` at position ``pos``."""

    seq: Sequence
    token: int
    pos: int
    logits: bool  # sample from this position (the sequence's last fed token in this step)


# A copy of KV cells stalls the decode step (milliseconds per hundred tokens): a prefix is copied, or
# parked, only when that saves at least this many tokens of prefill.
COPY_MIN_GAIN = 64


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the shared prefix. Slice comparisons run in C: ever larger blocks are compared until
    one differs, then that block is bisected, so the cost follows the match, not the lists' length
    (every admission compares each slot's cache, thousands of tokens, with the others)."""
    n = min(len(a), len(b))
    lo, step = 0, 8
    while True:  # invariant: a[:lo] == b[:lo]
        hi = min(n, lo + step)
        if lo == hi:
            return lo
        if a[lo:hi] != b[lo:hi]:
            break
        lo, step = hi, step * 2
    while hi - lo > 1:  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class BatchPlanner:
    def __init__(self, n_slots: int, n_batch: int, cache_tokens: int = 0):
        self.slots = [Slot(i) for i in range(n_slots)]
        self.n_batch = n_batch
        self.waiting: deque[Sequence] = deque()
        self.cache_tokens = cache_tokens  # the prompt cache's budget
        self.parked: list[Parked] = []
        self.max_parked = max(8, n_slots)
        self._keys = itertools.count()
        self._seated = 0

    @property
    def running(self) -> list[Sequence]:
        return [s.seq for s in self.slots if s.seq is not None]

    @property
    def in_use(self) -> int:
        return sum(1 for s in self.slots if s.seq is not None)

    @property
    def cache_capacity(self) -> int:
        """Prompt tokens this planner can keep cached now: what its slots hold, plus the prompt cache's
        budget. (Read from other threads: a moment's inexactness does not matter.)"""
        return sum(len(s.cached) for s in self.slots) + self.cache_tokens

    def submit(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def admit(self) -> list[Seat]:
        """Seat waiting sequences in free slots, reusing the longest cached prefix of their prompts."""
        seated: list[Seat] = []
        while self.waiting:
            free = [s for s in self.slots if s.seq is None]
            if not free:
                break
            seq = self.waiting.popleft()
            if seq.cancelled:
                continue
            seated.append(self._seat(seq, free))
        return seated

    def _seat(self, seq: Sequence, free: list[Slot]) -> Seat:
        # At least one prompt token must be decoded to get logits to sample from. (An empty prompt has
        # none: it is seated with nothing to feed, and the engine fails it.)
        usable = max(0, len(seq.prompt) - 1)
        caches: list[Slot | Parked] = [*self.slots, *self.parked]
        match = {id(c): min(common_prefix(c.cached, seq.prompt), usable) for c in caches}
        # The free slot that saves most prefill now; among equals, the one whose cache is worth least,
        # then the least recently used. A match shorter than both COPY_MIN_GAIN and half the prompt
        # (a chat template's first tokens, shared by every prompt) saves too little to count: it
        # must not cost another prompt its cache.
        significant = min(COPY_MIN_GAIN, usable // 2)

        def saving(s: Slot) -> int:
            return match[id(s)] if match[id(s)] >= significant else 0

        covered: dict[int, int] = {}  # per slot, computed once: this runs before every first token

        def unique(s: Slot, kept: int) -> int:
            """Cached tokens of ``s`` past ``kept`` that no other slot or parked prompt also holds:
            what reusing the slot loses unless it is parked."""
            if id(s) not in covered:
                others = (common_prefix(s.cached, o.cached) for o in caches if o is not s)
                covered[id(s)] = max(others, default=0)
            return max(0, len(s.cached) - max(kept, covered[id(s)]))

        here = max(free, key=lambda s: (saving(s), -unique(s, match[id(s)]), -s.last_used))
        # Or the longest prefix anywhere, copied into the free slot whose cache is worth least.
        source: Slot | Parked | None = max(caches, key=lambda c: match[id(c)])
        if source is not here and match[id(source)] - match[id(here)] >= COPY_MIN_GAIN:
            here = min(free, key=lambda s: (unique(s, 0), s.last_used))
        else:
            source = None
        kept = match[id(source if source is not None else here)]
        lost = unique(here, 0 if source is not None else kept)
        park, drop = self._park(here, lost, spare=source)
        self._seated += 1
        if source is not None:
            source.last_used = self._seated
        here.cached = (source.cached if source is not None else here.cached)[:kept]
        here.seq, here.last_used = seq, self._seated
        seq.slot = here.index
        seq.reused = kept
        seq.pending = list(seq.prompt[kept:])
        return Seat(
            seq,
            kept,
            copy_from=source.index if isinstance(source, Slot) else None,
            restore=source.key if isinstance(source, Parked) else None,
            park=park,
            drop=drop,
        )

    def _park(self, slot: Slot, lost: int, spare: Slot | Parked | None) -> tuple[int | None, tuple[int, ...]]:
        """Keep the slot's cache in the prompt cache if it is about to lose ``lost`` tokens nothing else
        holds, making room by dropping the least recently used parked prompts (never ``spare``, about
        to be copied from) and those the slot's cache extends. At most max_parked prompts are kept:
        every admission compares each free slot with every cache."""
        if lost < COPY_MIN_GAIN or len(slot.cached) > self.cache_tokens:
            return None, ()
        extended = [p for p in self.parked if common_prefix(p.cached, slot.cached) == len(p.cached)]
        drop = [p for p in extended if p is not spare]
        room = self.cache_tokens - sum(len(p.cached) for p in self.parked if p not in drop)
        for p in sorted(self.parked, key=lambda p: p.last_used):
            if room >= len(slot.cached) and len(self.parked) - len(drop) < self.max_parked:
                break
            if p is not spare and p not in drop:
                drop.append(p)
                room += len(p.cached)
        if room < len(slot.cached) or len(self.parked) - len(drop) >= self.max_parked:
            return None, ()  # only ``spare`` could make room: keep it, it is wanted now
        self.parked = [p for p in self.parked if p not in drop]
        entry = Parked(next(self._keys), list(slot.cached), slot.last_used)
        self.parked.append(entry)
        return entry.key, tuple(p.key for p in drop)

    def forget_prefix(self, seq: Sequence) -> None:
        """The engine could not copy the sequence's prefix in: it prefills the whole prompt."""
        self.slots[seq.slot].cached = []
        seq.reused = 0
        seq.pending = list(seq.prompt)

    def plan(self) -> list[Feed]:
        """The tokens of the next decode step: generating sequences first, then prompt chunks."""
        feeds: list[Feed] = []
        budget = self.n_batch
        running = self.running
        for seq in running:
            if not seq.prefilling and budget > 0:
                feeds.append(Feed(seq, seq.pending[0], len(self.slots[seq.slot].cached), True))
                budget -= 1
        for seq in running:
            if seq.prefilling and budget > 0:
                take = seq.pending[:budget]
                start = len(self.slots[seq.slot].cached)
                last = len(take) == len(seq.pending)
                feeds.extend(
                    Feed(seq, tok, start + i, last and i == len(take) - 1) for i, tok in enumerate(take)
                )
                budget -= len(take)
        return feeds

    def fed(self, feeds: list[Feed]) -> None:
        """The step was decoded: its tokens are now in the KV cache."""
        counts: dict[int, int] = {}
        for f in feeds:
            self.slots[f.seq.slot].cached.append(f.token)
            counts[id(f.seq)] = counts.get(id(f.seq), 0) + 1
        for seq in self.running:
            del seq.pending[: counts.get(id(seq), 0)]

    def sampled(self, seq: Sequence, token: int) -> None:
        seq.produced += 1
        seq.pending = [token]

    def finish(self, seq: Sequence) -> None:
        """Free the sequence's slot at once; its cached tokens stay for prefix reuse."""
        if seq.slot >= 0 and self.slots[seq.slot].seq is seq:
            self.slots[seq.slot].seq = None
        seq.slot = -1

    def forget_cache(self, slot: int) -> None:
        self.slots[slot].cached = []

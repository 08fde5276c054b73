"""Continuous batching, the engine-free part: which sequence sits in which slot and what each decode
step feeds the model.

Every step advances all running sequences at once: a sequence that is generating feeds its last sampled
token, and sequences still reading their prompt share what is left of the step's token budget, so a long
prompt is prefilled in chunks while the others keep generating. New sequences join between steps.

A slot keeps the tokens its KV cells hold after its sequence finishes, so a new sequence whose prompt
starts the same way (a system prompt, a chat history) decodes only the rest. The prefix can come from
the free slot the sequence takes, or be copied from any other slot, busy or free (the engine copies the
slot's KV cells): a tenant with two requests in flight then reuses its prompt twice instead of pushing
another tenant's prompt out to make room. The slot given up is the one whose cache is worth least: the
tokens it holds that no other slot also holds.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Seat:
    """A sequence seated in ``seq.slot``: the engine drops the slot's KV cells from ``kept`` on (cells
    before it are a reused prompt prefix), after first copying the cells of slot ``copy_from`` when set."""

    seq: Sequence
    kept: int
    copy_from: int | None = None


@dataclass(frozen=True)
class Feed:
    """One token of a decode step: ``seq`` reads ``token`` at position ``pos``."""

    seq: Sequence
    token: int
    pos: int
    logits: bool  # sample from this position (the sequence's last fed token in this step)


# A copy moves a slot's whole KV buffer (its full context, tens of MB), so it must save at least this
# many tokens of prefill to be worth stalling the step for.
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
    def __init__(self, n_slots: int, n_batch: int):
        self.slots = [Slot(i) for i in range(n_slots)]
        self.n_batch = n_batch
        self.waiting: deque[Sequence] = deque()
        self._seated = 0

    @property
    def running(self) -> list[Sequence]:
        return [s.seq for s in self.slots if s.seq is not None]

    @property
    def in_use(self) -> int:
        return sum(1 for s in self.slots if s.seq is not None)

    def submit(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def admit(self) -> list[Seat]:
        """Seat waiting sequences in free slots, reusing the longest cached prefix of their prompts."""
        seated: list[Seat] = []
        copied_into: set[int] = set()  # a copy lands at the next decode: not a source before then
        while self.waiting:
            free = [s for s in self.slots if s.seq is None]
            if not free:
                break
            seq = self.waiting.popleft()
            if seq.cancelled:
                continue
            # At least one prompt token must be decoded to get logits to sample from. (An empty prompt
            # has none: it is seated with nothing to feed, and the engine fails it.)
            usable = max(0, len(seq.prompt) - 1)
            match = {s.index: min(common_prefix(s.cached, seq.prompt), usable) for s in self.slots}
            # Taking a free slot: what its cache saves this prompt, less what the cluster of caches loses.
            here = max(free, key=lambda s: (match[s.index] - self._unique(s, match[s.index]), -s.last_used))
            gain = match[here.index] - self._unique(here, match[here.index])
            sources = [s for s in self.slots if s.index not in copied_into]
            source = max(sources, key=lambda s: match[s.index]) if sources else None
            copy_from = None
            if source is not None and source is not here:
                target = min(free, key=lambda s: (self._unique(s, 0), s.last_used))
                if match[source.index] - self._unique(target, 0) - gain >= COPY_MIN_GAIN:
                    here, copy_from = target, source.index
            kept = match[copy_from] if copy_from is not None else match[here.index]
            self._seated += 1
            here.seq, here.last_used = seq, self._seated
            here.cached = (self.slots[copy_from].cached if copy_from is not None else here.cached)[:kept]
            if copy_from is not None:
                copied_into.add(here.index)
            seq.slot = here.index
            seq.reused = kept
            seq.pending = list(seq.prompt[kept:])
            seated.append(Seat(seq, kept, copy_from))
        return seated

    def _unique(self, slot: Slot, kept: int) -> int:
        """Cached tokens of ``slot`` past ``kept`` that no other slot also holds: lost if it is reused."""
        covered = max((common_prefix(slot.cached, o.cached) for o in self.slots if o is not slot), default=0)
        return max(0, len(slot.cached) - max(kept, covered))

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

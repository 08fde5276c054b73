"""Continuous batching, the engine-free part: which sequence sits in which slot and what each decode
step feeds the model.

Every step advances all running sequences at once: a sequence that is generating feeds its last sampled
token, and sequences still reading their prompt share what is left of the step's token budget, so a long
prompt is prefilled in chunks while the others keep generating. New sequences join between steps.

A slot keeps the tokens its KV cells hold after its sequence finishes; a new sequence goes to the free
slot whose cached tokens share the longest prefix with its prompt (a system prompt, a chat history), and
only the rest of the prompt is decoded.
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


@dataclass(frozen=True)
class Feed:
    """One token of a decode step: ``seq`` reads ``token`` at position ``pos``."""

    seq: Sequence
    token: int
    pos: int
    logits: bool  # sample from this position (the sequence's last fed token in this step)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BatchPlanner:
    def __init__(self, n_slots: int, n_batch: int):
        self.slots = [Slot(i) for i in range(n_slots)]
        self.n_batch = n_batch
        self.waiting: deque[Sequence] = deque()

    @property
    def running(self) -> list[Sequence]:
        return [s.seq for s in self.slots if s.seq is not None]

    @property
    def in_use(self) -> int:
        return sum(1 for s in self.slots if s.seq is not None)

    def submit(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def admit(self) -> list[tuple[Sequence, int]]:
        """Seat waiting sequences in free slots. Returns (sequence, kept) pairs: the engine must drop
        the slot's KV cells from position ``kept`` on; cells before it are a reused prompt prefix."""
        seated = []
        while self.waiting:
            free = [s for s in self.slots if s.seq is None]
            if not free:
                break
            seq = self.waiting.popleft()
            if seq.cancelled:
                continue
            # Longest shared prefix wins; among equals, the slot with the least cached (least to lose).
            slot = max(free, key=lambda s: (common_prefix(s.cached, seq.prompt), -len(s.cached)))
            # At least one prompt token must be decoded to get logits to sample from. (An empty prompt
            # has none: it is seated with nothing to feed, and the engine fails it.)
            kept = max(0, min(common_prefix(slot.cached, seq.prompt), len(seq.prompt) - 1))
            slot.seq = seq
            slot.cached = slot.cached[:kept]
            seq.slot = slot.index
            seq.reused = kept
            seq.pending = list(seq.prompt[kept:])
            seated.append((seq, kept))
        return seated

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

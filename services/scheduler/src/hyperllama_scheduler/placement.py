"""Which worker a request goes to: the one whose cache most likely holds the longest prefix of its
prompt, balanced against load.

The scheduler does not tokenize. It cuts the prompt (a chat's messages with their roles, or a raw
prompt) into blocks of UTF-8 bytes and hashes each block together with everything before it, so a
block's hash names the whole prefix up to it. The hashes of every request granted to a worker are
recorded for that worker (keys.prefixes); a new request's match on a worker is the number of its
leading hashes found there. Only whole blocks count, so a short prompt has no prefix to match and
goes to the least-loaded worker.
"""

from __future__ import annotations

import hashlib

from hyperllama.worker.v1 import worker_pb2

BLOCK_BYTES = 256
MAX_BLOCKS = 64  # prefixes past 16 KiB are not told apart further
# Prompt bytes taken as one token when comparing blocks sent to a worker with the tokens its cache
# holds (the scheduler does not tokenize; English text runs about 4 bytes a token).
BYTES_PER_TOKEN = 4
# How much a full prefix match outweighs an idle worker. Above 1: a worker that holds the prompt
# wins over an idle one as long as it has a free slot; a partial match still yields to load.
PREFIX_WEIGHT = 2.0
# A worker that was sent at least this share of a prompt's blocks is its home: while the home is full
# the request waits for it a little (the scheduler's prefix_patience_seconds) rather than go to a
# worker that would compute the whole prefix again, and that would then compete for it.
HOME_MATCH = 0.5


def prompt_text(req: worker_pb2.GenerateRequest) -> str:
    if req.HasField("chat"):
        # Separators that cannot be confused with message text keep "ab"+"c" apart from "a"+"bc".
        return "".join(f"\x1e{m.role}\x1f{m.content}" for m in req.chat.messages)
    if req.HasField("tokens"):
        # Token ids as text (one character each): a prompt of ids shares blocks with its own repeats.
        return "\x1c" + "".join(chr(0x10000 + i) if i < 0x100000 else "\ufffd" for i in req.tokens.ids)
    return "\x1d" + req.prompt


def prefix_hashes(req: worker_pb2.GenerateRequest) -> list[str]:
    text = prompt_text(req).encode("utf-8", "surrogatepass")
    running = hashlib.blake2b(digest_size=8)
    hashes = []
    for start in range(0, min(len(text), BLOCK_BYTES * MAX_BLOCKS), BLOCK_BYTES):
        block = text[start : start + BLOCK_BYTES]
        if len(block) < BLOCK_BYTES:
            break
        running.update(block)
        hashes.append(running.hexdigest())
    return hashes


def still_cached(newer_blocks: int, cache_tokens: int) -> bool:
    """Whether a prefix sent to a worker is likely still in its cache, given how many blocks of
    prompts it was sent after that prefix. A worker's caches keep the prompts it used last, about
    ``cache_tokens`` tokens of them, so a prefix followed by more than that has most likely been
    pushed out; counting it would send its next request to a worker that prefills it again (and
    pushes out another prompt in turn). A worker that reports no figure (0) is taken to keep all."""
    return cache_tokens <= 0 or newer_blocks * BLOCK_BYTES < cache_tokens * BYTES_PER_TOKEN


def choose(
    candidates: list[worker_pb2.WorkerInfo],
    free: dict[str, int],
    capacity: dict[str, int],
    matches: dict[str, int],
    blocks: int,
) -> worker_pb2.WorkerInfo:
    """The best of ``candidates`` (each has a free slot): prefix match first, then free share,
    then most free slots. With no blocks (or prefix awareness off) it is plain least-loaded."""

    def score(w: worker_pb2.WorkerInfo) -> tuple[float, int]:
        load = free[w.worker_id] / max(1, capacity[w.worker_id])
        match = matches.get(w.worker_id, 0) / blocks if blocks else 0.0
        return (PREFIX_WEIGHT * match + load, free[w.worker_id])

    return max(candidates, key=score)


def home(
    workers: list[worker_pb2.WorkerInfo], matches: dict[str, int], blocks: int
) -> worker_pb2.WorkerInfo | None:
    """The worker most of the prompt's prefix was sent to, if any was sent at least HOME_MATCH."""
    if not blocks or not workers:
        return None
    best = max(workers, key=lambda w: matches.get(w.worker_id, 0))
    return best if matches.get(best.worker_id, 0) / blocks >= HOME_MATCH else None

"""Decodes that prepare a new context before it serves anything (the thread pool's check, finding the
KV cache's pages): tokens into slot 0, which the caller empties again."""

from __future__ import annotations

from typing import Any

import llama_cpp


def decode_into_slot0(ctx: llama_cpp.llama_context_p, batch: Any, tokens: list[int], start: int = 0) -> bool:
    """Decode ``tokens`` at positions from ``start``, logits for the last one only. ``batch`` is a
    llama_cpp.llama_batch (its ctypes arrays defeat the type checker) with room for them."""
    for i, token in enumerate(tokens):
        batch.token[i] = token
        batch.pos[i] = start + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = i == len(tokens) - 1
    batch.n_tokens = len(tokens)
    return bool(llama_cpp.llama_decode(ctx, batch) == 0)

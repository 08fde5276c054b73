"""Log-probabilities as each API writes them, from the worker's per-token entries
(GenerateChunk.logprobs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hyperllama.worker.v1 import worker_pb2


def _alternative(t: worker_pb2.TopLogprob | worker_pb2.TokenLogprob) -> dict[str, Any]:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}


def token_entries(entries: Iterable[worker_pb2.TokenLogprob]) -> list[dict[str, Any]]:
    """OpenAI chat's ``logprobs.content`` and Ollama's ``logprobs``: one object per token, with its
    most likely alternatives."""
    return [{**_alternative(e), "top_logprobs": [_alternative(t) for t in e.top_logprobs]} for e in entries]


def chat(entries: Iterable[worker_pb2.TokenLogprob]) -> dict[str, Any]:
    return {"content": token_entries(entries), "refusal": None}


def completion(entries: Iterable[worker_pb2.TokenLogprob], offset: int) -> dict[str, Any]:
    """The completions API's older shape: parallel lists, ``text_offset`` counted in characters from
    ``offset`` (where the generated text starts in the choice's text)."""
    tokens, logprobs, tops, offsets = [], [], [], []
    for e in entries:
        tokens.append(e.token)
        logprobs.append(e.logprob)
        tops.append({t.token: t.logprob for t in e.top_logprobs})
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}

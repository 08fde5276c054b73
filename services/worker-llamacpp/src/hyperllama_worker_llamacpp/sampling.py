"""Per-sequence sampler chains (llama.cpp's sampler API), built from a request's SamplingParams."""

from __future__ import annotations

import json
import random
from functools import lru_cache

import llama_cpp
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import InvalidRequest
from llama_cpp import LlamaGrammar
from llama_cpp.llama_grammar import JSON_GBNF

# Used when neither the request nor the model registry sets a value (llama.cpp's own defaults).
DEFAULTS: dict[str, float] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}
PENALTY_LAST_N = 64


@lru_cache(maxsize=64)
def grammar_text(kind: int, schema: str) -> str:
    """GBNF for a response format; raises InvalidRequest for a schema that cannot be expressed."""
    if kind == worker_pb2.ResponseFormat.KIND_JSON_OBJECT:
        return JSON_GBNF
    try:
        json.loads(schema)
        return str(LlamaGrammar.from_json_schema(schema, verbose=False)._grammar)
    except Exception as err:  # the converter raises assorted errors for schemas it cannot express
        raise InvalidRequest(f"unsupported JSON schema: {err}", param="response_format") from err


def resolve(params: worker_pb2.SamplingParams, model_defaults: dict[str, object]) -> dict[str, float]:
    """Request values, else the model's registry defaults, else llama.cpp's defaults."""
    out = {}
    for name, fallback in DEFAULTS.items():
        if params.HasField(name):  # type: ignore[arg-type]
            out[name] = float(getattr(params, name))
        else:
            out[name] = float(model_defaults.get(name, fallback))  # type: ignore[arg-type]
    return out


class SamplerChain:
    """Owns one llama_sampler chain; free it with close()."""

    def __init__(
        self,
        vocab: llama_cpp.llama_vocab_p,
        params: worker_pb2.SamplingParams,
        model_defaults: dict[str, object],
        grammar: str | None,
    ):
        p = resolve(params, model_defaults)
        seed = (params.seed if params.HasField("seed") else random.getrandbits(32)) % 2**32
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain = chain
        add = llama_cpp.llama_sampler_chain_add
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        penalties = (p["repeat_penalty"], p["frequency_penalty"], p["presence_penalty"])
        add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, *penalties))
        if grammar is not None:
            add(chain, llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root"))
        if p["temperature"] <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return
        add(chain, llama_cpp.llama_sampler_init_top_k(int(p["top_k"])))
        add(chain, llama_cpp.llama_sampler_init_top_p(p["top_p"], 1))
        add(chain, llama_cpp.llama_sampler_init_min_p(p["min_p"], 1))
        add(chain, llama_cpp.llama_sampler_init_temp(p["temperature"]))
        add(chain, llama_cpp.llama_sampler_init_dist(seed))

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Sample from the logits at batch position ``index`` (and accept the token)."""
        return int(llama_cpp.llama_sampler_sample(self.chain, ctx, index))

    def close(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

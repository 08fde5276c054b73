"""Per-sequence sampler chains (llama.cpp's sampler API), built from a request's SamplingParams."""

from __future__ import annotations

import ctypes
import math
import random
from collections.abc import Mapping

import llama_cpp
import numpy as np
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import BackendFailed, InvalidRequest

# Used when neither the request, the model's parameters nor the API's defaults set a value
# (llama.cpp's own defaults).
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
# llama_token_data, as numpy sees it: a whole vocabulary of candidates filled in one copy.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def resolve(
    params: worker_pb2.SamplingParams,
    model_defaults: Mapping[str, object],
    api_defaults: worker_pb2.SamplingParams | None = None,
) -> dict[str, float]:
    """Request values, else the model's parameters, else the API's defaults (GenerateRequest.defaults),
    else llama.cpp's."""
    out = {}
    for name, fallback in DEFAULTS.items():
        if params.HasField(name):  # type: ignore[arg-type]
            out[name] = float(getattr(params, name))
        elif isinstance(value := model_defaults.get(name), int | float):
            out[name] = float(value)
        elif api_defaults is not None and api_defaults.HasField(name):  # type: ignore[arg-type]
            out[name] = float(getattr(api_defaults, name))
        else:
            out[name] = fallback
    return out


def logit_bias_sampler(n_vocab: int, bias: Mapping[int, float]) -> llama_cpp.llama_sampler_p | None:
    """llama.cpp's logit-bias sampler (it copies the list); ids outside the vocabulary are refused."""
    for token, value in bias.items():
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"logit_bias names token id {token}, which is not in the model's vocabulary "
                f"(ids 0-{n_vocab - 1})",
                param="logit_bias",
            )
        if not math.isfinite(value):
            raise InvalidRequest(
                f"logit_bias for token id {token} is not a finite number", param="logit_bias"
            )
    entries = (llama_cpp.llama_logit_bias * len(bias))(
        *(llama_cpp.llama_logit_bias(t, b) for t, b in sorted(bias.items()))
    )
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries)


class SamplerChain:
    """Owns one llama_sampler chain; free it with close().

    A chain with a grammar is sampled step by step instead of with llama_sampler_sample: a grammar can
    reach a state no token satisfies (a character class that matches nothing, say), every candidate is
    then -inf, the chain picks one anyway, and llama.cpp aborts the process when the grammar is asked
    to accept it. Checking the pick before accepting it turns that into an error for one request.
    """

    def __init__(
        self,
        vocab: llama_cpp.llama_vocab_p,
        params: worker_pb2.SamplingParams,
        model_defaults: Mapping[str, object],
        grammar: str | None,
        api_defaults: worker_pb2.SamplingParams | None = None,
    ):
        p = resolve(params, model_defaults, api_defaults)
        seed = (params.seed if params.HasField("seed") else random.getrandbits(32)) % 2**32
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if not self.chain:
            raise BackendFailed("llama.cpp could not create a sampler chain")
        self._candidates: np.ndarray | None = None
        try:
            n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
            if params.logit_bias:
                # First in the chain, as llama-server puts it: every later sampler sees biased logits.
                self._add("logit_bias", logit_bias_sampler(n_vocab, params.logit_bias))
            penalties = (p["repeat_penalty"], p["frequency_penalty"], p["presence_penalty"])
            self._add(
                "penalties", llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, *penalties)
            )
            if grammar is not None:
                sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
                if not sampler:
                    raise InvalidRequest(
                        "the response format's grammar is rejected by llama.cpp", param="response_format"
                    )
                self._add("grammar", sampler)
                self._candidates = np.zeros(n_vocab, dtype=TOKEN_DATA)
                self._ids = np.arange(n_vocab, dtype=np.int32)
                self._array = llama_cpp.llama_token_data_array(
                    data=self._candidates.ctypes.data_as(llama_cpp.llama_token_data_p),
                    size=n_vocab,
                    selected=-1,
                    sorted=False,
                )
            if p["temperature"] <= 0:
                self._add("greedy", llama_cpp.llama_sampler_init_greedy())
                return
            self._add("top_k", llama_cpp.llama_sampler_init_top_k(int(p["top_k"])))
            self._add("top_p", llama_cpp.llama_sampler_init_top_p(p["top_p"], 1))
            self._add("min_p", llama_cpp.llama_sampler_init_min_p(p["min_p"], 1))
            self._add("temp", llama_cpp.llama_sampler_init_temp(p["temperature"]))
            self._add("dist", llama_cpp.llama_sampler_init_dist(seed))
        except BaseException:
            self.close()  # the chain frees the samplers already added to it
            raise

    def _add(self, name: str, sampler: llama_cpp.llama_sampler_p | None) -> None:
        """A NULL sampler in a chain crashes llama.cpp at the first token: refuse it here."""
        if not sampler:
            raise BackendFailed(f"llama.cpp could not create the {name} sampler")
        llama_cpp.llama_sampler_chain_add(self.chain, sampler)

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int | None:
        """Sample from the logits at batch position ``index`` and accept the token; None when a
        grammar admits no token at all (the sequence cannot go on)."""
        if self._candidates is None:
            return int(llama_cpp.llama_sampler_sample(self.chain, ctx, index))
        n = len(self._candidates)
        logits = llama_cpp.llama_get_logits_ith(ctx, index)
        self._candidates["id"] = self._ids
        self._candidates["logit"] = np.ctypeslib.as_array(logits, shape=(n,))
        self._candidates["p"] = 0.0
        cur = self._array
        # The samplers may shrink the array or point it elsewhere: reset it for every step.
        cur.data = self._candidates.ctypes.data_as(llama_cpp.llama_token_data_p)  # type: ignore[assignment]
        cur.size = n
        cur.selected = -1
        cur.sorted = False
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(cur))
        if not 0 <= cur.selected < cur.size:
            return None
        picked = cur.data[cur.selected]
        if not math.isfinite(picked.logit):  # the grammar rejected every candidate
            return None
        llama_cpp.llama_sampler_accept(self.chain, picked.id)
        return int(picked.id)

    def close(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

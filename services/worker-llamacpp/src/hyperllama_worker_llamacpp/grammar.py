"""Grammars for response formats: a JSON schema turned into GBNF, and proof that llama.cpp takes it.

llama.cpp answers a grammar its parser rejects with a NULL sampler, and a NULL sampler in a chain
crashes the process at the first token. So every grammar is compiled once, in the caller's thread,
before its request takes a slot; an engine that cannot use it is a client error (400), never a crash.
Schemas are also checked for shapes the converter handles badly: it writes repetitions out in full,
so ``minItems: 10**9`` would exhaust memory before llama.cpp ever saw the grammar.
"""

from __future__ import annotations

import json
from functools import lru_cache

import llama_cpp
import numpy as np
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import InvalidRequest
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

PARAM = "response_format"
# Repetition bounds the converter writes out one item at a time (and nests for optional ones).
MAX_REPETITION = 1000
# Nesting of objects and arrays inside a schema; the converter recurses once per level.
MAX_SCHEMA_DEPTH = 32
# Grammars after conversion; a larger one costs seconds to parse and megabytes per sequence.
MAX_GRAMMAR_CHARS = 1_000_000

_BOUNDS = (
    ("minItems", "maxItems"),
    ("minLength", "maxLength"),
    ("minProperties", "maxProperties"),
    ("minContains", "maxContains"),
)


def _check_schema(node: object, depth: int = 0) -> None:
    """Reject schema shapes that the converter would mistranslate or blow up on."""
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidRequest(f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels", param=PARAM)
    if isinstance(node, list):
        for item in node:
            _check_schema(item, depth + 1)
        return
    if not isinstance(node, dict):
        return
    for low_key, high_key in _BOUNDS:
        low, high = node.get(low_key), node.get(high_key)
        for key, value in ((low_key, low), (high_key, high)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPETITION:
                raise InvalidRequest(
                    f"JSON schema '{key}' must be an integer from 0 to {MAX_REPETITION}", param=PARAM
                )
        if isinstance(low, int) and isinstance(high, int) and low > high:
            raise InvalidRequest(
                f"JSON schema '{low_key}' ({low}) is larger than '{high_key}' ({high}): nothing matches",
                param=PARAM,
            )
    if node.get("enum") == []:
        raise InvalidRequest("JSON schema 'enum' is empty: nothing matches", param=PARAM)
    for value in node.values():
        if isinstance(value, dict | list):
            _check_schema(value, depth + 1)


@lru_cache(maxsize=256)
def grammar_text(kind: int, schema: str) -> str:
    """GBNF for a response format; raises InvalidRequest for a schema that cannot be expressed."""
    if kind == worker_pb2.ResponseFormat.KIND_JSON_OBJECT:
        return JSON_GBNF
    try:
        parsed = json.loads(schema)
    except (ValueError, RecursionError) as err:
        raise InvalidRequest(f"the JSON schema is not valid JSON: {err}", param=PARAM) from err
    if not isinstance(parsed, dict):
        raise InvalidRequest("the JSON schema must be a JSON object", param=PARAM)
    _check_schema(parsed)
    try:
        text = json_schema_to_gbnf(schema)
    except Exception as err:  # the converter raises assorted errors for schemas it cannot express
        raise InvalidRequest(f"unsupported JSON schema: {err!r}", param=PARAM) from err
    if len(text) > MAX_GRAMMAR_CHARS:
        raise InvalidRequest(
            f"the JSON schema converts to a grammar of {len(text)} characters; at most "
            f"{MAX_GRAMMAR_CHARS} are allowed (lower its repetition bounds)",
            param=PARAM,
        )
    return text


class GrammarChecker:
    """Whether llama.cpp compiles a grammar for one vocabulary, remembered per grammar text so a
    schema sent again (valid or not) costs a dictionary look-up."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p):
        self._vocab = vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.problem = lru_cache(maxsize=256)(self._problem)

    def check(self, grammar: str) -> None:
        """Raise InvalidRequest unless llama.cpp can sample with ``grammar``."""
        problem = self.problem(grammar)
        if problem:
            raise InvalidRequest(problem, param=PARAM)

    def _problem(self, grammar: str) -> str:
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            return "the response format's grammar is rejected by llama.cpp (unsupported schema construct)"
        try:
            if not self._allows_a_first_token(sampler):
                return "the response format admits no output (no token can start it)"
        finally:
            llama_cpp.llama_sampler_free(sampler)
        return ""

    def _allows_a_first_token(self, sampler: llama_cpp.llama_sampler_p) -> bool:
        """A grammar that admits nothing leaves every candidate at -inf; sampling from that accepts a
        token the grammar rejects, which llama.cpp answers with an abort."""
        data = np.zeros(self._n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        data["id"] = np.arange(self._n_vocab, dtype=np.int32)
        candidates = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(sampler, llama_cpp.ctypes.byref(candidates))
        return bool(np.isfinite(data["logit"][: candidates.size]).any())

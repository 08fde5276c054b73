"""The llama.cpp engine behind the Worker API: prompt building, sampling, streaming, embeddings.

Generation runs in a thread (llama.cpp releases the GIL while it decodes) and yields GenerateChunk
messages; the caller sets ``cancel`` to stop it before the next decode step.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from functools import lru_cache

import llama_cpp
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import ContextLengthExceeded, InvalidRequest
from hyperllama_common.textstream import StopStringFilter, Utf8Assembler
from llama_cpp import Llama, LlamaGrammar
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import JSON_GBNF

from hyperllama_worker_llamacpp.model_info import describe
from hyperllama_worker_llamacpp.registry import ModelSpec

log = logging.getLogger(__name__)

# Used when neither the request nor the model registry sets a value (llama.cpp's own defaults).
SAMPLING_DEFAULTS = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}
ROLES = {"system", "user", "assistant", "tool"}
# ChatML, for models whose GGUF carries no chat template.
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@lru_cache(maxsize=64)
def _grammar(kind: int, schema: str) -> LlamaGrammar:
    if kind == worker_pb2.ResponseFormat.KIND_JSON_OBJECT:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        json.loads(schema)
        return LlamaGrammar.from_json_schema(schema, verbose=False)
    except Exception as err:  # the converter raises assorted errors for schemas it cannot express
        raise InvalidRequest(f"unsupported JSON schema: {err}", param="response_format") from err


class LoadedModel:
    """One GGUF model: a generation context (one slot) and a lazily made embedding context."""

    def __init__(self, spec: ModelSpec, n_ctx: int, threads: int):
        self.spec = spec
        self._threads = threads
        started = time.perf_counter()
        self.llm = Llama(model_path=str(spec.path), n_ctx=n_ctx, n_threads=threads, verbose=False)
        self.n_ctx = self.llm.n_ctx()
        metadata = self.llm.metadata
        self.info = describe(
            spec.name, spec.path, metadata, llama_cpp.llama_model_n_params(self.llm.model), self.n_ctx
        )
        self.info.context_length = int(metadata.get(f"{self.info.family}.context_length", self.n_ctx))
        template = metadata.get("tokenizer.chat_template") or _FALLBACK_TEMPLATE
        vocab = self.llm._model
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=vocab.token_get_text(self.llm.token_eos()),
            bos_token=vocab.token_get_text(self.llm.token_bos()),
        )
        self._vocab = self.llm._model.vocab
        self._lock = threading.Lock()
        self._embedder: Llama | None = None
        self._embed_lock = threading.Lock()
        log.info("loaded %s from %s in %.2fs", spec.name, spec.path, time.perf_counter() - started)

    # ---- generation -------------------------------------------------------------------------

    def render_chat(self, messages: list[worker_pb2.ChatMessage]) -> str:
        for m in messages:
            if m.role not in ROLES:
                raise InvalidRequest(
                    f"unknown role '{m.role}'; expected one of {sorted(ROLES)}", param="messages"
                )
        return self._formatter(messages=[{"role": m.role, "content": m.content} for m in messages]).prompt

    def _option(self, sampling: worker_pb2.SamplingParams, name: str) -> float:
        if sampling.HasField(name):
            return getattr(sampling, name)
        return float(self.spec.options.get(name, SAMPLING_DEFAULTS[name]))  # type: ignore[arg-type]

    def generate(
        self, req: worker_pb2.GenerateRequest, cancel: threading.Event
    ) -> Iterator[worker_pb2.GenerateChunk]:
        arrived = time.perf_counter_ns()
        prompt = self.render_chat(list(req.chat.messages)) if req.HasField("chat") else req.prompt
        s = req.sampling
        grammar = None
        if req.response_format.kind in (
            worker_pb2.ResponseFormat.KIND_JSON_OBJECT,
            worker_pb2.ResponseFormat.KIND_JSON_SCHEMA,
        ):
            grammar = _grammar(req.response_format.kind, req.response_format.json_schema)
        stops = list(s.stop) or [str(x) for x in self.spec.options.get("stop", [])]  # type: ignore[attr-defined]

        with self._lock:
            tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            ctx = min(req.num_ctx, self.n_ctx) if req.num_ctx > 0 else self.n_ctx
            if len(tokens) >= ctx:
                raise ContextLengthExceeded(
                    f"the prompt is {len(tokens)} tokens but the context holds {ctx}; "
                    "shorten the prompt or raise num_ctx",
                    param="messages" if req.HasField("chat") else "prompt",
                )
            room = ctx - len(tokens)
            limit = min(s.max_tokens, room) if s.HasField("max_tokens") and s.max_tokens >= 0 else room
            self.llm.set_seed((s.seed if s.HasField("seed") else random.getrandbits(32)) % 2**32)
            yield from self._decode(req, tokens, limit, stops, grammar, cancel, arrived)

    def _decode(
        self,
        req: worker_pb2.GenerateRequest,
        tokens: list[int],
        limit: int,
        stops: list[str],
        grammar: LlamaGrammar | None,
        cancel: threading.Event,
        arrived: int,
    ) -> Iterator[worker_pb2.GenerateChunk]:
        s = req.sampling
        utf8 = Utf8Assembler()
        stop_filter = StopStringFilter(stops)
        produced = 0
        finish = worker_pb2.FINISH_REASON_LENGTH
        started = time.perf_counter_ns()
        first_token_at = started
        if limit > 0:
            for tok in self.llm.generate(
                tokens,
                temp=self._option(s, "temperature"),
                top_k=int(self._option(s, "top_k")),
                top_p=self._option(s, "top_p"),
                min_p=self._option(s, "min_p"),
                repeat_penalty=self._option(s, "repeat_penalty"),
                frequency_penalty=self._option(s, "frequency_penalty"),
                presence_penalty=self._option(s, "presence_penalty"),
                grammar=grammar,
            ):
                if produced == 0:
                    first_token_at = time.perf_counter_ns()
                if cancel.is_set():
                    return
                if llama_cpp.llama_vocab_is_eog(self._vocab, tok) and not s.ignore_eos:
                    finish = worker_pb2.FINISH_REASON_STOP
                    break
                produced += 1
                text, hit = stop_filter.feed(utf8.feed(self.llm.detokenize([tok])))
                if text:
                    yield worker_pb2.GenerateChunk(text=text, token_count=1)
                if hit:
                    finish = worker_pb2.FINISH_REASON_STOP
                    break
                if produced >= limit:
                    break
        tail, _ = stop_filter.feed(utf8.flush())
        tail += stop_filter.flush()
        done = time.perf_counter_ns()
        yield worker_pb2.GenerateChunk(
            text=tail,
            finish_reason=finish,
            usage=worker_pb2.Usage(prompt_tokens=len(tokens), completion_tokens=produced),
            timings=worker_pb2.Timings(
                load_duration_ns=started - arrived,
                prompt_eval_duration_ns=first_token_at - started,
                eval_duration_ns=done - first_token_at,
            ),
        )

    # ---- embeddings -------------------------------------------------------------------------

    def embed(self, inputs: list[str], truncate: bool) -> worker_pb2.EmbedResponse:
        started = time.perf_counter_ns()
        with self._embed_lock:
            if self._embedder is None:
                self._embedder = Llama(
                    model_path=str(self.spec.path),
                    n_ctx=self.n_ctx,
                    n_threads=self._threads,
                    embedding=True,
                    # Causal LMs carry no pooling type; mean pooling is what Ollama uses for them.
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    verbose=False,
                )
            loaded = time.perf_counter_ns()
            counts = [len(self._embedder.tokenize(t.encode("utf-8"), add_bos=True)) for t in inputs]
            too_long = [i for i, n in enumerate(counts) if n > self.n_ctx]
            if too_long and not truncate:
                raise ContextLengthExceeded(
                    f"input {too_long[0]} is {counts[too_long[0]]} tokens; the context holds {self.n_ctx}",
                    param="input",
                )
            vectors = self._embedder.embed(inputs, normalize=True, truncate=True)
        return worker_pb2.EmbedResponse(
            embeddings=[worker_pb2.Embedding(values=v) for v in vectors],  # type: ignore[arg-type]
            prompt_tokens=sum(min(n, self.n_ctx) for n in counts),
            load_duration_ns=loaded - started,
            total_duration_ns=time.perf_counter_ns() - started,
        )

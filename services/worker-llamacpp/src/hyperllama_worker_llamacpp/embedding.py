"""Embeddings: a pooled llama.cpp context per model, and the bounded queue in front of it.

Each input is decoded whole in one batch (n_batch = n_ubatch = the context), as llama.cpp needs for a
pooled embedding of a sequence; an input longer than the context is refused, or cut to it when the
caller allows (``truncate``) and then counted as cut. Calls run one at a time per model in a worker
thread, input by input, so a cancelled call stops between inputs; at most ``max_waiting`` calls wait
behind the running one, and past that the worker answers Overloaded ("busy, ask again elsewhere").
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import llama_cpp
import numpy as np
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import (
    BackendFailed,
    Cancelled,
    ContextLengthExceeded,
    InvalidRequest,
    Overloaded,
)

from hyperllama_worker_llamacpp.model import LoadedModel


class EmbeddingContext:
    """A llama.cpp context with mean pooling over the model's weights, made on first use."""

    def __init__(self, model: LoadedModel, n_ctx: int, threads: int):
        self.model = model
        self.n_ctx = n_ctx
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = self.n_ctx
        params.n_ubatch = self.n_ctx
        params.n_seq_max = 1
        params.n_threads = threads
        params.n_threads_batch = threads
        params.embeddings = True
        # Causal LMs carry no pooling type; mean pooling is what Ollama uses for them.
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        self.ctx = llama_cpp.llama_init_from_model(model.llm.model, params)
        if not self.ctx:
            raise BackendFailed(f"llama.cpp could not create an embedding context of {self.n_ctx} tokens")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        self.n_embd = int(llama_cpp.llama_model_n_embd(model.llm.model))

    def embed(self, tokens: list[int]) -> list[float]:
        """One input's normalized, mean-pooled embedding; ``tokens`` fits the context."""
        b = self.batch
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = True  # every token is an output in embedding mode
        b.n_tokens = len(tokens)
        llama_cpp.llama_memory_clear(self.mem, True)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise BackendFailed(f"llama_decode failed ({rc}) on a {len(tokens)}-token embedding input")
        ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, 0)
        if not ptr:
            raise BackendFailed("llama.cpp returned no pooled embedding")
        vector = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64)
        norm = float(np.linalg.norm(vector))
        return (vector / norm if norm > 0 else vector).tolist()

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


class Embedder:
    """One model's embedding calls: validated at once, queued (bounded), run one at a time."""

    def __init__(self, model: LoadedModel, n_ctx: int, threads: int, max_waiting: int):
        self.model = model
        self.n_ctx = n_ctx  # longest input, in tokens
        self.max_waiting = max_waiting
        self.waiting = 0
        self._threads = threads
        self._turn = asyncio.Lock()  # FIFO: whoever holds it owns the embedding context
        self._context: EmbeddingContext | None = None

    def tokenize(
        self, inputs: list[str], truncate: bool, token_inputs: list[list[int]] | None = None
    ) -> list[list[int]]:
        """Each input's tokens (token inputs as they are), cut to the context when ``truncate``;
        refuses what cannot be embedded."""
        if inputs and token_inputs:
            raise InvalidRequest("give inputs as text or as token ids, not both", param="input")
        if not inputs and not token_inputs:
            raise InvalidRequest("no input to embed", param="input")
        n_ctx = self.n_ctx
        out = []
        if token_inputs:
            given = [self.model.check_token_ids(ids, "input") for ids in token_inputs]
        else:
            given = [self.model.llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in inputs]
        for i, tokens in enumerate(given):
            if not tokens:
                raise InvalidRequest(f"input {i} is empty", param="input")
            if len(tokens) > n_ctx:
                if not truncate:
                    raise ContextLengthExceeded(
                        f"input {i} is {len(tokens)} tokens but the context holds {n_ctx}; "
                        "shorten it or allow truncation",
                        param="input",
                    )
                tokens = tokens[:n_ctx]
            out.append(tokens)
        return out

    async def embed(
        self, inputs: list[str], truncate: bool, token_inputs: list[list[int]] | None = None
    ) -> worker_pb2.EmbedResponse:
        started = time.perf_counter_ns()
        batches = await asyncio.to_thread(self.tokenize, inputs, truncate, token_inputs)
        if self._turn.locked() and self.waiting >= self.max_waiting:
            raise Overloaded(
                f"{self.waiting} embedding calls for {self.model.spec.name} are already waiting on this "
                "worker",
                retry_after=1,
            )
        self.waiting += 1
        try:
            await self._turn.acquire()  # a call cancelled here never runs
        finally:
            self.waiting -= 1
        try:
            stop = threading.Event()
            work = asyncio.ensure_future(asyncio.to_thread(self._run, batches, stop, started))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # The thread stops before its next input; the context is ours until it has.
                stop.set()
                with contextlib.suppress(BaseException):
                    await work
                raise
        finally:
            self._turn.release()

    def _run(self, batches: list[list[int]], stop: threading.Event, started: int) -> worker_pb2.EmbedResponse:
        if self._context is None:
            self._context = EmbeddingContext(self.model, self.n_ctx, self._threads)
        loaded = time.perf_counter_ns()
        vectors = []
        for tokens in batches:
            if stop.is_set():
                raise Cancelled("embedding cancelled")
            vectors.append(self._context.embed(tokens))
        return worker_pb2.EmbedResponse(
            embeddings=[worker_pb2.Embedding(values=v) for v in vectors],
            prompt_tokens=sum(len(t) for t in batches),  # what was embedded, after any cut
            load_duration_ns=loaded - started,
            total_duration_ns=time.perf_counter_ns() - started,
        )

    def close(self) -> None:
        # A call still running past the grace period keeps its context: the process is exiting anyway.
        if self._context is not None and not self._turn.locked():
            self._context.close()
            self._context = None

"""The decode loop: one llama.cpp context per model with N sequence slots, every step one llama_decode.

The loop runs in its own thread (llama.cpp releases the GIL while decoding). Requests are prepared
(tokenized, validated) in the caller's thread and join between steps. Their output (text chunks, then
one final chunk, or an exception) goes to each request's ``emit`` callback on the event loop: what one
step produces for all sequences is handed over in a single call, so the event loop wakes once per step
rather than once per token, and does its sending while the next step decodes (see handoff.py).

If the loop itself fails, every sequence it holds or was about to seat gets BackendFailed, the engine
refuses new work with Unavailable, and ``failed`` is set so the worker can report itself not ready and
exit for its supervisor to restart it: a dead loop must never look like a worker with free slots.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import BackendFailed, Cancelled, InvalidRequest, Unavailable
from hyperllama_common.textstream import StopStringFilter, Utf8Assembler
from hyperllama_common.worker_metrics import ModelMetrics

from hyperllama_worker_llamacpp import kv_pages
from hyperllama_worker_llamacpp.batching import BatchPlanner, Feed, Seat, Sequence
from hyperllama_worker_llamacpp.cell_buffers import CellBuffers, Cells
from hyperllama_worker_llamacpp.grammar import GrammarChecker, grammar_text
from hyperllama_worker_llamacpp.handoff import Handoff
from hyperllama_worker_llamacpp.kv_pages import KvPages
from hyperllama_worker_llamacpp.logprobs import LogprobMeter, meter_for
from hyperllama_worker_llamacpp.model import LoadedModel
from hyperllama_worker_llamacpp.sampling import SamplerChain
from hyperllama_worker_llamacpp.threadpool import ThreadPool

log = logging.getLogger(__name__)

Emit = Callable[[object], None]


@dataclass
class Job:
    """What the engine keeps per sequence besides the planner's bookkeeping."""

    emit: Emit
    sampler: SamplerChain
    utf8: Utf8Assembler
    stops: StopStringFilter
    ignore_eos: bool
    arrived_ns: int
    logprobs: LogprobMeter | None = None  # only for requests that ask for them
    started_ns: int = 0
    first_token_ns: int = 0
    prompt_reported: bool = False
    # The tokens generated and the text sent, for a request that wants its exchange back as context
    # (Ollama's).
    generated: list[int] | None = None
    sent: list[str] = field(default_factory=list)


def _deliver(outbox: list[tuple[Emit, object]]) -> None:
    for emit, item in outbox:
        emit(item)


class BatchEngine:
    def __init__(
        self,
        model: LoadedModel,
        slots: int,
        n_batch: int,
        threads: int,
        metrics: ModelMetrics,
        loop: asyncio.AbstractEventLoop,
        prompt_cache_bytes: int = 0,
    ):
        self.model = model
        self._handoff = Handoff(loop)
        self._outbox: list[tuple[Emit, object]] = []
        self.slots = slots
        self.metrics = metrics
        metrics.slots_total.set(slots)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = slots * model.n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = slots
        params.n_threads = threads
        params.n_threads_batch = threads
        # One KV stream per slot, as llama-server does with -np: a sequence attends only to its own cells.
        params.kv_unified = False
        before = kv_pages.anonymous_ranges()
        self.ctx = llama_cpp.llama_init_from_model(model.llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {params.n_ctx} tokens")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self._threads = threads
        self._n_batch = n_batch
        self._pool: ThreadPool | None = None  # attached by the decode thread once checked
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        # The decode thread checks the thread pool (threadpool.py) and finds the KV cache's pages
        # (kv_pages.py) before anything is served: every computation of this context runs there.
        self._kv_before = before
        self.kv_pages: KvPages | None = None
        self._located = threading.Event()
        self.planner = BatchPlanner(slots, n_batch, prompt_cache_bytes // model.kv_bytes_per_token)
        self._parked: dict[int, Cells] = {}  # the prompt cache's KV cells
        self._buffers = CellBuffers()
        self._last_freed: int | None = None  # the slot whose sequence ended last
        self._prompt_cache_bytes = prompt_cache_bytes
        metrics.slots_in_use.set_function(lambda: self.planner.in_use)
        self.grammars = GrammarChecker(model.vocab)
        self._wake = threading.Condition()
        self._stopping = False
        # Why the decode loop stopped, once it has; set under _wake together with emptying the planner.
        self.failure: str | None = None
        self.failed = asyncio.Event()  # set on the event loop when the decode loop has died
        self._failure_listeners: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name=f"decode-{model.spec.name}", daemon=True)
        self._thread.start()
        self._located.wait()

    @property
    def in_use(self) -> int:
        return self.planner.in_use

    @property
    def alive(self) -> bool:
        return self.failure is None

    def add_failure_listener(self, listener: Callable[[], None]) -> None:
        """``listener`` runs on the event loop when the decode loop dies, before any request hears
        of it: whoever then asks the worker whether it is ready already gets "no"."""
        self._failure_listeners.append(listener)

    # ---- called from other threads ----------------------------------------------------------

    def prepare(self, req: worker_pb2.GenerateRequest, emit: Emit) -> Sequence:
        """Tokenize and validate a request; raises InvalidRequest before anything is queued."""
        arrived = time.perf_counter_ns()
        tokens = self.model.prompt_tokens(req)
        if not tokens:  # nothing to decode means no logits to sample from: it could never start
            raise InvalidRequest(
                "the prompt is empty", param="messages" if req.HasField("chat") else "prompt"
            )
        room = self.model.context_for(req) - len(tokens)
        s = req.sampling
        limit = room
        if s.HasField("max_tokens") and s.max_tokens >= 0:
            limit = min(s.max_tokens, room)
        elif isinstance(default := self.model.spec.options.get("num_predict"), int) and default >= 0:  # type: ignore[attr-defined]
            limit = min(default, room)  # the model's PARAMETER num_predict, under the request's own
        grammar = None
        if req.response_format.kind in (
            worker_pb2.ResponseFormat.KIND_JSON_OBJECT,
            worker_pb2.ResponseFormat.KIND_JSON_SCHEMA,
        ):
            grammar = grammar_text(req.response_format.kind, req.response_format.json_schema)
            self.grammars.check(grammar)
        stops = list(s.stop) or [str(x) for x in self.model.spec.options.get("stop", [])]  # type: ignore[attr-defined]
        stop_filter = StopStringFilter(stops)
        meter = meter_for(self.model, s)
        job = Job(
            emit=emit,
            sampler=SamplerChain(self.model.vocab, s, self.model.spec.options, grammar, req.defaults),
            utf8=Utf8Assembler(),
            stops=stop_filter,
            ignore_eos=s.ignore_eos,
            arrived_ns=arrived,
            logprobs=meter,
            generated=[] if req.return_context else None,
        )
        return Sequence(prompt=tokens, limit=limit, state=job)

    def submit(self, seq: Sequence) -> None:
        if seq.limit <= 0:  # nothing to generate (max_tokens 0): answer without taking a slot
            seq.state.started_ns = seq.state.first_token_ns = time.perf_counter_ns()
            seq.state.emit(self._final_chunk(seq, worker_pb2.FINISH_REASON_LENGTH))  # on the event loop
            return
        with self._wake:
            if self.failure is not None:
                seq.state.sampler.close()
                raise Unavailable(f"the {self.model.spec.name} engine has stopped: {self.failure}")
            self.planner.submit(seq)
            self._wake.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop the sequence before its next decode step; its slot is freed by the loop."""
        seq.cancelled = True
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        self._handoff.close()
        llama_cpp.llama_batch_free(self.batch)
        if self._pool is not None:
            self._pool.close()
        llama_cpp.llama_free(self.ctx)

    # ---- the decode thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            try:
                self._prepare_context()
            finally:
                self._located.set()
            self._decode_loop()
        except BaseException as err:
            log.exception("the decode loop of %s stopped", self.model.spec.name)
            self._fail_everything(f"{type(err).__name__}: {err}")

    def _prepare_context(self) -> None:
        self._pool = ThreadPool.checked(
            self.ctx, self.batch, self._n_batch, self._threads, self.model.n_vocab
        )
        kv_bytes = self.model.kv_bytes_per_token * llama_cpp.llama_n_ctx(self.ctx)
        layers = llama_cpp.llama_model_n_layer(self.model.llm.model)
        self.kv_pages = KvPages.locate(self.ctx, self.batch, self._kv_before, layers, kv_bytes, self.slots)
        if self.kv_pages is None:
            log.info("%s: the KV cache's layout is not the expected one; all of it stays resident",
                     self.model.spec.name)  # fmt: skip

    def _decode_loop(self) -> None:
        while True:
            if self._last_freed is not None and not self.planner.running and not self.planner.waiting:
                self._prepare_spare(self._last_freed)
                self._last_freed = None
            with self._wake:
                while not self._stopping and not self.planner.waiting and not self.planner.running:
                    self._wake.wait()
                if self._stopping:
                    break
                seated = self.planner.admit()
            now = time.perf_counter_ns()
            for seat in seated:
                self._reuse_prefix(seat)
                seat.seq.state.started_ns = now
            for seq in self.planner.running:
                if seq.cancelled:
                    self._release(seq)
                    self._post(seq, Cancelled("request cancelled"))
            feeds = self.planner.plan()
            if feeds:
                self._step(feeds)
            else:
                # A seated sequence with nothing to feed would never finish, and the loop would spin
                # on it: fail it instead, so every pass either decodes or frees a slot.
                for seq in self.planner.running:
                    log.error("sequence in slot %d has nothing to decode", seq.slot)
                    self._release(seq)
                    self._post(seq, BackendFailed("the request had nothing to decode"))
            self._flush()

    def _reuse_prefix(self, seat: Seat) -> None:
        """Carry out a seat's cache moves (see Seat). Cells are copied as llama.cpp's per-sequence
        state (only the cells a sequence holds, at once): seq_cp between slots would copy a slot's
        whole KV stream, its full context, and only at the next decode."""
        slot = seat.seq.slot
        for key in seat.drop:  # first, so the parking below can reuse their memory
            self._buffers.give(self._parked.pop(key).buffer)
        if seat.park is not None:
            self._parked[seat.park] = self._save(slot)
        copied: Cells | None = None
        try:
            cells = None
            if seat.copy_from is not None:
                cells = copied = self._save(seat.copy_from)
            elif seat.restore is not None:
                cells = self._parked[seat.restore]
            if cells is not None or seat.kept == 0:
                self._empty(slot)  # none of its own cells are kept: their pages go back
            if cells is not None:
                if llama_cpp.llama_state_seq_set_data(self.ctx, cells.buffer, cells.size, slot) != cells.size:
                    log.warning("could not copy a cached prefix into slot %d; prefilling it", slot)
                    self.planner.forget_prefix(seat.seq)
                    llama_cpp.llama_memory_seq_rm(self.mem, slot, -1, -1)
                    return
                self.metrics.prefix_copies.inc()
            llama_cpp.llama_memory_seq_rm(self.mem, slot, seat.kept, -1)
        finally:
            if copied is not None:
                self._buffers.give(copied.buffer)
            # Parked prompts and spare buffers together stay within the prompt cache's budget.
            self._buffers.trim(self._prompt_cache_bytes - self._parked_bytes)
            self.metrics.prompt_cache_bytes.set(sum(c.size for c in self._parked.values()))

    def _empty(self, slot: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.mem, slot, -1, -1)
        if self.kv_pages is not None:
            self.kv_pages.release_slot(slot)

    @property
    def _parked_bytes(self) -> int:
        """Host memory the parked prompts hold (whole buffers, not only their cells)."""
        return sum(len(c.buffer) for c in self._parked.values())

    def _prepare_spare(self, slot: int) -> None:
        """While idle: have memory ready for parking the cells ``slot`` holds, the likeliest to be
        parked next (the next request of a conversation, or of the same prompt, takes its slot), so
        that request does not wait for fresh memory on its way to its first token."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx, slot)
        if self._buffers.has(size) or (
            self._parked_bytes + self._buffers.spare_bytes + size > self._prompt_cache_bytes
        ):
            return
        self._buffers.give(self._buffers.take(size))

    def _save(self, slot: int) -> Cells:
        size = llama_cpp.llama_state_seq_get_size(self.ctx, slot)
        buffer = self._buffers.take(size)
        if llama_cpp.llama_state_seq_get_data(self.ctx, buffer, size, slot) != size:
            self._buffers.give(buffer)
            raise RuntimeError(f"llama.cpp could not read the KV cells of slot {slot}")
        return Cells(buffer, size)

    def _fail_everything(self, reason: str) -> None:
        """The loop is dead: every sequence it held or would have seated gets an error now."""
        with self._wake:
            self.failure = reason
            doomed = [*self.planner.running, *self.planner.waiting]
            self.planner.waiting.clear()
        for seq in doomed:
            try:
                self._release(seq)
            except Exception:
                log.exception("could not free a failed sequence's sampler")
            self._post(seq, BackendFailed(f"the {self.model.spec.name} engine failed: {reason}"))
        self._handoff.post(self._announce_failure)  # before the requests' errors, posted next
        self._flush()

    def _announce_failure(self) -> None:
        self.failed.set()
        for listener in self._failure_listeners:
            listener()

    def _post(self, seq: Sequence, item: object) -> None:
        self._outbox.append((seq.state.emit, item))

    def _flush(self) -> None:
        """Hand this step's output to the event loop in one call."""
        if self._outbox:
            outbox, self._outbox = self._outbox, []
            self._handoff.post(functools.partial(_deliver, outbox))

    def _step(self, feeds: list[Feed]) -> None:
        b = self.batch
        for i, f in enumerate(feeds):
            b.token[i] = f.token
            b.pos[i] = f.pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = f.seq.slot
            b.logits[i] = f.logits
        b.n_tokens = len(feeds)
        started = time.perf_counter()
        rc = llama_cpp.llama_decode(self.ctx, b)
        self.metrics.decode_step.observe(time.perf_counter() - started)
        self.metrics.batch_tokens.observe(len(feeds))
        if rc != 0:
            log.error("llama_decode failed with %d for %d tokens", rc, len(feeds))
            for seq in {id(f.seq): f.seq for f in feeds}.values():
                self.planner.forget_cache(seq.slot)
                llama_cpp.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
                self._release(seq)
                self._post(seq, BackendFailed(f"llama_decode failed ({rc})"))
            return
        self.planner.fed(feeds)
        for i, f in enumerate(feeds):
            if f.logits:
                token = f.seq.state.sampler.sample(self.ctx, i)
                if token is None:
                    self._release(f.seq)
                    self._post(
                        f.seq,
                        InvalidRequest(
                            "the response format admits no continuation of the output so far "
                            "(the schema matches nothing from here)",
                            param="response_format",
                        ),
                    )
                else:
                    self._on_token(f.seq, token, i)

    def _on_token(self, seq: Sequence, token: int, index: int) -> None:
        job: Job = seq.state
        if seq.produced == 0:
            job.first_token_ns = time.perf_counter_ns()
            self.metrics.ttft.observe((job.first_token_ns - job.arrived_ns) / 1e9)
        if self.model.is_end_of_generation(token) and not job.ignore_eos:
            self._finish(seq, worker_pb2.FINISH_REASON_STOP)
            return
        self.planner.sampled(seq, token)
        if job.generated is not None:
            job.generated.append(token)
        piece = self.model.piece(token)
        decoded = job.utf8.feed(piece)
        text, hit = job.stops.feed(decoded)
        chunk = worker_pb2.GenerateChunk(text=text, token_count=1) if text else None
        if job.generated is not None and text:
            job.sent.append(text)
        if job.logprobs is not None:
            # An entry goes out with the end of its token's text: held back while that text is, never
            # sent if a stop string withholds it for good.
            job.logprobs.hold(self.ctx, index, token, piece, decoded)
            entries = job.logprobs.held.release(len(text))
            if entries:
                chunk = chunk or worker_pb2.GenerateChunk(token_count=1)
                chunk.logprobs.extend(entries)
        if chunk is not None:
            if not job.prompt_reported:
                # So a stream cut before its end is still charged its prompt (the gateway's usage).
                chunk.usage.prompt_tokens = len(seq.prompt)
                job.prompt_reported = True
            self._post(seq, chunk)
        if hit:
            self._finish(seq, worker_pb2.FINISH_REASON_STOP)
        elif seq.produced >= seq.limit:
            self._finish(seq, worker_pb2.FINISH_REASON_LENGTH)

    def _finish(self, seq: Sequence, reason: int) -> None:
        self._release(seq)
        self._send_final(seq, reason)

    def _send_final(self, seq: Sequence, reason: int) -> None:
        self._post(seq, self._final_chunk(seq, reason))

    def _final_chunk(self, seq: Sequence, reason: int) -> worker_pb2.GenerateChunk:
        job: Job = seq.state
        tail, _ = job.stops.feed(job.utf8.flush())
        tail += job.stops.flush()
        entries: list[worker_pb2.TokenLogprob] = []
        if job.logprobs is not None:
            entries = job.logprobs.held.release(len(tail))
            if not job.stops.stopped:
                entries += job.logprobs.held.flush()
        done = time.perf_counter_ns()
        chunk = worker_pb2.GenerateChunk(
            text=tail,
            finish_reason=reason,  # type: ignore[arg-type]
            usage=worker_pb2.Usage(
                prompt_tokens=len(seq.prompt),
                completion_tokens=seq.produced,
                cached_prompt_tokens=seq.reused,
            ),
            timings=worker_pb2.Timings(
                load_duration_ns=job.started_ns - job.arrived_ns,
                prompt_eval_duration_ns=job.first_token_ns - job.started_ns,
                eval_duration_ns=done - job.first_token_ns,
            ),
            logprobs=entries,
        )
        if job.generated is not None:
            chunk.context.extend(seq.prompt)
            if job.stops.stopped:
                # A stop string cut the text: the exchange is what was sent, not the stop string.
                chunk.context.extend(self.model.text_tokens("".join(job.sent) + tail))
            else:
                chunk.context.extend(job.generated)
        job.sampler.close()
        self.metrics.prompt_tokens.inc(len(seq.prompt))
        self.metrics.cached_prompt_tokens.inc(seq.reused)
        self.metrics.output_tokens.inc(seq.produced)
        return chunk

    def _release(self, seq: Sequence) -> None:
        self.planner.finish(seq)
        seq.state.sampler.close()
        self._last_freed = seq.slot

"""The llama.cpp worker under bad input and faults, with the real model: grammars llama.cpp cannot use,
empty prompts, a decode loop that dies, embeddings past the batch and the context, the embedding queue's
bound and cancellation, and slots counted per model."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_cli.cluster import LocalCluster, free_port, wait_for
from hyperllama_common.errors import BackendFailed, Unavailable
from hyperllama_common.healthcheck import serving
from hyperllama_common.worker_metrics import WorkerMetrics
from hyperllama_worker_llamacpp.batch_engine import BatchEngine
from hyperllama_worker_llamacpp.model import LoadedModel
from hyperllama_worker_llamacpp.registry import DEFAULT_MODEL, load_registry, select

MODEL = DEFAULT_MODEL
COPY = "smollm2-copy:latest"  # the same weights under a second name: a two-model worker
SLOTS = 2
NUM_CTX = 1024
EMBED_QUEUE = 1

pytestmark = pytest.mark.asyncio(loop_scope="module")


def gguf() -> Path:
    return select(load_registry(""), MODEL)[0].path


async def wait_serving(address: str, proc, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(wait_for, lambda: serving(address, 2), "the worker", proc, timeout)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    tmp = Path(tmp_path_factory.mktemp("hardening"))
    models = tmp / "models.toml"
    models.write_text(f'[models."smollm2-copy"]\npath = "{gguf()}"\n')
    cluster = LocalCluster(log_dir=tmp)
    port = free_port()
    proc = cluster.start_worker(
        "hardening-worker",
        port=str(port),
        slots=str(SLOTS),
        num_ctx=str(NUM_CTX),
        embed_queue_max=str(EMBED_QUEUE),
        models=f"{MODEL},{COPY}",
        models_file=str(models),
        scheduler_address=f"127.0.0.1:{free_port()}",  # none: heartbeats just fail
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    await wait_serving(f"127.0.0.1:{port}", proc)
    yield worker_pb2_grpc.WorkerServiceStub(channel)
    await channel.close()
    cluster.stop()


def chat(text: str, max_tokens: int = 16, model: str = MODEL, **sampling) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=f"r-{time.monotonic_ns()}",
        model=model,
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="user", content=text)]),
        sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, **sampling),
    )


def with_schema(schema: object, **sampling) -> worker_pb2.GenerateRequest:
    req = chat("Describe a person as JSON.", 48, **sampling)
    req.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
    req.response_format.json_schema = schema if isinstance(schema, str) else json.dumps(schema)
    return req


async def generate(stub, req, timeout: float = 60) -> tuple[str, worker_pb2.GenerateChunk]:
    chunks = [c async for c in stub.Generate(req, timeout=timeout)]
    return "".join(c.text for c in chunks), chunks[-1]


def metadata(err: grpc.aio.AioRpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ()) if isinstance(v, str)}


# ---- slots per model ------------------------------------------------------------------------


async def test_slots_are_reported_per_model(worker):
    info = await worker.Info(worker_pb2.InfoRequest(), timeout=5)
    per_model = {m.name: (m.slots_total, m.slots_in_use) for m in info.models}
    assert per_model == {MODEL: (SLOTS, 0), COPY: (SLOTS, 0)}
    assert info.slots_total == 2 * SLOTS and info.ready

    call = worker.Generate(chat("Count to a thousand.", 2000, ignore_eos=True), timeout=60)
    assert (await call.read()).text
    info = await worker.Info(worker_pb2.InfoRequest(), timeout=5)
    assert {m.name: m.slots_in_use for m in info.models} == {MODEL: 1, COPY: 0}
    assert info.slots_in_use == 1
    call.cancel()
    deadline = time.monotonic() + 10
    while (await worker.Info(worker_pb2.InfoRequest(), timeout=5)).slots_in_use:
        assert time.monotonic() < deadline, "the cancelled request kept its slot"
        await asyncio.sleep(0.05)


# ---- grammars -------------------------------------------------------------------------------

# Schemas the converter or llama.cpp's grammar parser cannot take, or that match nothing. Each one
# used to crash the worker (a NULL sampler in the chain, or an abort when the grammar rejected the
# sampled token) or eat its memory (repetitions written out in full).
BAD_SCHEMAS = {
    "empty enum": {"enum": []},
    "empty anyOf": {"anyOf": []},
    "empty oneOf": {"oneOf": []},
    "minItems above maxItems": {"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 2},
    "huge minItems": {"type": "array", "items": {"type": "string"}, "minItems": 100_000_000},
    "huge maxLength": {"type": "string", "maxLength": 10**9},
    "negative minLength": {"type": "string", "minLength": -1},
    "ref to nowhere": {"$ref": "#/definitions/nowhere"},
    "recursive ref": {"type": "object", "properties": {"a": {"$ref": "#"}}},
    "lookahead pattern": {"type": "string", "pattern": "^(?=a)b$"},
    "regex class escapes": {"type": "string", "pattern": "^[^\\s\\S]$"},
    "class matching nothing": {"type": "string", "pattern": "^a[^\\x00-\\U0010FFFF]$"},
    "unknown type": {"type": "strin"},
    "not": {"not": {}},
    "a list": [],
    "a number": 5,
    "not JSON": "{",
    "deep nesting": json.loads('{"type": "array", "items": ' * 40 + '{"type": "string"}' + "}" * 40),
}


@pytest.mark.parametrize("schema", BAD_SCHEMAS.values(), ids=BAD_SCHEMAS.keys())
@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_a_schema_llama_cpp_cannot_use_is_a_client_error(worker, schema, temperature):
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(worker, with_schema(schema, temperature=temperature, seed=1), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert metadata(caught.value)["hl-error-param"] == "response_format"
    assert time.perf_counter() - started < 5


async def test_the_worker_still_serves_after_bad_schemas_and_good_ones_still_work(worker):
    text, last = await generate(worker, with_schema({"enum": ["yes", "no"]}, temperature=0))
    assert json.loads(text) in ("yes", "no") and last.finish_reason == worker_pb2.FINISH_REASON_STOP
    person = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    text, _ = await generate(worker, with_schema(person, temperature=0))
    assert set(json.loads(text)) == {"name", "age"}
    text, last = await generate(worker, chat("Say hello.", 8))
    assert text and last.usage.completion_tokens > 0


async def test_a_bad_schema_is_refused_fast_and_refused_again_from_the_cache(worker):
    schema = {"type": "string", "pattern": "^[^\\s\\S]x$"}  # reaches llama.cpp's parser, which rejects it
    times = []
    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(worker, with_schema(schema), timeout=10)
        times.append(time.perf_counter() - started)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    print(f"bad schema refused in {[round(t * 1000, 1) for t in times]} ms")
    assert max(times) < 1.0


# ---- empty prompts --------------------------------------------------------------------------


async def test_an_empty_prompt_is_refused_at_once(worker):
    req = worker_pb2.GenerateRequest(request_id="empty", model=MODEL, prompt="")
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(worker, req, timeout=10)  # it used to wait for its deadline
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert metadata(caught.value)["hl-error-param"] == "prompt"
    assert time.perf_counter() - started < 2
    info = await worker.Info(worker_pb2.InfoRequest(), timeout=5)
    assert info.slots_in_use == 0
    text, _ = await generate(worker, chat("Say hello.", 4))
    assert text


# ---- embeddings -----------------------------------------------------------------------------


def embed(inputs: list[str], truncate: bool, model: str = MODEL) -> worker_pb2.EmbedRequest:
    return worker_pb2.EmbedRequest(
        request_id=f"e-{time.monotonic_ns()}", model=model, inputs=inputs, truncate=truncate
    )


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_an_embedding_input_past_512_tokens_is_embedded_whole(worker):
    """Two inputs that differ only after their 520th token: cut at 512 they would be the same."""
    shared = "hello " * 520
    inputs = [shared + "the cat sat on the mat " * 30, shared + "quantum chromodynamics on a lattice " * 30]
    reply = await worker.Embed(embed(inputs, truncate=False), timeout=120)
    assert len(reply.embeddings) == 2
    counts = [(await worker.Embed(embed([t], truncate=False), timeout=120)).prompt_tokens for t in inputs]
    assert all(512 < n < NUM_CTX for n in counts)
    assert reply.prompt_tokens == sum(counts)
    a, b = (list(e.values) for e in reply.embeddings)
    print(f"inputs of {counts} tokens; cosine of the two vectors {cosine(a, b):.6f}")
    assert cosine(a, b) < 0.999


async def test_an_embedding_input_past_the_context_is_refused_or_cut_and_counted(worker):
    long = "hello " * 1500
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await worker.Embed(embed([long], truncate=False), timeout=120)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    md = metadata(caught.value)
    assert md["hl-error-kind"] == "ContextLengthExceeded" and md["hl-error-param"] == "input"

    cut = await worker.Embed(embed([long, "hello"], truncate=True), timeout=120)
    short = await worker.Embed(embed(["hello"], truncate=True), timeout=120)
    assert len(cut.embeddings) == 2
    assert cut.prompt_tokens == NUM_CTX + short.prompt_tokens  # exactly what was embedded
    whole = await worker.Embed(embed(["hello " * 1100], truncate=True), timeout=120)
    assert whole.prompt_tokens == NUM_CTX
    # Both were cut to the same first NUM_CTX tokens.
    assert cosine(cut.embeddings[0].values, whole.embeddings[0].values) > 0.99999


def many_inputs(n: int) -> list[str]:
    return [f"{i} " + "lorem ipsum dolor sit amet " * 20 for i in range(n)]  # ~130 tokens each


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seconds_per_input(worker) -> float:
    """What one input costs on this machine now (the cores are shared): the yardstick for waits."""
    started = time.perf_counter()
    await worker.Embed(embed(many_inputs(3), truncate=True), timeout=120)
    return (time.perf_counter() - started) / 3


async def test_the_embedding_queue_is_bounded(worker, seconds_per_input):
    """One call runs, EMBED_QUEUE wait, every other one is refused at once as Overloaded."""
    calls = [asyncio.ensure_future(worker.Embed(embed(many_inputs(50), truncate=True), timeout=300))
             for _ in range(6)]  # fmt: skip
    refused = 6 - 1 - EMBED_QUEUE
    pending = set(calls)
    deadline = time.monotonic() + 10
    while len(pending) > 6 - refused:  # the refusals come back at once; the others take 50 inputs each
        done, pending = await asyncio.wait(pending, timeout=deadline - time.monotonic(),
                                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        assert done, "no refusal within 10 s"
    for call in calls:
        if call.done():
            err = call.exception()
            assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            md = metadata(err)
            assert md["hl-error-kind"] == "Overloaded" and int(md["hl-retry-after"]) >= 1
    assert sum(c.done() for c in calls) == refused
    for call in calls:
        call.cancel()
    # The cancelled calls leave the queue: a small one waits at most for the input in progress.
    started = time.perf_counter()
    reply = await worker.Embed(embed(["hello"], truncate=False), timeout=300)
    assert len(reply.embeddings) == 1
    assert time.perf_counter() - started < 3 * seconds_per_input + 2


async def test_a_cancelled_embedding_stops_between_inputs(worker, seconds_per_input):
    # A runs (50 inputs), W waits behind it; both are cancelled; the small call behind them must not
    # wait for A's remaining inputs, nor for W at all.
    a = worker.Embed(embed(many_inputs(50), truncate=True), timeout=300)
    w = worker.Embed(embed(many_inputs(50), truncate=True), timeout=300)
    small = asyncio.ensure_future(worker.Embed(embed(["hello"], truncate=False), timeout=300))
    await asyncio.sleep(0)  # lets the three calls go out, in this order
    a.cancel()
    w.cancel()
    started = time.perf_counter()
    reply = await small
    waited = time.perf_counter() - started
    print(f"one input takes {seconds_per_input:.2f}s; after cancelling, the next call waited "
          f"{waited:.2f}s (A's 50 inputs would take ~{50 * seconds_per_input:.0f}s)")  # fmt: skip
    assert len(reply.embeddings) == 1
    assert waited < 3 * seconds_per_input + 2


# ---- a decode loop that dies ----------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model() -> LoadedModel:
    return await asyncio.to_thread(LoadedModel, select(load_registry(""), MODEL)[0], 256, 1)


def sink() -> tuple[asyncio.Queue, callable]:
    queue: asyncio.Queue = asyncio.Queue()
    return queue, queue.put_nowait


async def next_error(queue: asyncio.Queue, timeout: float = 2.0) -> Exception:
    async def first() -> Exception:
        while True:
            item = await queue.get()
            if isinstance(item, Exception):
                return item

    return await asyncio.wait_for(first(), timeout)


async def test_a_dead_decode_loop_fails_every_request_and_refuses_new_ones(model):
    engine = BatchEngine(
        model, 1, 64, 1, WorkerMetrics("llamacpp", "test").for_model(MODEL), asyncio.get_running_loop()
    )
    try:
        running, emit_running = sink()
        waiting, emit_waiting = sink()
        req = chat("Count to a thousand.", 200, ignore_eos=True)
        engine.submit(engine.prepare(req, emit_running))
        await running.get()  # decoding
        engine.submit(engine.prepare(req, emit_waiting))  # one slot: this one waits

        def broken() -> list:
            raise RuntimeError("injected planner failure")

        engine.planner.plan = broken  # type: ignore[method-assign]
        assert isinstance(await next_error(running), BackendFailed)
        assert isinstance(await next_error(waiting), BackendFailed)
        await asyncio.wait_for(engine.failed.wait(), 30)  # a hang guard, not a timing
        assert not engine.alive and "injected planner failure" in (engine.failure or "")
        assert engine.in_use == 0
        with pytest.raises(Unavailable):
            engine.submit(engine.prepare(req, sink()[1]))
    finally:
        engine.close()


# The server stopped, or is stopping (a loaded machine may not answer a stopping server in time).
GONE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)


async def answer_or_gone(call):
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        assert err.code() in GONE, err
        return None


CRASHING_WORKER = '''
"""The real worker, with a planner that fails once a trigger file exists."""
import os

from hyperllama_worker_llamacpp import batching, main

_plan = batching.BatchPlanner.plan


def plan(self):
    if os.path.exists(os.environ["CRASH_TRIGGER"]):
        raise RuntimeError("injected planner failure")
    return _plan(self)


batching.BatchPlanner.plan = plan
main.main()
'''


async def test_a_worker_whose_decode_loop_dies_fails_its_streams_reports_not_ready_and_exits(tmp_path):
    (tmp_path / "crashing_worker.py").write_text(CRASHING_WORKER)
    trigger = tmp_path / "crash-now"
    cluster = LocalCluster(log_dir=tmp_path)
    port = free_port()
    proc = cluster.start_worker(
        "crashing-worker",
        module="crashing_worker",
        extra_env={"PYTHONPATH": str(tmp_path), "CRASH_TRIGGER": str(trigger)},
        port=str(port),
        slots="2",
        num_ctx="512",
        grace_seconds="2",
        scheduler_address=f"127.0.0.1:{free_port()}",
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await wait_serving(f"127.0.0.1:{port}", proc)
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        call = stub.Generate(chat("Count to a thousand.", 2000, ignore_eos=True), timeout=60)
        assert (await call.read()).text
        trigger.touch()
        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await call.read() is not grpc.aio.EOF:
                pass
        failed_after = time.perf_counter() - started
        # An explicit failure, long before the call's 60 s deadline (no timing is asserted: the cores
        # are shared with whatever else runs).
        assert metadata(caught.value).get("hl-error-kind") == "BackendFailed", caught.value.details()
        # Not ready from now on, or already gone (the server stops within its grace period), and
        # then it exits for its supervisor to restart it.
        health = await answer_or_gone(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        )
        assert health is None or health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        info = await answer_or_gone(stub.Info(worker_pb2.InfoRequest(), timeout=10))
        assert info is None or not info.ready
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await generate(stub, chat("Say hello.", 4), timeout=10)
        assert refused.value.code() in GONE
        code = await asyncio.to_thread(proc.popen.wait, 60)
        print(f"stream failed {failed_after * 1000:.0f} ms after the fault; worker exited with {code}")
        assert code == 1, proc.log_tail()
        assert "injected planner failure" in proc.log_tail(200)
    finally:
        await channel.close()
        cluster.stop()

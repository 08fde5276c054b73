"""The llama.cpp worker process with the real model: continuous batching over its gRPC API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_cli.cluster import LocalCluster, free_port, wait_for
from hyperllama_common.healthcheck import serving
from prometheus_client.parser import text_string_to_metric_families

MODEL = "smollm2:135m"
SLOTS = 8


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[worker_pb2_grpc.WorkerServiceStub, str]]:
    """The worker's stub and its metrics URL."""
    cluster = LocalCluster(log_dir=Path(tmp_path_factory.mktemp("worker")))
    port = free_port()
    # No scheduler is needed to talk to a worker directly; its heartbeats just fail.
    proc = cluster.start_worker("batch-worker", port=str(port), slots=str(SLOTS),
                                scheduler_address=f"127.0.0.1:{free_port()}")  # fmt: skip
    await asyncio.to_thread(wait_for, lambda: serving(f"127.0.0.1:{port}", 2), "the worker", proc, 120)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield worker_pb2_grpc.WorkerServiceStub(channel), cluster.metrics_urls["batch-worker"]
    await channel.close()
    cluster.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(worker_process) -> worker_pb2_grpc.WorkerServiceStub:
    return worker_process[0]


def prefix_copies(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=5).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "hyperllama_worker_prefix_copies_total"
    )


def chat(rid: str, text: str, max_tokens: int, **sampling) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=rid,
        model=MODEL,
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="user", content=text)]),
        sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, **sampling),
    )


async def generate(stub, req) -> tuple[str, worker_pb2.GenerateChunk]:
    chunks = [c async for c in stub.Generate(req, timeout=120)]
    return "".join(c.text for c in chunks), chunks[-1]


GREEDY = "What is the capital of France? Answer in one sentence."

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_reports_its_slots(worker):
    info = await worker.Info(worker_pb2.InfoRequest(), timeout=5)
    assert info.slots_total == SLOTS and info.slots_in_use == 0
    assert info.engine == "llamacpp" and "embed" in info.capabilities
    assert info.models[0].name == MODEL and info.models[0].quantization_level == "Q4_1"


async def test_eight_streams_complete_and_greedy_output_is_the_same_alone_and_batched(worker):
    alone, last = await generate(worker, chat("alone", GREEDY, 32, temperature=0))
    assert "Paris" in alone and last.finish_reason == worker_pb2.FINISH_REASON_STOP

    requests = [chat("greedy", GREEDY, 32, temperature=0)] + [
        chat(f"story-{i}", f"Tell me story number {i}.", 48, temperature=0.8, seed=i, ignore_eos=True)
        for i in range(SLOTS - 1)
    ]
    results = await asyncio.gather(*(generate(worker, r) for r in requests))
    greedy_text, greedy_last = results[0]
    assert greedy_text == alone
    assert greedy_last.usage.completion_tokens == last.usage.completion_tokens
    for text, final in results[1:]:
        assert final.finish_reason == worker_pb2.FINISH_REASON_LENGTH
        assert final.usage.completion_tokens == 48
        assert final.usage.prompt_tokens > 10
        assert text
    info = await worker.Info(worker_pb2.InfoRequest(), timeout=5)
    assert info.slots_in_use == 0


async def test_same_seed_same_text_alone_and_batched(worker):
    req = chat("seeded", "Tell me a fun fact.", 24, temperature=1.0, seed=77)
    alone, _ = await generate(worker, req)
    noise = [chat(f"n{i}", "Write a poem.", 24, ignore_eos=True) for i in range(3)]
    results = await asyncio.gather(generate(worker, req), *(generate(worker, r) for r in noise))
    assert results[0][0] == alone


async def test_cancelled_stream_frees_its_slot(worker):
    call = worker.Generate(chat("long", "Count to a million.", 3000, ignore_eos=True), timeout=120)
    first = await call.read()
    assert first.text
    assert (await worker.Info(worker_pb2.InfoRequest(), timeout=5)).slots_in_use == 1
    call.cancel()
    deadline = time.monotonic() + 5
    while (await worker.Info(worker_pb2.InfoRequest(), timeout=5)).slots_in_use != 0:
        assert time.monotonic() < deadline, "the slot was not freed"
        await asyncio.sleep(0.02)


async def test_shared_prefix_gives_the_same_answer(worker):
    system = "You are a helpful assistant who answers in one short sentence. " * 5
    req = worker_pb2.GenerateRequest(
        request_id="p1",
        model=MODEL,
        chat=worker_pb2.ChatConversation(
            messages=[
                worker_pb2.ChatMessage(role="system", content=system),
                worker_pb2.ChatMessage(role="user", content="What is the capital of France?"),
            ]
        ),
        sampling=worker_pb2.SamplingParams(max_tokens=20, temperature=0),
    )
    first, f1 = await generate(worker, req)
    second, f2 = await generate(worker, req)  # served from the cached prefix
    assert first == second and f1.usage.prompt_tokens == f2.usage.prompt_tokens
    # The second request found the whole prompt but its last token in the slot's cache.
    assert f2.usage.cached_prompt_tokens == f2.usage.prompt_tokens - 1


async def test_a_prefix_comes_back_from_the_prompt_cache_and_from_a_busy_slot(worker_process):
    """A long system prompt that no slot holds any more is copied back from the prompt cache; while
    that request runs, a second one with the same system prompt copies it from the busy slot. Both
    answer exactly as a fresh prefill of the same prompt does."""
    worker, metrics_url = worker_process
    system = "You answer questions about the river, the mill and the bridge in one sentence. " * 12

    def ask(rid: str, question: str, max_tokens: int, **sampling) -> worker_pb2.GenerateRequest:
        return worker_pb2.GenerateRequest(
            request_id=rid,
            model=MODEL,
            chat=worker_pb2.ChatConversation(
                messages=[
                    worker_pb2.ChatMessage(role="system", content=system),
                    worker_pb2.ChatMessage(role="user", content=question),
                ]
            ),
            sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, **sampling),
        )

    fresh, fresh_last = await generate(worker, ask("fresh", "Where is the mill?", 16, temperature=0))
    assert fresh_last.usage.cached_prompt_tokens < 20  # prefilled: nothing held it before
    # Every slot takes another prompt: the system prompt survives only in the prompt cache.
    await asyncio.gather(*(generate(worker, chat(f"evict-{i}", f"Say {i}!", 2)) for i in range(SLOTS)))
    copies = await asyncio.to_thread(prefix_copies, metrics_url)

    again, again_last = await generate(worker, ask("again", "Where is the mill?", 16, temperature=0))
    assert again == fresh
    assert again_last.usage.cached_prompt_tokens > again_last.usage.prompt_tokens - 20
    assert await asyncio.to_thread(prefix_copies, metrics_url) == copies + 1

    long = worker.Generate(ask("busy", "Tell me about the river.", 400, ignore_eos=True), timeout=120)
    assert (await long.read()).text  # its slot holds the system prompt, and stays busy
    copied, copied_last = await generate(worker, ask("copied", "Where is the mill?", 16, temperature=0))
    long.cancel()
    assert copied == fresh
    assert copied_last.usage.prompt_tokens == fresh_last.usage.prompt_tokens
    assert copied_last.usage.cached_prompt_tokens > copied_last.usage.prompt_tokens - 20
    # "again"'s slot was free and held the prompt, so "busy" took it as it was; "copied" had to copy.
    assert await asyncio.to_thread(prefix_copies, metrics_url) == copies + 2

"""Clients that go away, and a queue that fills up."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest
import redis.asyncio as redis
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama_cli.cluster import LocalCluster
from hyperllama_scheduler import keys

from e2e.conftest import MODEL, QUEUE_MAX, SLOTS

# Long enough that a slot that is not freed stays busy for far longer than any wait below.
LONG = {"model": MODEL, "prompt": "Count:", "max_tokens": 4000, "ignore_eos": True, "stream": True}


async def until(check, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


@pytest.fixture
async def probes(cluster: LocalCluster):
    r = redis.Redis.from_url(cluster.redis_url.rsplit("/", 1)[0] + "/1")
    channel = grpc.aio.insecure_channel(cluster.scheduler_address)
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

    async def queued() -> int:
        return int(await r.zcard(keys.queue(MODEL)))

    async def slots_in_use() -> int:
        listed = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=2)
        return sum(w.slots_in_use for w in listed.workers)

    yield queued, slots_in_use
    await channel.close()
    await r.aclose()


async def open_stream(client: httpx.AsyncClient, path: str, body: dict) -> httpx.Response:
    request = client.build_request("POST", path, json=body)
    return await client.send(request, stream=True)


async def test_disconnect_mid_stream_frees_the_slot(base_url: str, probes):
    queued, slots_in_use = probes
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        response = await open_stream(client, "/v1/completions", LONG)
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        await until(lambda: _is(slots_in_use, 1))
        await response.aclose()
    await until(lambda: _is(slots_in_use, 0))
    # The next request is served at once; with the slot held it would wait behind 4000 tokens.
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        r = await client.post(
            "/api/generate",
            json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}},
        )
        assert r.status_code == 200 and r.json()["eval_count"] == 3


async def test_full_queue_refuses_and_waiting_clients_can_leave(base_url: str, probes):
    queued, slots_in_use = probes
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        running = [await open_stream(client, "/v1/completions", LONG) for _ in range(SLOTS)]
        assert [r.status_code for r in running] == [200] * SLOTS
        # A queued /v1 stream starts at once, with its place in the queue as an SSE comment.
        waiting = [await open_stream(client, "/v1/completions", LONG) for _ in range(QUEUE_MAX)]
        assert [r.status_code for r in waiting] == [200] * QUEUE_MAX
        await until(lambda: _is(queued, QUEUE_MAX))

        r = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status_code == 429
        assert r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "queue_full"
        r = await client.post(
            "/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status_code == 503
        assert r.headers["retry-after"] == "2"
        assert "full" in r.json()["error"]
        assert await queued() == QUEUE_MAX  # the bound held

        for r in waiting:  # queued clients disconnect: their requests leave the queue
            await r.aclose()
        await until(lambda: _is(queued, 0))
        for r in running:
            await r.aclose()
    await until(lambda: _is(slots_in_use, 0))


async def test_every_stream_ends_with_exactly_one_terminal_marker(base_url: str):
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "max_tokens": 8,
        }
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        assert events.count("data: [DONE]") == 1 and events[-1] == "data: [DONE]"
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": 8},
        }
        async with client.stream("POST", "/api/chat", json=body) as r:
            lines = [line async for line in r.aiter_lines() if line]
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert [('"done":true' in line) for line in lines].count(True) == 1 and '"done":true' in lines[-1]


async def _is(probe, n: int) -> bool:
    return await probe() == n


async def test_a_queued_stream_hears_its_place_and_clients_ignore_it(base_url: str, oai, probes):
    queued, slots_in_use = probes
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        running = [await open_stream(client, "/v1/completions", LONG) for _ in range(SLOTS)]
        await until(lambda: _is(slots_in_use, SLOTS))
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "max_tokens": 4,
        }
        waiting = await open_stream(client, "/v1/chat/completions", body)
        assert waiting.status_code == 200
        lines = waiting.aiter_lines()
        first = await anext(lines)
        assert first.startswith(": queued position=1"), first  # next in line

        # An unmodified OpenAI client queues behind it, and reads its stream as usual.
        def openai_stream() -> tuple[str, str | None]:
            stream = oai.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
            )
            text, finish = "", None
            for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
            return text, finish

        behind = asyncio.ensure_future(asyncio.to_thread(openai_stream))
        await until(lambda: _is(queued, 2))
        status = (await client.get("/api/queue")).json()
        (entry,) = [m for m in status["models"] if m["model"] == MODEL]
        assert entry["queued"] == 2 and entry["slots_in_use"] == SLOTS and entry["slots_total"] == SLOTS
        assert entry["oldest_wait_ms"] >= 0
        ps = (await client.get("/api/ps")).json()
        (loaded,) = [m for m in ps["models"] if m["name"] == MODEL]
        assert (loaded["queued"], loaded["slots_in_use"], loaded["slots_total"]) == (2, SLOTS, SLOTS)

        for r in running:
            await r.aclose()
        events = [line async for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        text, finish = await behind
        assert text and finish == "length"
    await until(lambda: _is(slots_in_use, 0))

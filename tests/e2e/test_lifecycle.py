"""Model lifecycle end to end, with the official ollama client: load on demand, keep_alive, unload,
eviction under a memory budget, a second copy under load, and delete unloading first.

Its own cluster: two llama.cpp workers that start empty (models load from the store on demand), with
no prompt cache so a model's footprint is small and predictable, and budgets that hold both test
models on one worker but not a third copy of anything large.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from hyperllama_cli.cluster import LocalCluster, free_port
from support.cluster_state import ps_raw, reported, wait_until
from support.models import gemma_gguf

MODEL = "smollm2:135m"
GEMMA = "gemma3-base:270m"
# Gemma 3's turn markers: the base model has no chat template, a TEMPLATE makes it chat.
GEMMA_TEMPLATE = "<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n"
SLOTS = 2
# smollm2 takes ~350 MiB here and Gemma ~470 MiB (weights + 2 slots x 4096 tokens of KV + buffers).
BUDGET_MB = 900


@contextlib.contextmanager
def empty_cluster_of(
    redis_url: str,
    logs_dir: Path,
    name: str,
    db: int,
    workers: list[str],
    scheduler: dict[str, str],
    **worker: str,
) -> Iterator[LocalCluster]:
    """Store, one scheduler, ``workers`` llama.cpp workers that start with no model (each pinned to its
    own cores where there are enough), and the gateway."""
    c = LocalCluster(
        gateway_port=free_port(), log_dir=logs_dir / name, redis_url=redis_url.rsplit("/", 1)[0] + f"/{db}"
    )
    (logs_dir / name).mkdir(exist_ok=True)
    with reported(c):
        c.start_store()
        c.start_scheduler(sweep_seconds="0.25", **scheduler)
        # Each worker on its own cores, as in a deployment: two llama.cpp workers spinning on the same
        # cores slow each other down by an order of magnitude.
        cores = c.worker_cores(len(workers))
        for i, worker_id in enumerate(workers):
            pinned = {"cpus": cores[i]} if cores else {}
            c.start_worker(
                worker_id,
                models="",
                slots=str(SLOTS),
                prompt_cache_mb="0",
                heartbeat_seconds="0.5",
                **pinned,
                **worker,
            )
        c.start_gateway()
        c.wait_ready(len(workers))
        yield c


@pytest.fixture(scope="module")
def lifecycle(redis_url: str, logs_dir: Path) -> Iterator[LocalCluster]:
    with empty_cluster_of(
        redis_url,
        logs_dir,
        "lifecycle",
        2,
        ["worker-0", "worker-1"],
        {"replica_after_seconds": "1"},
        memory_budget_mb=str(BUDGET_MB),
    ) as c:
        yield c


@pytest.fixture(scope="module")
def client(lifecycle: LocalCluster) -> ollama.Client:
    return ollama.Client(host=lifecycle.gateway_url, timeout=180)


@pytest.fixture(scope="module")
def gemma(client: ollama.Client) -> str:
    """The Gemma base model, uploaded as a blob and created with a chat template."""
    path = gemma_gguf()
    digest = client.create_blob(path)
    client.create(model=GEMMA, files={path.name: digest}, template=GEMMA_TEMPLATE)
    return GEMMA


def ps(client: ollama.Client) -> dict[str, Any]:
    return {m.model: m for m in client.ps().models}


def unload_all(client: ollama.Client) -> None:
    for name in list(ps(client)):
        client.generate(model=name, keep_alive=0)
    wait_until(lambda: not ps(client), "every model unloaded")


@pytest.fixture(autouse=True)
def empty_cluster(client: ollama.Client) -> Iterator[None]:
    unload_all(client)
    yield


def test_a_request_loads_its_model_and_ps_shows_where(client: ollama.Client, lifecycle: LocalCluster) -> None:
    assert not ps(client)
    started = time.perf_counter()
    first_token_at = None
    parts = []
    for chunk in client.generate(model=MODEL, prompt="Say hello.", options={"num_predict": 8}, stream=True):
        if chunk.response and first_token_at is None:
            first_token_at = time.perf_counter()
        parts.append(chunk.response)
        if chunk.done:
            assert chunk.done_reason in ("stop", "length")
            assert chunk.eval_count and chunk.eval_count <= 8
    assert "".join(parts).strip()
    assert first_token_at is not None
    print(f"unloaded model to first token: {first_token_at - started:.2f}s")

    loaded = ps(client)
    assert list(loaded) == [MODEL]
    entry = loaded[MODEL]
    assert entry.details.format == "gguf" and entry.details.family == "llama"
    assert entry.size > 98_000_000  # weights and KV cache
    # The default keep_alive is 5 minutes from the request's end.
    remaining = entry.expires_at.timestamp() - time.time()
    assert 250 < remaining <= 300
    raw = ps_raw(lifecycle)[MODEL]
    assert raw["state"] == "ready" and raw["context_length"] > 0
    assert [p["worker"] for p in raw["placements"]][0] in ("worker-0", "worker-1")
    assert raw["placements"][0]["engine"] == "llamacpp" and raw["placements"][0]["slots_total"] == SLOTS


def test_keep_alive_zero_unloads_after_the_request(client: ollama.Client) -> None:
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4})
    assert reply.message.content
    assert MODEL in ps(client)
    reply = client.chat(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4}, keep_alive=0
    )
    assert reply.message.content and reply.done
    wait_until(lambda: MODEL not in ps(client), "the model to unload after a keep_alive 0 request", 15)


def test_empty_request_loads_and_keep_alive_zero_unloads(client: ollama.Client) -> None:
    loaded = client.generate(model=MODEL, keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    entry = ps(client)[MODEL]
    assert 500 < entry.expires_at.timestamp() - time.time() <= 600

    forever = client.chat(model=MODEL, messages=[], keep_alive=-1)
    assert forever.done_reason == "load"
    assert ps(client)[MODEL].expires_at.year > 2300  # kept forever, as Ollama shows it

    unloaded = client.generate(model=MODEL, keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload"
    assert MODEL not in ps(client)
    # Unloading what is loaded nowhere is fine; a model that does not exist is a 404, as in Ollama.
    assert client.generate(model=MODEL, keep_alive=0).done_reason == "unload"
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate(model="no-such-model:1", keep_alive=0)
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model:1", messages=[])
    assert missing.value.status_code == 404


def test_keep_alive_expiry_unloads_an_idle_model(client: ollama.Client) -> None:
    client.generate(model=MODEL, prompt="One word.", options={"num_predict": 2}, keep_alive="2s")
    entry = ps(client)[MODEL]
    assert entry.expires_at.timestamp() - time.time() <= 2.5
    wait_until(lambda: MODEL not in ps(client), "keep_alive to run out", 20)


def test_embeddings_renew_the_keep_alive_and_zero_unloads(client: ollama.Client) -> None:
    first = client.embed(model=MODEL, input="hello", keep_alive="10m")
    assert len(first.embeddings) == 1 and len(first.embeddings[0]) == 576
    assert 500 < ps(client)[MODEL].expires_at.timestamp() - time.time() <= 600
    # No keep_alive: the default (5 minutes) from this use, not from the load.
    client.embed(model=MODEL, input="hello again")
    assert 250 < ps(client)[MODEL].expires_at.timestamp() - time.time() <= 300
    last = client.embed(model=MODEL, input="goodbye", keep_alive=0)
    assert len(last.embeddings[0]) == 576
    wait_until(lambda: MODEL not in ps(client), "keep_alive 0 on an embedding to unload the model", 15)


def test_bad_keep_alive_is_a_400(lifecycle: LocalCluster) -> None:
    reply = httpx.post(
        f"{lifecycle.gateway_url}/api/generate",
        json={"model": MODEL, "prompt": "hi", "keep_alive": "five minutes"},
        timeout=30,
    )
    assert reply.status_code == 400
    assert "invalid duration" in reply.json()["error"]


def test_two_models_load_at_once_and_answer(client: ollama.Client, gemma: str) -> None:
    def ask(model: str) -> ollama.ChatResponse:
        return client.chat(
            model=model, messages=[{"role": "user", "content": "Name a color."}], options={"num_predict": 8}
        )

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(ask, [MODEL, gemma]))
    for reply, model in zip(replies, [MODEL, gemma], strict=True):
        assert reply.model == model
        assert reply.message.content.strip()
        assert reply.eval_count and 0 < reply.eval_count <= 8
    assert set(ps(client)) == {MODEL, gemma}


def test_an_unload_asked_for_while_the_model_loads_or_runs_takes_effect(
    client: ollama.Client, gemma: str
) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(lambda: client.generate(model=gemma, prompt="Hi", options={"num_predict": 16}))
        wait_until(lambda: gemma in ps(client), "the load to start")  # loading, or ready and running
        assert client.generate(model=gemma, keep_alive=0).done_reason == "unload"
        assert answer.result().response  # the request it loaded for is still served
    # The unload came after that request began: it wins over the request's default keep_alive.
    wait_until(lambda: gemma not in ps(client), "the unload to take effect", 20)


def test_a_created_system_prompt_reaches_the_model(client: ollama.Client) -> None:
    client.create(
        model="smollm2-pirate:test", from_=MODEL, system="You are a pirate. Answer like one, always."
    )
    try:
        question = [{"role": "user", "content": "Where is the ship?"}]
        base = client.chat(model=MODEL, messages=question, options={"num_predict": 1})
        pirate = client.chat(model="smollm2-pirate:test", messages=question, options={"num_predict": 1})
        # The bundled model's own system prompt is replaced by the created one: another prompt length.
        assert pirate.prompt_eval_count != base.prompt_eval_count
        assert "smollm2-pirate:test" in ps(client)
    finally:
        client.delete("smollm2-pirate:test")
    # delete unloads it everywhere first
    assert "smollm2-pirate:test" not in ps(client)


def test_a_second_copy_loads_when_the_queue_waits(client: ollama.Client, lifecycle: LocalCluster) -> None:
    def long_stream(_: int) -> dict[str, Any]:
        reply = httpx.post(
            f"{lifecycle.gateway_url}/v1/completions",
            json={"model": MODEL, "prompt": "Count:", "max_tokens": 200, "ignore_eos": True},
            timeout=180,
        )
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    # Three times the slots of one copy: the queue waits past replica_after_seconds, and a copy
    # appears on the other worker, which then serves some of the waiting requests.
    with concurrent.futures.ThreadPoolExecutor(SLOTS * 3) as pool:
        replies = list(pool.map(long_stream, range(SLOTS * 3)))
    assert all(r["usage"]["completion_tokens"] == 200 for r in replies)
    workers = {p["worker"] for p in ps_raw(lifecycle)[MODEL]["placements"]}
    assert workers == {"worker-0", "worker-1"}


# One worker whose budget holds smollm2 (~350 MiB) or Gemma (~470 MiB), never both.
SMALL_BUDGET_MB = 600


@pytest.fixture(scope="module")
def small(redis_url: str, logs_dir: Path) -> Iterator[LocalCluster]:
    with empty_cluster_of(
        redis_url, logs_dir, "eviction", 3, ["worker-small"], {}, memory_budget_mb=str(SMALL_BUDGET_MB)
    ) as c:
        yield c


def metric(cluster: LocalCluster, series: str) -> float:
    text = httpx.get(cluster.metrics_urls["scheduler"], timeout=10).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {series} in the scheduler's metrics")


def evictions(cluster: LocalCluster) -> float:
    return metric(cluster, 'hyperllama_scheduler_model_unloads_total{reason="evicted"}')


def test_eviction_makes_room_and_never_takes_a_busy_model(small: LocalCluster) -> None:
    client = ollama.Client(host=small.gateway_url, timeout=180)
    path = gemma_gguf()
    client.create(model=GEMMA, files={path.name: client.create_blob(path)}, template=GEMMA_TEMPLATE)

    assert client.generate(model=MODEL, prompt="Hi", options={"num_predict": 2}).response
    assert set(ps(client)) == {MODEL}
    before = evictions(small)

    # Gemma does not fit beside smollm2: the idle smollm2 is evicted to make room.
    assert client.generate(model=GEMMA, prompt="Hi", options={"num_predict": 2}).response
    assert set(ps(client)) == {GEMMA}
    assert evictions(small) == before + 1

    # While Gemma streams, a request for smollm2 waits: a busy model is never evicted.
    def long_gemma() -> ollama.GenerateResponse:
        return client.generate(
            model=GEMMA, prompt="Tell a story.", options={"num_predict": 96, "temperature": 0, "stop": []}
        )

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        story = pool.submit(long_gemma)
        wait_until(lambda: ps_raw(small)[GEMMA]["slots_in_use"] == 1, "Gemma's stream to run")
        small_reply = client.generate(model=MODEL, prompt="Hi", options={"num_predict": 2})
        told = story.result()
    assert small_reply.response
    # Gemma's stream was not cut: it ran to its length (or stopped by itself), never an error.
    assert told.done and told.done_reason in ("length", "stop") and told.eval_count
    assert set(ps(client)) == {MODEL}
    assert evictions(small) == before + 2
    assert metric(small, 'hyperllama_scheduler_model_unload_seconds_count{reason="evicted"}') == before + 2


@pytest.fixture(scope="module")
def floor(redis_url: str, logs_dir: Path) -> Iterator[LocalCluster]:
    """Two empty workers and a floor of two smollm2 copies, with a keep_alive short enough to expire."""
    scheduler = {"keep_alive_seconds": "1", "min_copies": f'{{"{MODEL}": 2}}'}
    with empty_cluster_of(redis_url, logs_dir, "floor", 4, ["floor-0", "floor-1"], scheduler) as c:
        yield c


def test_a_floor_of_copies_loads_unasked_and_outlives_keep_alive(floor: LocalCluster) -> None:
    client = ollama.Client(host=floor.gateway_url, timeout=180)
    placements = wait_until(
        lambda: len(ps_raw(floor).get(MODEL, {}).get("placements", [])) == 2 and ps_raw(floor)[MODEL],
        "two copies of the model with no request at all",
    )
    assert {p["worker"] for p in placements["placements"]} == {"floor-0", "floor-1"}
    reply = client.generate(model=MODEL, prompt="Hi", options={"num_predict": 2}, keep_alive=0)
    assert reply.response
    # keep_alive 0 (one copy) and the 1 s default (the other) run out; the sweep finds the model at
    # its floor and keeps both, with no expiry from then on.
    kept = wait_until(
        lambda: (
            (e := ps_raw(floor).get(MODEL))
            and all(p["expires_at"].startswith("2318") for p in e["placements"])
            and e
        ),
        "the sweep to keep both copies",
    )
    assert len(kept["placements"]) == 2

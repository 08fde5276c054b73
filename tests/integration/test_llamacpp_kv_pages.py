"""The llama.cpp engine's KV cache holds memory for the cells in use, not for slots x context, and
giving pages back never changes what a request generates. Real model, real llama.cpp context."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.worker_metrics import WorkerMetrics
from hyperllama_worker_llamacpp.batch_engine import BatchEngine
from hyperllama_worker_llamacpp.kv_pages import KvPages
from hyperllama_worker_llamacpp.model import LoadedModel
from hyperllama_worker_llamacpp.registry import DEFAULT_MODEL, load_registry, select

MODEL = DEFAULT_MODEL
NUM_CTX = 2048  # per slot: 2 slots of the default model reserve 90 MiB of cache

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Raw prompts with different first tokens: a new one shares no prefix with what its slot held.
STORY = "Once upon a time, in a valley full of llamas, " * 12
RECIPE = "Ingredients: two cups of flour, one egg, a pinch of salt. " * 12


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model() -> LoadedModel:
    return await asyncio.to_thread(LoadedModel, select(load_registry(""), MODEL)[0], NUM_CTX, 2)


def engine_of(model: LoadedModel, slots: int) -> BatchEngine:
    metrics = WorkerMetrics("llamacpp", "test").for_model(MODEL)
    return BatchEngine(model, slots, 256, 2, metrics, asyncio.get_running_loop())


async def complete(engine: BatchEngine, prompt: str, max_tokens: int = 24) -> tuple[str, worker_pb2.Usage]:
    queue: asyncio.Queue = asyncio.Queue()
    req = worker_pb2.GenerateRequest(
        request_id=f"r-{time.monotonic_ns()}",
        model=MODEL,
        prompt=prompt,
        sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )
    engine.submit(engine.prepare(req, queue.put_nowait))
    parts = []
    while True:
        item = await asyncio.wait_for(queue.get(), 60)
        if isinstance(item, Exception):
            raise item
        parts.append(item.text)
        if item.finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED:
            return "".join(parts), item.usage


async def test_the_cache_holds_memory_for_the_cells_in_use_only(model):
    engine = engine_of(model, 1)
    try:
        pages = engine.kv_pages
        assert pages is not None, "the cache's buffer was not found"
        per_token = model.kv_bytes_per_token
        assert pages.size == per_token * NUM_CTX
        # Given back once the context exists: llama.cpp's clearing had made it all resident.
        assert pages.resident_bytes() < pages.size * 0.02

        _, usage = await complete(engine, STORY)
        held = usage.prompt_tokens + usage.completion_tokens
        resident = pages.resident_bytes()
        # Each layer's K and V rows of the cells written, to the page (a page holds ~10 rows here).
        assert held * per_token * 0.9 <= resident <= (held + 40) * per_token, (held, resident)

        # A prompt sharing nothing with what the slot held: the slot's old pages go back first.
        _, short = await complete(engine, "Hello", max_tokens=4)
        assert short.cached_prompt_tokens == 0
        assert pages.resident_bytes() <= (short.prompt_tokens + 4 + 40) * per_token < resident / 4
    finally:
        engine.close()


async def test_pages_given_back_change_nothing_that_is_generated(model, monkeypatch):
    """The same requests, one after another, through an engine that gives pages back and one that
    keeps them: the same text, token for token. Zeroed cells that a slot still held (its own or its
    neighbour's, whose pages adjoin) would change what follows them."""
    script = [STORY, RECIPE, "Hello there", RECIPE, STORY, STORY + "The end.", "A list of fruits:", RECIPE]

    async def run(engine: BatchEngine) -> list[tuple[str, int]]:
        try:
            out = []
            for prompt in script:
                text, usage = await complete(engine, prompt)
                out.append((text, usage.cached_prompt_tokens))
            return out
        finally:
            engine.close()

    releasing = engine_of(model, 2)
    assert releasing.kv_pages is not None
    given_back = await run(releasing)
    monkeypatch.setattr(KvPages, "locate", classmethod(lambda cls, *args: None))
    keeping = engine_of(model, 2)
    assert keeping.kv_pages is None
    kept = await run(keeping)
    assert given_back == kept
    assert any(cached for _, cached in kept) and all(text for text, _ in kept)  # reuse was exercised

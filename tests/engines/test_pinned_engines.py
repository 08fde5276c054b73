"""The cluster serves smollm2:135m from llama.cpp, vLLM and MAX workers at once as one pool; the
X-HyperLlama-Engine header pins a request to one engine, with the official openai and ollama clients."""

from __future__ import annotations

import httpx
import openai
import pytest
from hyperllama_cli.cluster import wait_for

from engines.conftest import ENGINES, MODEL, EngineWorker, pinned_ollama, pinned_openai

# The first test waits for the engines to start (a first MAX start compiles for minutes).
pytestmark = pytest.mark.timeout(1500)

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, engine_workers: dict[str, EngineWorker]) -> str:
    return str(request.param)


def test_one_model_many_engines(gateway_url: str, engine_workers: dict[str, EngineWorker]):
    models = httpx.get(f"{gateway_url}/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in models] == [MODEL]
    ps = httpx.get(f"{gateway_url}/api/ps", timeout=10).json()["models"]
    assert [m["name"] for m in ps] == [MODEL]
    assert sorted(w.info().engine for w in engine_workers.values()) == sorted(ENGINES)


def test_openai_client_pinned(gateway_url: str, engine: str):
    client = pinned_openai(gateway_url, engine)
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.prompt_tokens > 10 and 0 < whole.usage.completion_tokens < 30
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_openai_completions_pinned_max_tokens(gateway_url: str, engine: str):
    client = pinned_openai(gateway_url, engine)
    r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=6)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    assert r.choices[0].text


def test_ollama_client_pinned(gateway_url: str, engine: str):
    client = pinned_ollama(gateway_url, engine)
    # Without Ollama's default repeat_penalty 1.1, which vLLM applies over the whole prompt and output
    # (not the last 64 tokens), so that the short answer ends by itself on every engine.
    reply = client.chat(
        model=MODEL, messages=QUESTION, options={"temperature": 0, "num_predict": 30, "repeat_penalty": 1.0}
    )
    assert "Paris" in reply.message.content
    assert reply.done and reply.done_reason == "stop"
    assert reply.prompt_eval_count > 10 and 0 < reply.eval_count < 30
    parts = list(
        client.generate(
            model=MODEL,
            system="You are a helpful assistant.",
            prompt="What is the capital of France?",
            stream=True,
            options={"temperature": 0, "num_predict": 30},
        )
    )
    assert parts[-1].done and sum(1 for p in parts if p.done) == 1
    assert "Paris" in "".join(p.response for p in parts)


def test_pin_sends_work_only_to_that_engine(
    gateway_url: str, engine: str, engine_workers: dict[str, EngineWorker]
):
    """While a long pinned stream runs, only the pinned engine's worker has a slot in use."""
    client = pinned_openai(gateway_url, engine)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=400,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    try:
        first = next(iter(stream))
        assert first.choices
        wait_for(
            lambda: engine_workers[engine].info().slots_in_use == 1,
            f"the {engine} worker to hold the request",
            None,
            10,
        )
        others = {e: w.info().slots_in_use for e, w in engine_workers.items() if e != engine}
        assert others == {e: 0 for e in others}
    finally:
        stream.close()
    wait_for(lambda: engine_workers[engine].info().slots_in_use == 0, "the slot to be freed", None, 15)


def test_pinned_engine_that_cannot_serve_is_a_clear_4xx(gateway_url: str):
    client = pinned_openai(gateway_url, "tensorrt")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5)
    message = err.value.body["message"]
    assert "tensorrt" in message and MODEL in message
    assert all(e in message for e in ENGINES)

    r = httpx.post(
        f"{gateway_url}/api/chat",
        json={"model": MODEL, "messages": QUESTION, "stream": False},
        headers={"X-HyperLlama-Engine": "tensorrt"},
        timeout=30,
    )
    assert r.status_code == 400 and "tensorrt" in r.json()["error"]


def test_missing_capability_on_pinned_engine_is_named(
    gateway_url: str, engine_workers: dict[str, EngineWorker]
):
    without_embed = [e for e, w in engine_workers.items() if "embed" not in w.info().capabilities]
    if not without_embed:
        pytest.skip("every engine serves embeddings")
    client = pinned_openai(gateway_url, without_embed[0])
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=["hello"])
    assert "embed" in err.value.body["message"] and without_embed[0] in err.value.body["message"]
    # Unpinned, the pool finds the engine that can.
    if any("embed" in w.info().capabilities for w in engine_workers.values()):
        reply = pinned_openai(gateway_url, "").embeddings.create(model=MODEL, input=["hello"])
        assert len(reply.data[0].embedding) > 100


def test_unpinned_requests_use_the_whole_pool(gateway_url: str, engine_workers: dict[str, EngineWorker]):
    """Concurrent unpinned streams land on more than one engine's worker."""
    client = pinned_openai(gateway_url, "")
    busy: set[str] = set()
    streams = [
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Write a long story about dragon number {i}."}],
            max_tokens=400,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for i in range(3)
    ]
    try:
        for s in streams:
            next(iter(s))

        def spread() -> bool:
            busy.update(e for e, w in engine_workers.items() if w.info().slots_in_use)
            return len(busy) >= 2

        wait_for(spread, "streams on two engines at once", None, 10)
    finally:
        for s in streams:
            s.close()
    assert len(busy) >= 2

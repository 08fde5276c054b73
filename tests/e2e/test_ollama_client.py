"""The official ollama client against the running cluster."""

from __future__ import annotations

import json
import math

import ollama
import pytest

from e2e.conftest import MODEL

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def assert_timings(r) -> None:
    assert r.done is True
    assert r.total_duration > 0 and r.load_duration > 0
    assert r.prompt_eval_count > 0 and r.prompt_eval_duration > 0
    assert r.eval_count > 0 and r.eval_duration > 0
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration


def test_chat_capital_of_france(oll: ollama.Client):
    r = oll.chat(model=MODEL, messages=QUESTION, options={"temperature": 0})
    assert "Paris" in r.message.content
    assert r.message.role == "assistant"
    assert r.done_reason == "stop"
    assert_timings(r)


def test_chat_stream_matches_non_stream(oll: ollama.Client):
    opts = {"temperature": 0, "num_predict": 20}
    whole = oll.chat(model=MODEL, messages=QUESTION, options=opts)
    parts = list(oll.chat(model=MODEL, messages=QUESTION, options=opts, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].eval_count == whole.eval_count
    assert_timings(parts[-1])


def test_generate_with_system_and_stream(oll: ollama.Client):
    opts = {"temperature": 0, "num_predict": 30}
    r = oll.generate(
        model=MODEL,
        prompt="What is the capital of France?",
        system="You are a helpful assistant.",
        options=opts,
    )
    assert "Paris" in r.response
    streamed = list(
        oll.generate(
            model=MODEL,
            prompt="What is the capital of France?",
            system="You are a helpful assistant.",
            options=opts,
            stream=True,
        )
    )
    assert "".join(p.response for p in streamed) == r.response
    assert streamed[-1].done and streamed[-1].done_reason == r.done_reason


def test_raw_generate_skips_the_template(oll: ollama.Client):
    templated = oll.generate(model=MODEL, prompt="Hi", options={"temperature": 0, "num_predict": 5})
    raw = oll.generate(model=MODEL, prompt="Hi", raw=True, options={"temperature": 0, "num_predict": 5})
    # The template adds a system prompt and role markers, so the raw prompt is much shorter.
    assert raw.prompt_eval_count == 1
    assert templated.prompt_eval_count > 10


def test_num_predict_gives_length_and_exact_count(oll: ollama.Client):
    r = oll.generate(
        model=MODEL, prompt="Write a long story about a dragon.", options={"num_predict": 6, "temperature": 0}
    )
    assert r.done_reason == "length"
    assert r.eval_count == 6


def test_seed_determinism(oll: ollama.Client):
    opts = {"temperature": 1.0, "seed": 99, "num_predict": 20}
    a = oll.generate(model=MODEL, prompt="Tell me a fun fact.", options=opts).response
    b = oll.generate(model=MODEL, prompt="Tell me a fun fact.", options=opts).response
    assert a == b


def test_stop_option(oll: ollama.Client):
    opts = {"temperature": 0, "num_predict": 30}
    full = oll.chat(model=MODEL, messages=QUESTION, options=opts).message.content
    stop = full.split()[2]
    r = oll.chat(model=MODEL, messages=QUESTION, options={**opts, "stop": [stop]})
    assert r.message.content == full[: full.index(stop)]
    assert r.done_reason == "stop"


def test_format_json_and_schema(oll: ollama.Client):
    r = oll.generate(
        model=MODEL,
        prompt="What is the capital of France? Reply in JSON.",
        format="json",
        options={"temperature": 0, "num_predict": 200},
    )
    assert r.done_reason == "stop"
    assert isinstance(json.loads(r.response), dict)
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    r = oll.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a cat."}],
        format=schema,
        options={"temperature": 0, "num_predict": 100},
    )
    assert isinstance(json.loads(r.message.content)["name"], str)


def test_embed_and_legacy_embeddings(oll: ollama.Client):
    r = oll.embed(model=MODEL, input=["hello world", "goodbye moon"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 576
    assert math.isclose(math.sqrt(sum(x * x for x in r.embeddings[0])), 1.0, rel_tol=1e-3)
    assert r.prompt_eval_count > 0
    legacy = oll.embeddings(model=MODEL, prompt="hello world")
    assert legacy.embedding == pytest.approx(r.embeddings[0], abs=1e-5)


def test_list_show_ps_describe_the_real_model(oll: ollama.Client):
    listed = {m.model: m for m in oll.list().models}
    m = listed[MODEL]
    assert m.size > 50_000_000 and len(m.digest) == 64
    assert m.details.family == "llama" and m.details.format == "gguf"
    assert m.details.quantization_level == "Q4_1" and m.details.parameter_size == "134.52M"
    shown = oll.show(MODEL)
    assert "<|im_start|>" in shown.template
    assert shown.modelinfo["llama.context_length"] == 8192  # trained context, from the GGUF
    assert shown.modelinfo["general.parameter_count"] == 134515008
    running = {m.model: m for m in oll.ps().models}
    assert MODEL in running


def test_unknown_model(oll: ollama.Client):
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model="missing:1", messages=QUESTION)
    assert err.value.status_code == 404
    assert MODEL in err.value.error


def test_empty_generate_loads_the_model(oll: ollama.Client):
    r = oll.generate(model=MODEL)
    assert r.done and r.done_reason == "load" and r.response == ""

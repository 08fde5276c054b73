"""The official openai client against the running cluster."""

from __future__ import annotations

import json
import math

import jsonschema
import openai
import pytest

from e2e.conftest import MODEL

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_capital_of_france(oai: openai.OpenAI):
    r = oai.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.usage.prompt_tokens > 10
    assert 0 < r.usage.completion_tokens < 30
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_matches_non_stream_and_ends_once(oai: openai.OpenAI):
    args = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    whole = oai.chat.completions.create(**args)
    chunks = list(oai.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_max_tokens_finishes_with_length(oai: openai.OpenAI):
    r = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_completion_tokens=7,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7


def test_stop_string_ends_output_and_never_leaks(oai: openai.OpenAI):
    args = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    full = oai.chat.completions.create(**args).choices[0].message.content
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    cut = full[: full.index(stop)]
    r = oai.chat.completions.create(**args, stop=[stop])
    assert r.choices[0].message.content == cut
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or "" for c in oai.chat.completions.create(**args, stop=stop, stream=True)
    )
    assert streamed == cut


def test_same_seed_same_output(oai: openai.OpenAI):
    args = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a fun fact."}],
        temperature=1.0,
        seed=1234,
        max_tokens=20,
    )
    first = oai.chat.completions.create(**args).choices[0].message.content
    second = oai.chat.completions.create(**args).choices[0].message.content
    assert first == second


def test_completions_stream_and_not(oai: openai.OpenAI):
    args = dict(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8)
    whole = oai.completions.create(**args)
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 8 and whole.usage.prompt_tokens == 5
    streamed = "".join(c.choices[0].text for c in oai.completions.create(**args, stream=True))
    assert streamed == whole.choices[0].text


def test_completions_default_to_16_tokens(oai: openai.OpenAI):
    r = oai.completions.create(
        model=MODEL, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_embeddings(oai: openai.OpenAI):
    r = oai.embeddings.create(model=MODEL, input=["The cat sat on the mat.", "Stock markets fell today."])
    assert [d.index for d in r.data] == [0, 1]
    a, b = (d.embedding for d in r.data)
    assert len(a) == len(b) == 576
    assert math.isclose(math.sqrt(sum(x * x for x in a)), 1.0, rel_tol=1e-3)
    assert a != b
    assert r.usage.prompt_tokens > 0
    floats = oai.embeddings.create(model=MODEL, input="The cat sat on the mat.", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(a, abs=1e-5)


def test_models_list_and_retrieve(oai: openai.OpenAI):
    assert MODEL in [m.id for m in oai.models.list().data]
    assert oai.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("missing:1")


def test_unknown_model_lists_available(oai: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="missing:1", messages=QUESTION)
    assert MODEL in err.value.body["message"]
    assert err.value.body["code"] == "model_not_found"


def test_json_object_and_json_schema(oai: openai.OpenAI):
    r = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "List three colors as a JSON object."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    r = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a city and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        temperature=0,
        max_tokens=80,
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)

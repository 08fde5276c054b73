"""The rest of the request surface (tools, n, logprobs, the Responses API, Ollama's context) through each
pinned engine, with the official openai and ollama clients; what an engine cannot do is a clear 400."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from engines.conftest import ENGINES, MODEL, EngineWorker, pinned_ollama, pinned_openai

pytestmark = pytest.mark.timeout(1500)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, engine_workers: dict[str, EngineWorker]) -> str:
    return str(request.param)


def _claims(engine_workers: dict[str, EngineWorker], engine: str, capability: str) -> bool:
    return capability in engine_workers[engine].info().capabilities


def test_tools(gateway_url: str, engine: str, engine_workers: dict[str, EngineWorker]) -> None:
    client = pinned_openai(gateway_url, engine)
    # A required call is grammar-constrained: only engines with JSON-schema output can force it.
    if _claims(engine_workers, engine, "json_schema"):
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",  # type: ignore[arg-type,list-item]
                                           max_tokens=60, temperature=0)  # fmt: skip
        call = (r.choices[0].message.tool_calls or [])[0]
        assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]
    else:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",  # type: ignore[arg-type,list-item]
                                           max_tokens=60)  # fmt: skip
        assert "json_schema" in err.value.body["message"]  # type: ignore[index]
    # auto: text or a valid call, and a history with a call and its result continues.
    auto = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=30, temperature=0
    )  # type: ignore[arg-type,list-item]
    message = auto.choices[0].message
    assert message.content or message.tool_calls
    history = [*ASK,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees, clear"}]  # fmt: skip
    follow = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], tool_choice="none",  # type: ignore[arg-type]  # noqa: E501
                                            max_tokens=16, temperature=0)  # fmt: skip
    assert follow.choices[0].message.content


def test_n_choices_each_as_its_own_seeded_request(gateway_url: str, engine: str) -> None:
    client = pinned_openai(gateway_url, engine)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}
    both = client.chat.completions.create(**body, n=2, seed=7, temperature=1)  # type: ignore[call-overload]
    assert [c.index for c in both.choices] == [0, 1]
    for i, choice in enumerate(both.choices):
        alone = client.chat.completions.create(**body, seed=7 + i, temperature=1)  # type: ignore[call-overload]
        assert choice.message.content == alone.choices[0].message.content


def test_logprobs(gateway_url: str, engine: str, engine_workers: dict[str, EngineWorker]) -> None:
    client = pinned_openai(gateway_url, engine)
    if not _claims(engine_workers, engine, "logprobs"):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=ASK, logprobs=True, max_tokens=4)
        assert "logprobs" in err.value.body["message"]  # type: ignore[index]
        return
    r = client.chat.completions.create(model=MODEL, messages=ASK, logprobs=True, top_logprobs=3, max_tokens=6,
                                       temperature=0)  # fmt: skip
    entries = r.choices[0].logprobs.content or []  # type: ignore[union-attr]
    assert entries and "".join(e.token for e in entries) == r.choices[0].message.content
    for e in entries:  # greedy picks the most likely token
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.logprob == pytest.approx(max(t.logprob for t in e.top_logprobs), abs=1e-3)


def test_responses_api(gateway_url: str, engine: str) -> None:
    client = pinned_openai(gateway_url, engine)
    r = client.responses.create(model=MODEL, input="What is the capital of France?", instructions="Answer briefly.",  # noqa: E501
                                max_output_tokens=20, temperature=0)  # fmt: skip
    assert r.status in ("completed", "incomplete") and r.output_text and r.usage and r.usage.output_tokens > 0
    events = list(client.responses.create(model=MODEL, input="What is the capital of France?",
                                          max_output_tokens=20, temperature=0, stream=True))  # fmt: skip
    assert events[0].type == "response.created" and events[-1].type in (
        "response.completed",
        "response.incomplete",
    )
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text and text == events[-1].response.output_text  # type: ignore[union-attr]


def test_ollama_context_round_trip(gateway_url: str, engine: str) -> None:
    client = pinned_ollama(gateway_url, engine)
    options = {"num_predict": 5, "temperature": 0}
    first = client.generate(model=MODEL, prompt="My name is Zed.", options=options)
    context = list(first.context or [])
    assert context and first.prompt_eval_count and len(context) >= first.prompt_eval_count
    alone = client.generate(model=MODEL, prompt="What is my name?", options=options)
    after = client.generate(model=MODEL, prompt="What is my name?", context=context, options=options)
    assert after.prompt_eval_count == len(context) + alone.prompt_eval_count
    assert list(after.context or [])[: len(context)] == context

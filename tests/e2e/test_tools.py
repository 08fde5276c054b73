"""Tool calling on both APIs through the official clients, on the real 135M model: a required call is
constrained to a function and arguments that validate against its schema."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import openai
import pytest

from e2e.conftest import MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


def _valid(name: str, arguments: dict[str, object]) -> None:
    jsonschema.validate(arguments, SCHEMAS[name])


@pytest.mark.parametrize(
    ("choice", "names"),
    [
        ("required", {"get_weather", "get_time"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
    ],
    ids=["required", "named"],
)
def test_a_required_call_names_a_function_and_validates(
    oai: openai.OpenAI, choice: object, names: set[str]
) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice,  # type: ignore[arg-type]
                                    max_tokens=80, temperature=0)  # fmt: skip
    choice0 = r.choices[0]
    assert choice0.finish_reason == "tool_calls" and choice0.message.content is None
    call = choice0.message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
    _valid(call.function.name, json.loads(call.function.arguments))


def test_a_required_call_streams_its_arguments_in_pieces(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                         max_tokens=80, temperature=0, stream=True)  # fmt: skip
    name, pieces, finish, ids = None, [], None, set()
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                if call.id:
                    ids.add(call.id)
                if call.function and call.function.name:
                    name = call.function.name
                if call.function and call.function.arguments:
                    pieces.append(call.function.arguments)
            finish = choice.finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls" and len(ids) == 1 and len(pieces) > 1
    _valid(name, json.loads("".join(pieces)))
    plain = oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                        max_tokens=80, temperature=0)  # fmt: skip
    assert json.loads("".join(pieces)) == json.loads(
        plain.choices[0].message.tool_calls[0].function.arguments
    )  # type: ignore[index]


def test_auto_and_none_let_the_model_answer_in_text(oai: openai.OpenAI) -> None:
    for choice in ("auto", "none"):
        r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                        tools=[WEATHER], tool_choice=choice, max_tokens=16, temperature=0)  # type: ignore[arg-type]  # fmt: skip
        c = r.choices[0]
        if c.finish_reason == "tool_calls":  # auto: the model chose a call; it must then be a valid one
            _valid(
                c.message.tool_calls[0].function.name, json.loads(c.message.tool_calls[0].function.arguments)
            )  # type: ignore[index]
        else:
            assert c.message.content and not c.message.tool_calls


def test_a_conversation_with_calls_and_results_continues(oai: openai.OpenAI) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    r = oai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], tool_choice="none",  # type: ignore[arg-type]
                                    max_tokens=24, temperature=0)  # fmt: skip
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")


# Ollama has no tool_choice: the model decides. A format holding the call's shape makes the 135M model
# decide for a call, so the answer's shape can be checked.
CALL_FORMAT = {
    "type": "object",
    "properties": {"name": {"type": "string", "enum": ["get_weather"]},
                   "arguments": WEATHER["function"]["parameters"]},  # type: ignore[index]
    "required": ["name", "arguments"],
}  # fmt: skip


def test_ollama_tool_calls_come_back_as_ollama_sends_them(oll: ollama.Client) -> None:
    r = oll.chat(model=MODEL, messages=ASK, tools=[WEATHER], format=CALL_FORMAT,
                 options={"num_predict": 80, "temperature": 0})  # fmt: skip
    calls = r.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_weather" and not r.message.content
    assert isinstance(calls[0].function.arguments, dict)
    _valid("get_weather", dict(calls[0].function.arguments))
    streamed = list(oll.chat(model=MODEL, messages=ASK, tools=[WEATHER], format=CALL_FORMAT, stream=True,
                             options={"num_predict": 80, "temperature": 0}))  # fmt: skip
    with_calls = [part for part in streamed if part.message.tool_calls]
    assert len(with_calls) == 1 and streamed[-1].done
    assert with_calls[0].message.tool_calls[0].function.arguments == calls[0].function.arguments  # type: ignore[index]


def test_ollama_text_answers_and_history_with_calls(oll: ollama.Client) -> None:
    r = oll.chat(model=MODEL, messages=[{"role": "user", "content": "Say hello."}], tools=[WEATHER],
                 options={"num_predict": 12, "temperature": 0})  # fmt: skip
    assert r.message.content or r.message.tool_calls
    history = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                         "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "21 degrees, clear"},
    ]  # fmt: skip
    answer = oll.chat(model=MODEL, messages=history, options={"num_predict": 16, "temperature": 0})
    assert answer.message.content and answer.done


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools.0"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [WEATHER], "n": 2}, "n"),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_bad_tools_are_a_clear_400(base_url: str, body: dict[str, object], param: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body}, timeout=30
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_show_lists_tools_among_the_capabilities(oll: ollama.Client) -> None:
    assert "tools" in (oll.show(MODEL).capabilities or [])


# An answer shaped as two calls at once (the format holds the model to it), to check that parallel
# calls come back as several, in order, on both APIs.
TWO_CALLS = {"type": "array", "items": CALL_FORMAT, "minItems": 2, "maxItems": 2}


def test_parallel_calls_come_back_as_several_on_both_apis(oai: openai.OpenAI, oll: ollama.Client) -> None:
    asked = [{"role": "user", "content": "What is the weather in Paris and in Rome?"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "calls", "schema": TWO_CALLS}}
    r = oai.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER], response_format=fmt,  # type: ignore[arg-type]
                                    max_tokens=120, temperature=0)  # fmt: skip
    calls = r.choices[0].message.tool_calls or []
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 2 and len({c.id for c in calls}) == 2
    for call in calls:
        _valid(call.function.name, json.loads(call.function.arguments))
    streamed: dict[int, dict[str, str]] = {}
    for chunk in oai.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER], response_format=fmt,  # type: ignore[arg-type]  # noqa: E501
                                             max_tokens=120, temperature=0, stream=True):  # fmt: skip
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                streamed[call.index] = {"name": call.function.name, "arguments": call.function.arguments}  # type: ignore[union-attr,dict-item]
    assert sorted(streamed) == [0, 1]
    assert [json.loads(streamed[i]["arguments"]) for i in (0, 1)] == [
        json.loads(c.function.arguments) for c in calls
    ]
    # parallel_tool_calls false: one call at most.
    one = oai.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER], response_format=fmt,  # type: ignore[arg-type]
                                      parallel_tool_calls=False, max_tokens=120, temperature=0)  # fmt: skip
    assert len(one.choices[0].message.tool_calls or []) == 1
    # Ollama: one message with both calls.
    answer = oll.chat(model=MODEL, messages=asked, tools=[WEATHER], format=TWO_CALLS,
                      options={"num_predict": 120, "temperature": 0})  # fmt: skip
    ollama_calls = answer.message.tool_calls or []
    assert [dict(c.function.arguments) for c in ollama_calls] == [
        json.loads(c.function.arguments) for c in calls
    ]


def test_a_history_of_parallel_calls_and_their_results_continues(oai: openai.OpenAI) -> None:
    history = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome", "unit": "celsius"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "21"},
        {"role": "tool", "tool_call_id": "call_b", "content": "25"},
    ]  # fmt: skip
    with_tools = oai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], tool_choice="none",  # type: ignore[arg-type]  # noqa: E501
                                             max_tokens=8, temperature=0)  # fmt: skip
    # Both calls are in the prompt: it is longer than the same history with one of them.
    fewer = [history[0], {**history[1], "tool_calls": history[1]["tool_calls"][:1]}, history[2]]  # type: ignore[index]
    shorter = oai.chat.completions.create(model=MODEL, messages=fewer, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert with_tools.choices[0].message.content and with_tools.usage and shorter.usage
    assert with_tools.usage.prompt_tokens > shorter.usage.prompt_tokens + 10


def test_ollama_history_carries_call_ids_and_tool_names(oll: ollama.Client, base_url: str) -> None:
    """Ollama's current message fields: a call's id and a tool message's tool_call_id and tool_name."""
    history = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_7", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]},  # noqa: E501
        {"role": "tool", "tool_name": "get_weather", "tool_call_id": "call_7", "content": "21 degrees, clear"},  # noqa: E501
    ]  # fmt: skip
    r = httpx.post(f"{base_url}/api/chat", json={"model": MODEL, "messages": history, "stream": False,
                                                 "options": {"num_predict": 8, "temperature": 0}}, timeout=60)  # fmt: skip  # noqa: E501
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] and r.json()["done"] is True
    bad = [*ASK, {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}]
    r = httpx.post(
        f"{base_url}/api/chat", json={"model": MODEL, "messages": bad, "stream": False}, timeout=30
    )
    assert (
        r.status_code == 400
        and "messages.1.tool_calls.0 must have a function with a name" in r.json()["error"]
    )

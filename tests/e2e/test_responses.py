"""OpenAI's Responses API (stateless) through the official openai client on the real cluster."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from e2e.conftest import MODEL


def test_a_response_to_a_string_input(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model=MODEL, input="What is the capital of France?", max_output_tokens=16,
                             temperature=0)  # fmt: skip
    assert r.object == "response" and r.id.startswith("resp_") and r.model == MODEL
    assert r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output_text and r.output_text == r.output[0].content[0].text
    assert r.usage is not None and r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    # The same conversation through chat completions answers the same (greedy).
    question = [{"role": "user", "content": "What is the capital of France?"}]
    chat = oai.chat.completions.create(model=MODEL, messages=question, max_tokens=16, temperature=0)
    assert r.output_text == chat.choices[0].message.content


def test_instructions_items_and_the_output_limit(oai: openai.OpenAI) -> None:
    r = oai.responses.create(
        model=MODEL,
        instructions="You answer in one word.",
        input=[
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Blue."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "Another one, with a long story."}]},
        ],
        max_output_tokens=3,
        temperature=0,
    )
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert (
        r.incomplete_details.reason == "max_output_tokens"
        and r.usage is not None
        and r.usage.output_tokens == 3
    )
    assert r.instructions == "You answer in one word."


def test_a_streamed_response_sends_the_responses_events_in_order(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model=MODEL, input="Say hello.", max_output_tokens=12, temperature=0,
                                       stream=True))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert deltas and deltas == done.output_text
    single = oai.responses.create(model=MODEL, input="Say hello.", max_output_tokens=12, temperature=0)
    assert single.output_text == deltas


def test_text_format_json_schema_is_followed(oai: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}  # fmt: skip
    fmt = {"format": {"type": "json_schema", "name": "city", "schema": schema}}
    r = oai.responses.create(model=MODEL, input="Name a city as JSON.", max_output_tokens=40, temperature=0,
                             text=fmt)  # type: ignore[arg-type]  # fmt: skip
    jsonschema.validate(json.loads(r.output_text), schema)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools.0"),
        (
            {
                "input": "x",
                "tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "function", "name": "g"},
            },
            "tool_choice",
        ),
        ({"input": ""}, "input"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content.0.type",
        ),
    ],
)
def test_what_a_stateless_server_cannot_do_is_a_clear_400(
    base_url: str, body: dict[str, object], param: str
) -> None:
    r = httpx.post(f"{base_url}/v1/responses", json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["message"]


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
}  # fmt: skip


def test_a_required_function_call_and_its_result(oai: openai.OpenAI) -> None:
    ask = "What is the weather in Paris?"
    r = oai.responses.create(model=MODEL, input=ask, tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
                             max_output_tokens=60, temperature=0)  # fmt: skip
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])  # type: ignore[arg-type]
    streamed = list(oai.responses.create(model=MODEL, input=ask, tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
                                         max_output_tokens=60, temperature=0, stream=True))  # fmt: skip
    kinds = [e.type for e in streamed]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in streamed if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == json.loads(call.arguments)
    # The call and its output continue the conversation as input items.
    history = [
        {"role": "user", "content": ask},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees and clear"},
    ]
    follow = oai.responses.create(model=MODEL, input=history, tools=[WEATHER], tool_choice="none",  # type: ignore[arg-type,list-item]
                                  max_output_tokens=16, temperature=0)  # fmt: skip
    assert follow.output[0].type == "message" and follow.output_text


def test_parallel_function_calls_are_output_items_of_their_own(oai: openai.OpenAI) -> None:
    call = {"type": "object", "properties": {"name": {"type": "string", "enum": ["get_weather"]},
            "arguments": WEATHER["parameters"]}, "required": ["name", "arguments"]}  # fmt: skip
    # The format holds the 135M model to two calls at once.
    fmt = {"format": {"type": "json_schema", "name": "calls",
                      "schema": {"type": "array", "items": call, "minItems": 2, "maxItems": 2}}}  # fmt: skip
    ask = "What is the weather in Paris and in Rome?"
    r = oai.responses.create(model=MODEL, input=ask, tools=[WEATHER], text=fmt,  # type: ignore[arg-type,list-item]
                             max_output_tokens=120, temperature=0)  # fmt: skip
    assert [o.type for o in r.output] == ["function_call", "function_call"] and r.parallel_tool_calls
    assert len({o.call_id for o in r.output}) == 2  # type: ignore[union-attr]
    streamed = list(oai.responses.create(model=MODEL, input=ask, tools=[WEATHER], text=fmt,  # type: ignore[arg-type,list-item]
                                         max_output_tokens=120, temperature=0, stream=True))  # fmt: skip
    done = [e for e in streamed if e.type == "response.function_call_arguments.done"]
    assert [e.output_index for e in done] == [0, 1]
    assert [json.loads(e.arguments) for e in done] == [json.loads(o.arguments) for o in r.output]  # type: ignore[union-attr]
    single = oai.responses.create(model=MODEL, input=ask, tools=[WEATHER], text=fmt, parallel_tool_calls=False,  # type: ignore[arg-type,list-item]  # noqa: E501
                                  max_output_tokens=120, temperature=0)  # fmt: skip
    assert [o.type for o in single.output] == ["function_call"] and single.parallel_tool_calls is False

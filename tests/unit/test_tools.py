"""Tool plans, call parsing and the streaming of a call's arguments."""

from __future__ import annotations

import json

import pytest
from hyperllama_common.errors import InvalidRequest
from hyperllama_gateway import tools
from hypothesis import given
from hypothesis import strategies as st

FN = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "x": {"type": "integer"}}, "required": ["x"]}}}  # fmt: skip
G = {"type": "function", "function": {"name": "g"}}


def test_plans_follow_tool_choice() -> None:
    parsed = tools.parse_tools([FN, G])
    assert tools.plan(parsed, "none") is None and tools.plan([], "auto") is None
    auto = tools.plan(parsed, None)
    assert auto is not None and not auto.required and auto.schema() is None
    one_call = {"anyOf": [
        {"type": "object", "properties": {"name": {"type": "string", "enum": ["f"]},
                                          "arguments": FN["function"]["parameters"]},  # type: ignore[index]
         "required": ["name", "arguments"], "additionalProperties": False},
        {"type": "object", "properties": {"name": {"type": "string", "enum": ["g"]},
                                          "arguments": {"type": "object", "properties": {}}},
         "required": ["name", "arguments"], "additionalProperties": False},
    ]}  # fmt: skip
    single = tools.plan(parsed, "required", parallel=False)
    assert single is not None and single.schema() == one_call
    # parallel_tool_calls (absent = true): one call or an array of them.
    required = tools.plan(parsed, "required")
    assert required is not None and required.parallel
    assert required.schema() == {"anyOf": [one_call, {"type": "array", "items": one_call, "minItems": 1}]}
    named = tools.plan(parsed, {"type": "function", "function": {"name": "g"}}, parallel=False)
    assert named is not None and named.forced == "g" and named.schema()["properties"]["name"]["enum"] == ["g"]  # type: ignore[index]
    assert "JSON array" in required.system_text() and "JSON array" not in named.system_text()
    with pytest.raises(InvalidRequest):
        tools.plan(parsed, {"type": "function", "function": {"name": "h"}})


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ('{"name": "f", "arguments": {"x": 1}}', [("f", {"x": 1})]),
        ('  \n```json\n{"name": "f", "arguments": {"x": 2}}\n```', [("f", {"x": 2})]),
        ('{"name": "f", "parameters": {"x": 3}}', [("f", {"x": 3})]),
        ('{"name": "f", "arguments": "{\\"x\\": 4}"}', [("f", {"x": 4})]),
        ('{"name": "h", "arguments": {}}', []),
        ('{"name": "f", "arguments": "x"}', []),
        ("The answer is 4.", []),
        ('{"name": "f", "arguments": {"x": 1}', []),
        # Several calls: an array, one object after another, as models trained on tools write them.
        ('[{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]', [("f", {"x": 1}), ("g", {})]),  # noqa: E501
        ('{"name": "f", "arguments": {"x": 1}}\n{"name": "f", "arguments": {"x": 2}}', [("f", {"x": 1}), ("f", {"x": 2})]),  # noqa: E501
        ('<tool_call>\n{"name": "f", "arguments": {"x": 5}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>',  # noqa: E501
         [("f", {"x": 5}), ("g", {})]),
        ('[TOOL_CALLS] [{"name": "f", "arguments": {"x": 6}}]', [("f", {"x": 6})]),
        ('<|python_tag|>{"name": "f", "parameters": {"x": 7}}', [("f", {"x": 7})]),
        ('{"name": "f", "arguments": {"x": 1}} and then some text', []),
        ('[{"name": "f", "arguments": {"x": 1}}, 3]', []),
    ],
)  # fmt: skip
def test_an_answer_is_calls_only_when_it_is_wholly_calls_of_the_functions(
    text: str, calls: list[tuple[str, dict[str, int]]]
) -> None:
    plan = tools.plan(tools.parse_tools([FN, G]), "auto")
    assert plan is not None
    found = plan.parse(text)
    assert [(c.name, c.arguments) for c in found] == calls
    assert len({c.id for c in found}) == len(found)
    for c in found:
        assert c.id.startswith("call_") and json.loads(c.arguments_json()) == c.arguments


def test_without_parallel_calls_an_answer_is_at_most_one_call() -> None:
    plan = tools.plan(tools.parse_tools([FN, G]), "auto", parallel=False)
    assert plan is not None
    found = plan.parse('[{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]')
    assert [(c.name, c.arguments) for c in found] == [("f", {"x": 1})]


VALUES = st.one_of(
    st.integers(), st.text(max_size=8), st.dictionaries(st.text(max_size=3), st.booleans(), max_size=2)
)


@given(
    st.dictionaries(st.text(max_size=5), VALUES, max_size=4),
    st.lists(st.integers(1, 6), min_size=1, max_size=40),
)
def test_argument_pieces_join_into_the_arguments(arguments: dict[str, object], cuts: list[int]) -> None:
    text = json.dumps({"name": "f", "arguments": arguments}) + " "
    stream = tools.ArgumentStream()
    names, pieces, i = [], [], 0
    for cut in cuts * (len(text) // len(cuts) + 1):
        if i >= len(text):
            break
        name, piece = stream.feed(text[i : i + cut])
        i += cut
        names += [name] if name else []
        pieces.append(piece)
    assert names == ["f"]
    assert json.loads("".join(pieces)) == arguments


def test_an_opening_brace_is_held_and_text_is_not() -> None:
    text = tools.Opening()
    assert text.feed("  ") == "" and text.feed("Hello") == "  Hello" and text.feed(" {x}") == " {x}"
    call = tools.Opening()
    assert call.feed(" {") == "" and call.feed('"a": 1}') == "" and call.held() == ' {"a": 1}'
    # A model's own call marker is held, arriving in pieces; text that only starts like one is not.
    marked = tools.Opening()
    assert marked.feed("<tool") == "" and marked.feed("_call>\n{") == "" and marked.held() == "<tool_call>\n{"
    angle = tools.Opening()
    assert angle.feed("<to") == "" and angle.feed("p> secret") == "<top> secret"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ([{"type": "code_interpreter"}], "tools.0"),
        ([{"type": "function", "function": {"name": "a b"}}], "tools.0.function.name"),
        ([{"type": "function", "function": {"name": "a", "parameters": []}}], "tools.0.function.parameters"),
        ([G, G], "tools"),
        ([G] * 129, "tools"),
    ],
)
def test_bad_tools_name_their_field(raw: list[dict[str, object]], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        tools.parse_tools(raw)
    assert err.value.param == param


def test_history_calls_reach_the_worker_with_their_ids_on_both_apis() -> None:
    from hyperllama_gateway.ollama.protocol import ChatRequest as OllamaChat
    from hyperllama_gateway.ollama.service import chat_request as ollama_chat
    from hyperllama_gateway.openai.protocol import ChatCompletionRequest
    from hyperllama_gateway.openai.service import chat_request as openai_chat

    ollama = ollama_chat(OllamaChat.model_validate({"model": "m", "messages": [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_7", "function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "content": "2", "tool_name": "f", "tool_call_id": "call_7"},
    ]}), "r1")  # fmt: skip
    call, result = ollama.chat.messages
    assert (call.tool_calls[0].id, call.tool_calls[0].name, json.loads(call.tool_calls[0].arguments_json)) == (  # noqa: E501
        "call_7", "f", {"x": 1})  # fmt: skip
    assert (result.tool_name, result.tool_call_id) == ("f", "call_7")
    openai = openai_chat(ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_8", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}}]},
        {"role": "tool", "content": "3", "tool_call_id": "call_8"},
    ]}), "r2")  # fmt: skip
    call, result = openai.chat.messages
    assert (call.tool_calls[0].id, call.tool_calls[0].arguments_json) == ("call_8", '{"x": 2}')
    assert result.tool_call_id == "call_8" and openai.defaults.temperature == 1.0
    assert ollama.defaults.temperature == pytest.approx(0.8) and ollama.defaults.top_k == 40

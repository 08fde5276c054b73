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
    required = tools.plan(parsed, "required")
    assert required is not None and required.schema() == {"anyOf": [
        {"type": "object", "properties": {"name": {"type": "string", "enum": ["f"]},
                                          "arguments": FN["function"]["parameters"]},  # type: ignore[index]
         "required": ["name", "arguments"], "additionalProperties": False},
        {"type": "object", "properties": {"name": {"type": "string", "enum": ["g"]},
                                          "arguments": {"type": "object", "properties": {}}},
         "required": ["name", "arguments"], "additionalProperties": False},
    ]}  # fmt: skip
    named = tools.plan(parsed, {"type": "function", "function": {"name": "g"}})
    assert named is not None and named.forced == "g" and named.schema()["properties"]["name"]["enum"] == ["g"]  # type: ignore[index]
    with pytest.raises(InvalidRequest):
        tools.plan(parsed, {"type": "function", "function": {"name": "h"}})


@pytest.mark.parametrize(
    ("text", "call"),
    [
        ('{"name": "f", "arguments": {"x": 1}}', ("f", {"x": 1})),
        ('  \n```json\n{"name": "f", "arguments": {"x": 2}}\n```', ("f", {"x": 2})),
        ('{"name": "f", "parameters": {"x": 3}}', ("f", {"x": 3})),
        ('{"name": "h", "arguments": {}}', None),
        ('{"name": "f", "arguments": "x"}', None),
        ("The answer is 4.", None),
        ('{"name": "f", "arguments": {"x": 1}', None),
    ],
)
def test_an_answer_is_a_call_only_when_it_names_a_function(
    text: str, call: tuple[str, dict[str, int]] | None
) -> None:
    plan = tools.plan(tools.parse_tools([FN, G]), "auto")
    assert plan is not None
    found = plan.parse(text)
    assert (found.name, found.arguments) == call if call else found is None  # type: ignore[union-attr]
    if found:
        assert found.id.startswith("call_") and json.loads(found.arguments_json()) == found.arguments


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

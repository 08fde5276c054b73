"""Tool (function) calling, shared by both APIs.

The worker tells the model about the functions: through the model's chat template when it renders
tools, else in one generic format, the system text built here (``ToolPlan.system_text``), in which the
model answers a call as a JSON object ``{"name": ..., "arguments": {...}}`` and several at once as a
JSON array of them. When a call is required (``tool_choice`` "required" or a named function) the
answer is constrained by a JSON schema built from the functions' parameters, so even a small model's
call names a real function and its arguments validate against its schema. With "auto" the model is
free: an answer that is one or more calls (in the generic format or the ones models trained on tools
write: ``<tool_call>...</tool_call>``, ``[TOOL_CALLS]``, ``<|python_tag|>``) is a call, any other
answer is text. ``parallel_tool_calls: false`` keeps an answer to one call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import InvalidRequest, quote

from hyperllama_gateway.limits import check_schema

# OpenAI's own bounds: 128 functions, names of letters, digits, '_' and '-' up to 64 characters.
MAX_TOOLS = 128
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The opening of a call as the constrained answer writes it: the name, then the arguments.
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def parse_tools(raw: list[dict[str, Any]] | None, param: str = "tools") -> list[Tool]:
    """Tools as both APIs send them: ``[{"type": "function", "function": {name, description,
    parameters}}]``."""
    if not raw:
        return []
    if len(raw) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools ({len(raw)} given)", param=param)
    tools = []
    for i, entry in enumerate(raw):
        where = f"{param}.{i}"
        if entry.get("type", "function") != "function" or not isinstance(entry.get("function"), dict):
            raise InvalidRequest(
                f"{where}: only tools of type 'function' with a 'function' object are supported", param=where
            )
        fn = entry["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidRequest(f"{where}.function.name must be 1-64 letters, digits, '_' or '-'",
                                 param=f"{where}.function.name")  # fmt: skip
        parameters = fn.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"{where}.function.parameters must be a JSON schema object",
                                 param=f"{where}.function.parameters")  # fmt: skip
        try:
            check_schema(parameters)
        except ValueError as err:
            raise InvalidRequest(
                f"{where}.function.parameters: {err}", param=f"{where}.function.parameters"
            ) from None
        description = fn.get("description") or ""
        tools.append(Tool(name, description if isinstance(description, str) else "", parameters))
    if len({t.name for t in tools}) != len(tools):
        raise InvalidRequest("tool names must be unique", param=param)
    return tools


@dataclass(frozen=True)
class ToolPlan:
    """What a request asks of its tools: ``forced`` names the function a call must use ("" = any of
    them); ``required`` means the answer must be a call; ``parallel``, that it may be several."""

    tools: list[Tool]
    required: bool
    forced: str = ""
    parallel: bool = True

    def system_text(self) -> str:
        listed = "\n".join(
            json.dumps(
                {"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False
            )  # fmt: skip
            for t in self.tools
        )
        ask = (
            f'You must call the function "{self.forced}".' if self.forced
            else "You must call one of the functions." if self.required
            else "Call a function only when it helps; otherwise answer in plain text."
        )  # fmt: skip
        return (
            "You can call these functions (JSON schemas of their parameters):\n"
            f"{listed}\n"
            'To call a function, answer with one JSON object and nothing else: {"name": <the function\'s '
            'name>, "arguments": <an object of its arguments>}. '
            + ("To call several at once, answer with a JSON array of such objects. " if self.parallel else "")
            + ask
        )

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema a required call must follow (None when the model may answer text)."""
        if not self.required:
            return None
        chosen = [t for t in self.tools if not self.forced or t.name == self.forced]
        alternatives = [
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [t.name]}, "arguments": t.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in chosen
        ]
        one = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
        if not self.parallel:
            return one
        return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]}

    def parse(self, text: str) -> list[ToolCall]:
        """The calls an answer makes, in order; none for a text answer (or one that is not wholly
        calls of these functions)."""
        values = _call_values(text)
        calls = []
        for value in values:
            if not isinstance(value, dict):
                return []
            name, arguments = value.get("name"), value.get("arguments", value.get("parameters"))
            if isinstance(arguments, str):  # some models write the arguments as JSON text
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    return []
            if not any(t.name == name for t in self.tools) or not isinstance(arguments, dict):
                return []
            calls.append(ToolCall(str(name), arguments, new_call_id()))
        return calls if self.parallel else calls[:1]


# How models trained on tools open a call (Hermes/Qwen, Mistral, Llama 3.x), besides bare JSON.
_MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "```")
_DECODER = json.JSONDecoder()


def _call_values(text: str) -> list[Any]:
    """The JSON values an answer consists of: one, an array of them, several one after another, in
    ``<tool_call>`` tags or after a marker; empty when anything else is in it."""
    body = text.strip()
    if body.startswith("```"):  # a call in a code fence
        body = body.strip("`").removeprefix("json").strip()
    body = body.replace("<tool_call>", "").replace("</tool_call>", "")
    body = body.removeprefix("[TOOL_CALLS]").removeprefix("<|python_tag|>").strip()
    values: list[Any] = []
    at = 0
    while at < len(body):
        if body[at] in " \t\r\n;,":
            at += 1
            continue
        if body[at] not in "{[":
            return []
        try:
            value, at = _DECODER.raw_decode(body, at)
        except ValueError:
            return []
        values.extend(value if isinstance(value, list) else [value])
    return values


def plan(
    tools: list[Tool], choice: Any, param: str = "tool_choice", parallel: bool | None = None
) -> ToolPlan | None:
    """The plan for OpenAI's ``tool_choice`` ("none", "auto", "required" or a named function; absent
    = "auto" when there are tools) and ``parallel_tool_calls`` (absent = true); None when the request
    uses no tools."""
    if not tools or choice == "none":
        return None
    parallel = parallel is not False
    if choice is None or choice == "auto":
        return ToolPlan(tools, required=False, parallel=parallel)
    if choice == "required":
        return ToolPlan(tools, required=True, parallel=parallel)
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not any(t.name == name for t in tools):
            raise InvalidRequest(f"tool_choice names '{quote(str(name))}', which is not one of the tools",
                                 param=param)  # fmt: skip
        return ToolPlan(tools, required=True, forced=str(name), parallel=parallel)
    raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or a named function", param=param)


def history_calls(raw: list[dict[str, Any]] | None, param: str) -> list[worker_pb2.ToolCall]:
    """An earlier answer's calls, as both APIs send them back: ``{"id", "function": {"name",
    "arguments"}}``, the arguments a JSON string (OpenAI) or an object (Ollama)."""
    calls = []
    for i, call in enumerate(raw or ()):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f"{param}.{i} must have a function with a name", param=f"{param}.{i}")
        calls.append(worker_pb2.ToolCall(id=str(call.get("id") or ""), name=fn["name"],
                                         arguments_json=_arguments_text(fn.get("arguments"))))  # fmt: skip
    return calls


def _arguments_text(arguments: Any) -> str:
    """A call's arguments as JSON text: a string is taken as the JSON it should be."""
    if arguments is None:
        return "{}"
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


class ArgumentStream:
    """The arguments of a required call as they are generated, for streaming them in pieces: the text
    after ``"arguments":`` less the call object's own closing brace, which is held back until more
    text shows it was not the last."""

    def __init__(self) -> None:
        self.text = ""
        self.name: str | None = None
        self._start = 0
        self._sent = 0

    def feed(self, piece: str) -> tuple[str | None, str]:
        """(the function's name the first time it is known, else None; new argument text)."""
        self.text += piece
        named = None
        if self.name is None:
            head = _CALL_HEAD.match(self.text)
            if head is None:
                return None, ""
            self.name = named = json.loads(f'"{head.group(1)}"')
            self._start = head.end()
        body = self.text[self._start :].rstrip()
        end = len(body) - 1 if body.endswith("}") else len(body)
        new = body[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return named, new


def apply(request: worker_pb2.GenerateRequest, tool_plan: ToolPlan) -> None:
    """Give the worker the functions (it renders them, or adds the generic format's system text) and,
    when a call is required, constrain the answer to calls."""
    chat = request.chat
    chat.tools.extend(
        worker_pb2.Tool(name=t.name, description=t.description, parameters_json=json.dumps(t.parameters))
        for t in tool_plan.tools
    )
    chat.tools_prompt = tool_plan.system_text()
    schema = tool_plan.schema()
    if schema is not None:
        if request.response_format.kind != worker_pb2.ResponseFormat.KIND_UNSPECIFIED:
            raise InvalidRequest("a required tool call cannot be combined with a response format",
                                 param="response_format")  # fmt: skip
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
        request.response_format.json_schema = json.dumps(schema)


class Opening:
    """Whether a streamed "auto" answer is text or may be a call, from its first characters: text is
    passed on as it comes; an answer that opens like a call ('{', '[', or a model's call marker) is
    held until it ends."""

    def __init__(self) -> None:
        self._held: list[str] = []
        self._texting = False

    def feed(self, text: str) -> str:
        """What may be sent now."""
        if self._texting:
            return text
        self._held.append(text)
        so_far = "".join(self._held)
        start = so_far.lstrip()
        if not start or start[0] in "{[" or any(m.startswith(start) or start.startswith(m) for m in _MARKERS):
            return ""
        self._texting = True
        self._held.clear()
        return so_far

    def held(self) -> str:
        """The answer held back (a possible call), once it has ended."""
        return "".join(self._held)

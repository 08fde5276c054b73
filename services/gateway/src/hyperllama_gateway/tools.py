"""Tool (function) calling, shared by both APIs.

The model is told about the functions in a system message, in one generic format (the chat
templates of the models served here do not render tools), and answers a call as a JSON object
``{"name": ..., "arguments": {...}}``. When a call is required (``tool_choice`` "required" or a
named function) the answer is constrained by a JSON schema built from the functions' parameters, so
even a small model's call names a real function and its arguments validate against its schema.
With "auto" the model is free: an answer that is such an object naming a function is a call, any
other answer is text.

One call per answer: several calls at once (``parallel_tool_calls``) are not produced.
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
    them); ``required`` means the answer must be a call."""

    tools: list[Tool]
    required: bool
    forced: str = ""

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
            f"{ask}"
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
        return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}

    def parse(self, text: str) -> ToolCall | None:
        """The call an answer makes, or None for a text answer."""
        body = text.strip()
        if body.startswith("```"):  # a call in a code fence
            body = body.strip("`").removeprefix("json").strip()
        if not body.startswith("{"):
            return None
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        name, arguments = value.get("name"), value.get("arguments", value.get("parameters"))
        if not any(t.name == name for t in self.tools) or not isinstance(arguments, dict):
            return None
        return ToolCall(str(name), arguments, new_call_id())


def plan(tools: list[Tool], choice: Any, param: str = "tool_choice") -> ToolPlan | None:
    """The plan for OpenAI's ``tool_choice`` ("none", "auto", "required" or a named function; absent
    = "auto" when there are tools); None when the request uses no tools."""
    if not tools or choice == "none":
        return None
    if choice is None or choice == "auto":
        return ToolPlan(tools, required=False)
    if choice == "required":
        return ToolPlan(tools, required=True)
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not any(t.name == name for t in tools):
            raise InvalidRequest(f"tool_choice names '{quote(str(name))}', which is not one of the tools",
                                 param=param)  # fmt: skip
        return ToolPlan(tools, required=True, forced=str(name))
    raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or a named function", param=param)


def call_text(name: str, arguments: Any) -> str:
    """An earlier call as the model wrote it, for the history of a conversation."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


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
    """Tell the model about the functions (in the system message) and, when a call is required,
    constrain its answer to one."""
    messages = request.chat.messages
    text = tool_plan.system_text()
    if messages and messages[0].role == "system":
        messages[0].content = f"{messages[0].content}\n\n{text}" if messages[0].content else text
    else:
        messages.insert(0, worker_pb2.ChatMessage(role="system", content=text))
    schema = tool_plan.schema()
    if schema is not None:
        if request.response_format.kind != worker_pb2.ResponseFormat.KIND_UNSPECIFIED:
            raise InvalidRequest("a required tool call cannot be combined with a response format",
                                 param="response_format")  # fmt: skip
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
        request.response_format.json_schema = json.dumps(schema)


class Opening:
    """Whether a streamed "auto" answer is text or may be a call, from its first characters: text is
    passed on as it comes; an answer that opens with '{' is held until it ends."""

    def __init__(self) -> None:
        self._held: list[str] = []
        self._texting = False

    def feed(self, text: str) -> str:
        """What may be sent now."""
        if self._texting:
            return text
        self._held.append(text)
        so_far = "".join(self._held)
        if not so_far.strip() or so_far.lstrip().startswith("{"):
            return ""
        self._texting = True
        self._held.clear()
        return so_far

    def held(self) -> str:
        """The answer held back (a possible call), once it has ended."""
        return "".join(self._held)

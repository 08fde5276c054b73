"""Tools in a chat, as a worker hands them to its model.

A model whose chat template renders tools gets them, and the conversation's earlier calls and their
results, through that template (``structured``). Any other model gets them in one generic format
(``plain``): the gateway's tools_prompt joined to the system message, and each earlier call written as
the JSON object ``{"name": ..., "arguments": {...}}`` the gateway reads calls back in.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hyperllama.worker.v1 import worker_pb2

# Jinja templates (a GGUF's, a Hugging Face model's) name the variable `tools` inside their tags (the
# word in the template's text, "You are an assistant with tools", does not count); Ollama's Go
# templates read `.Tools`.
_JINJA_TAG = re.compile(r"\{[{%].*?[%}]\}", re.DOTALL)
_TOOLS = re.compile(r"\btools\b")


def knows_tools(template: str, go: bool = False) -> bool:
    """Whether a chat template renders a request's tools."""
    if go:
        return ".Tools" in template
    return any(_TOOLS.search(tag) for tag in _JINJA_TAG.findall(template))


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def call_text(call: worker_pb2.ToolCall) -> str:
    """An earlier call as the generic format writes it."""
    return json.dumps({"name": call.name, "arguments": _arguments(call.arguments_json)}, ensure_ascii=False)


def plain(conversation: worker_pb2.ChatConversation) -> list[dict[str, str]]:
    """The conversation as role/content messages, tools in the generic format."""
    out = []
    for m in conversation.messages:
        content = m.content
        if m.tool_calls:
            content = "\n".join([*([content] if content else []), *(call_text(c) for c in m.tool_calls)])
        out.append({"role": m.role, "content": content})
    prompt = conversation.tools_prompt
    if prompt:
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{prompt}" if out[0]["content"] else prompt
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def tool_list(conversation: worker_pb2.ChatConversation) -> list[dict[str, Any]]:
    """The tools as chat templates and OpenAI-style engines take them."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": _arguments(t.parameters_json) or {"type": "object", "properties": {}},
            },
        }
        for t in conversation.tools
    ]


def structured(
    conversation: worker_pb2.ChatConversation, arguments_as_text: bool = False
) -> list[dict[str, Any]]:
    """The conversation as a chat template with tools reads it: an assistant's ``tool_calls`` (the
    arguments an object, as Hugging Face templates expect, or JSON text for an OpenAI-style engine),
    a tool message's ``tool_call_id`` and ``name``."""
    out: list[dict[str, Any]] = []
    for m in conversation.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.name,
                        "arguments": c.arguments_json if arguments_as_text else _arguments(c.arguments_json),
                    },
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        if m.tool_name:
            message["name"] = m.tool_name
        out.append(message)
    return out

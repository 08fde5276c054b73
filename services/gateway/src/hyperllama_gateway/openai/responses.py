"""OpenAI's Responses API (``POST /v1/responses``), stateless: a request carries its whole input, and
nothing is stored, so ``previous_response_id`` is refused and ``store`` is always false.

A response is one chat generation: ``instructions`` become the system message, ``input`` the
conversation, ``text.format`` the response format. Streaming sends the Responses event types in
their order (created, in_progress, output_item.added, content_part.added, output_text.delta ...,
output_text.done, content_part.done, output_item.done, completed), each with its sequence number.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import HyperLlamaError, InvalidRequest, quote
from pydantic import BaseModel, ConfigDict, Field

from hyperllama_gateway import tools
from hyperllama_gateway.generation import Generation, Result, apply_final
from hyperllama_gateway.limits import MAX_MESSAGES, MAX_TOKENS_LIMIT, Float32, JsonSchema, ModelName
from hyperllama_gateway.openai.service import OPENAI_DEFAULTS
from hyperllama_gateway.wellformed import RequestBody

log = logging.getLogger(__name__)

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Part):
    type: str
    text: str | None = None


class InputItem(_Part):
    type: str = "message"
    role: str | None = None
    content: str | list[ContentPart] | None = None
    # An earlier function call ("function_call") and its result ("function_call_output").
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None


class TextFormat(_Part):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: JsonSchema | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextOptions(_Part):
    format: TextFormat | None = None


class ResponsesRequest(RequestBody):
    model: ModelName
    input: str | list[InputItem] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: Float32 | None = Field(default=None, ge=0, le=2)
    top_p: Float32 | None = Field(default=None, ge=0, le=1)
    text: TextOptions | None = None
    stream: bool = False
    previous_response_id: str | None = None
    store: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None


def _item_text(item: InputItem, i: int) -> str:
    if item.content is None or isinstance(item.content, str):
        return item.content or ""
    parts = []
    for j, part in enumerate(item.content):
        if part.type not in ("input_text", "output_text", "text"):
            raise InvalidRequest(
                f"input[{i}].content[{j}].type '{quote(part.type)}' is not supported; only text is",
                param=f"input.{i}.content.{j}.type",
            )
        parts.append(part.text or "")
    return "".join(parts)


def generate_request(body: ResponsesRequest, request_id: str) -> worker_pb2.GenerateRequest:
    if body.previous_response_id:
        raise InvalidRequest(
            "previous_response_id is not supported: responses are not stored; send the whole "
            "conversation as input",
            param="previous_response_id",
        )
    messages = [worker_pb2.ChatMessage(role="system", content=body.instructions)] if body.instructions else []
    if isinstance(body.input, str):
        messages.append(worker_pb2.ChatMessage(role="user", content=body.input))
    else:
        if len(body.input) > MAX_MESSAGES:
            raise InvalidRequest(f"input holds at most {MAX_MESSAGES} items", param="input")
        for i, item in enumerate(body.input):
            if item.type == "function_call":
                call = worker_pb2.ToolCall(id=item.call_id or "", name=item.name or "",
                                           arguments_json=item.arguments or "{}")  # fmt: skip
                if messages and messages[-1].role == "assistant" and messages[-1].tool_calls:
                    messages[-1].tool_calls.append(call)  # parallel calls are one assistant turn
                else:
                    messages.append(worker_pb2.ChatMessage(role="assistant", tool_calls=[call]))
                continue
            if item.type == "function_call_output":
                messages.append(
                    worker_pb2.ChatMessage(
                        role="tool", content=item.output or "", tool_call_id=item.call_id or ""
                    )
                )
                continue
            role = _ROLES.get(item.role or "")
            if item.type != "message" or role is None:
                raise InvalidRequest(
                    f"input[{i}] must be a message with role user, assistant, system or developer "
                    f"(got type '{quote(item.type)}', role '{quote(item.role or '')}')",
                    param=f"input.{i}",
                )
            messages.append(worker_pb2.ChatMessage(role=role, content=_item_text(item, i)))
    sampling = worker_pb2.SamplingParams()
    for field, value in (
        ("temperature", body.temperature),
        ("top_p", body.top_p),
        ("max_tokens", body.max_output_tokens),
    ):
        if value is not None:
            setattr(sampling, field, value)
    request = worker_pb2.GenerateRequest(
        request_id=request_id,
        model=body.model,
        chat=worker_pb2.ChatConversation(messages=messages),
        sampling=sampling,
        defaults=OPENAI_DEFAULTS,
    )
    fmt = body.text.format if body.text else None
    if fmt is not None and fmt.type == "json_object":
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_OBJECT
    elif fmt is not None and fmt.type == "json_schema":
        if not fmt.schema_:
            raise InvalidRequest("text.format.schema is required for json_schema", param="text.format.schema")
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
        request.response_format.json_schema = json.dumps(fmt.schema_)
    plan = tool_plan(body)
    if plan is not None:
        tools.apply(request, plan)
    return request


def tool_plan(body: ResponsesRequest) -> tools.ToolPlan | None:
    """The Responses API's tools are flat ({"type": "function", "name", "parameters"}) and so is a
    named tool_choice ({"type": "function", "name"}): read as the chat API's."""
    as_chat = [
        {"type": t.get("type"), "function": {k: v for k, v in t.items() if k != "type"}}
        for t in body.tools or []
    ]
    choice = body.tool_choice
    if isinstance(choice, dict) and "name" in choice:
        choice = {"type": "function", "function": {"name": choice["name"]}}
    return tools.plan(tools.parse_tools(as_chat), choice, parallel=body.parallel_tool_calls)


class ResponseBuilder:
    """The response object as it stands, for the final answer and for every streamed event."""

    def __init__(self, body: ResponsesRequest, request_id: str):
        self.body = body
        self.id = f"resp_{request_id}"
        self.item_id = f"msg_{request_id}"
        self.created_at = int(time.time())

    def item(self, text: str, status: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant",
                "content": content}  # fmt: skip

    def call_item(self, call: tools.ToolCall, status: str) -> dict[str, Any]:
        arguments = call.arguments_json() if status == "completed" else ""
        return {"id": f"fc_{call.id.removeprefix('call_')}", "type": "function_call", "status": status,
                "call_id": call.id, "name": call.name, "arguments": arguments}  # fmt: skip

    def response(
        self, result: Result | None, text: str = "", calls: list[tools.ToolCall] | None = None
    ) -> dict[str, Any]:
        body = self.body
        fmt = body.text.format if body.text and body.text.format else None
        done = result is not None
        incomplete = done and result is not None and result.finish_reason == "length"
        status = "in_progress" if not done else ("incomplete" if incomplete else "completed")
        output = []
        if done:
            output = (
                [self.call_item(c, "completed") for c in calls] if calls else [self.item(text, "completed")]
            )
        out: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": body.model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": body.temperature if body.temperature is not None else 1.0,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": body.tools or [],
            "top_p": body.top_p if body.top_p is not None else 1.0,
            "truncation": "disabled",
            "usage": None,
            "user": body.user,
            "metadata": body.metadata or {},
        }
        if result is not None:
            out["output_text"] = "" if calls else text
            out["usage"] = {
                "input_tokens": result.prompt_tokens,
                "input_tokens_details": {"cached_tokens": result.cached_prompt_tokens},
                "output_tokens": result.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            }
        return out


def finished(result: Result, plan: tools.ToolPlan | None) -> list[tools.ToolCall]:
    """The calls a finished answer makes (only with tools, and only an answer that ended by itself)."""
    return plan.parse(result.text) if plan is not None and result.finish_reason == "stop" else []


async def event_stream(
    gen: Generation, builder: ResponseBuilder, plan: tools.ToolPlan | None = None
) -> AsyncIterator[bytes]:
    """The Responses streaming events; a failure is one ``error`` event, the stream's last. With
    tools, an answer that may be a call is held until it ends (tools.Opening), then sent as a
    function call's events or as text."""
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    where = {"item_id": builder.item_id, "output_index": 0, "content_index": 0}
    result = Result()
    parts: list[str] = []
    try:
        yield event("response.created", response=builder.response(None))
        yield event("response.in_progress", response=builder.response(None))
        opening = tools.Opening() if plan is not None else None
        started = False
        async for chunk in gen.events():
            if isinstance(chunk, scheduler_pb2.QueuePosition):
                continue
            piece = opening.feed(chunk.text) if opening is not None and chunk.text else chunk.text
            if piece and not started:
                started = True
                yield event(
                    "response.output_item.added", output_index=0, item=builder.item("", "in_progress")
                )
                yield event("response.content_part.added", **where, part={"type": "output_text", "text": "",
                                                                          "annotations": []})  # fmt: skip
            if piece:
                parts.append(piece)
                yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
            apply_final(result, chunk)
        held = opening.held() if opening is not None else ""
        result.text = "".join(parts) + held
        calls = finished(result, plan) if held else []
        if calls:
            for index, call in enumerate(calls):
                yield event(
                    "response.output_item.added",
                    output_index=index,
                    item=builder.call_item(call, "in_progress"),
                )
                fc = {"item_id": builder.call_item(call, "completed")["id"], "output_index": index}
                yield event("response.function_call_arguments.delta", **fc, delta=call.arguments_json())
                yield event("response.function_call_arguments.done", **fc, arguments=call.arguments_json())
                yield event(
                    "response.output_item.done", output_index=index, item=builder.call_item(call, "completed")
                )
            final = builder.response(result, "", calls)
            yield event(f"response.{final['status']}", response=final)
            return
        if not started:
            yield event("response.output_item.added", output_index=0, item=builder.item("", "in_progress"))
            yield event("response.content_part.added", **where, part={"type": "output_text", "text": "",
                                                                      "annotations": []})  # fmt: skip
        if held:
            parts.append(held)
            yield event("response.output_text.delta", **where, delta=held, logprobs=[])
        text = "".join(parts)
        yield event("response.output_text.done", **where, text=text, logprobs=[])
        yield event("response.content_part.done", **where, part={"type": "output_text", "text": text,
                                                                 "annotations": []})  # fmt: skip
        yield event("response.output_item.done", output_index=0, item=builder.item(text, "completed"))
        final = builder.response(result, text)
        yield event(f"response.{final['status']}", response=final)
    except HyperLlamaError as err:
        yield event("error", code=err.code, message=err.message, param=err.param)
    except Exception:
        log.exception("unexpected error in the stream of response %s", builder.id)
        yield event("error", code=None, message="internal error; the stream was cut short", param=None)

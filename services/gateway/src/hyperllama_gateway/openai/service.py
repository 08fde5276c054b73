"""Translation between OpenAI requests/responses and HyperLlama's internal generation."""

from __future__ import annotations

import base64
import json
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import HyperLlamaError, InvalidRequest, quote

from hyperllama_gateway.errors import openai_error_event
from hyperllama_gateway.generation import Generation, Result, apply_final
from hyperllama_gateway.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    _Sampling,
)

log = logging.getLogger(__name__)

# OpenAI's "developer" role is the system role of newer models.
_ROLE_ALIASES = {"developer": "system"}
_ROLES = {"system", "user", "assistant", "tool"}


def sampling_params(body: _Sampling, max_tokens: int | None) -> worker_pb2.SamplingParams:
    params = worker_pb2.SamplingParams(stop=body.stops(), ignore_eos=body.ignore_eos)
    for field, value in (
        ("temperature", body.temperature),
        ("top_p", body.top_p),
        ("top_k", body.top_k),
        ("min_p", body.min_p),
        ("seed", body.seed),
        ("max_tokens", max_tokens),
        ("presence_penalty", body.presence_penalty),
        ("frequency_penalty", body.frequency_penalty),
        ("repeat_penalty", body.repetition_penalty),
    ):
        if value is not None:
            setattr(params, field, value)
    return params


def chat_request(body: ChatCompletionRequest, request_id: str) -> worker_pb2.GenerateRequest:
    messages = []
    for i, m in enumerate(body.messages):
        role = _ROLE_ALIASES.get(m.role, m.role)
        if role not in _ROLES:
            raise InvalidRequest(
                f"messages[{i}].role '{quote(m.role)}' is not one of "
                "system, developer, user, assistant, tool",
                param=f"messages.{i}.role",
            )
        try:
            messages.append(worker_pb2.ChatMessage(role=role, content=m.text()))
        except ValueError as err:
            raise InvalidRequest(f"messages[{i}].content: {err}", param=f"messages.{i}.content") from None
    request = worker_pb2.GenerateRequest(
        request_id=request_id,
        model=body.model,
        chat=worker_pb2.ChatConversation(messages=messages),
        sampling=sampling_params(body, body.max_completion_tokens or body.max_tokens),
    )
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_OBJECT
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or not fmt.json_schema.schema_:
            raise InvalidRequest("response_format.json_schema.schema is required", param="response_format")
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
        request.response_format.json_schema = json.dumps(fmt.json_schema.schema_)
    return request


def completion_request(body: CompletionRequest, request_id: str) -> worker_pb2.GenerateRequest:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return worker_pb2.GenerateRequest(
        request_id=request_id,
        model=body.model,
        prompt=prompt,
        sampling=sampling_params(body, body.max_tokens),
    )


def usage(result: Result) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens},
    }


def chat_completion(gen: Generation, result: Result, request_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": gen.created,
        "model": gen.request.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(result),
    }


def text_completion(gen: Generation, result: Result, request_id: str, echo: bool) -> dict[str, Any]:
    text = (gen.request.prompt + result.text) if echo else result.text
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": gen.created,
        "model": gen.request.model,
        "choices": [{"index": 0, "text": text, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": usage(result),
    }


def queued_comment(position: scheduler_pb2.QueuePosition) -> bytes:
    """Where a waiting request stands, as an SSE comment line: every SSE client skips comments.
    ``position`` counts from 1 (next in line); ``eta_ms`` is left out until the scheduler has seen
    enough streams end to estimate it."""
    eta = f" eta_ms={position.eta_ms}" if position.eta_ms > 0 else ""
    return f": queued position={position.position + 1}{eta}\n\n".encode()


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def sse_stream(
    gen: Generation, request_id: str, include_usage: bool, chat: bool, echo: bool = False
) -> AsyncIterator[bytes]:
    """SSE events for a chat or text completion; ends with ``[DONE]`` or one error event."""
    base: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{request_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": gen.created,
        "model": gen.request.model,
    }
    extra = {"usage": None} if include_usage else {}

    def event(text: str | None, finish: str | None, first: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else {}
            if text and not first:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return _sse({**base, "choices": [choice], **extra})

    result = Result()
    try:
        first = True
        if echo:
            yield event(gen.request.prompt, None)
            first = False
        async for chunk in gen.events():
            if isinstance(chunk, scheduler_pb2.QueuePosition):
                yield queued_comment(chunk)
                continue
            if chunk.text or first:
                yield event(chunk.text, None, first=first)
                first = False
            if apply_final(result, chunk):
                yield event(None, result.finish_reason)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": usage(result)})
        yield b"data: [DONE]\n\n"
    except HyperLlamaError as err:
        yield _sse(openai_error_event(err))
    except Exception:
        # Headers are out: the stream's one terminal marker is an error event, not a dropped connection.
        log.exception("unexpected error in the stream of request %s", request_id)
        yield _sse(openai_error_event(HyperLlamaError("internal error; the stream was cut short")))


def embedding_request(body: EmbeddingRequest, request_id: str) -> worker_pb2.EmbedRequest:
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)
    return worker_pb2.EmbedRequest(request_id=request_id, model=body.model, inputs=inputs, truncate=False)


def embedding_response(body: EmbeddingRequest, response: worker_pb2.EmbedResponse) -> dict[str, Any]:
    data = []
    for i, emb in enumerate(response.embeddings):
        values: Any = list(emb.values)
        if body.encoding_format == "base64":
            values = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": values})
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": response.prompt_tokens, "total_tokens": response.prompt_tokens},
    }

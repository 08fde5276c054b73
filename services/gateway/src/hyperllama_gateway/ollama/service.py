"""Translation between Ollama requests/responses and HyperLlama's internal generation."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import HyperLlamaError, InvalidRequest, quote

from hyperllama_gateway import logprobs, tools
from hyperllama_gateway.generation import Generation, Result, apply_final
from hyperllama_gateway.ollama.protocol import ChatRequest, Format, GenerateRequest, Options

log = logging.getLogger(__name__)

_ROLES = {"system", "user", "assistant", "tool"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Ollama's defaults for what neither a request nor the model's parameters set (its api.DefaultOptions;
# repeat_last_n 64 is the workers' own).
OLLAMA_DEFAULTS = worker_pb2.SamplingParams(
    temperature=0.8,
    top_k=40,
    top_p=0.9,
    min_p=0.0,
    repeat_penalty=1.1,
    frequency_penalty=0.0,
    presence_penalty=0.0,
)


def sampling_params(options: Options | None) -> tuple[worker_pb2.SamplingParams, int]:
    params = worker_pb2.SamplingParams()
    if options is None:
        return params, 0
    for field, value in (
        ("temperature", options.temperature),
        ("top_k", options.top_k),
        ("top_p", options.top_p),
        ("min_p", options.min_p),
        ("seed", options.seed),
        ("repeat_penalty", options.repeat_penalty),
        ("frequency_penalty", options.frequency_penalty),
        ("presence_penalty", options.presence_penalty),
    ):
        if value is not None:
            setattr(params, field, value)
    if options.num_predict is not None and options.num_predict >= 0:
        params.max_tokens = options.num_predict
    if options.stop:
        params.stop.extend([options.stop] if isinstance(options.stop, str) else options.stop)
    return params, options.num_ctx or 0


def _apply_logprobs(request: worker_pb2.GenerateRequest, body: GenerateRequest | ChatRequest) -> None:
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    if body.logprobs:
        request.sampling.logprobs = True
        request.sampling.top_logprobs = body.top_logprobs or 0


def _apply_format(request: worker_pb2.GenerateRequest, fmt: Format) -> None:
    if fmt == "json":
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_OBJECT
    elif isinstance(fmt, dict):
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
        request.response_format.json_schema = json.dumps(fmt)


def check_unsupported(model: str, think: bool | None, suffix: str | None = None) -> None:
    """What Ollama refuses for a model that cannot do it, refused the same way (no model served
    here thinks, and none has a template that renders a suffix)."""
    if think:
        raise InvalidRequest(f'"{quote(model)}" does not support thinking', param="think")
    if suffix:
        raise InvalidRequest(f'"{quote(model)}" does not support insert', param="suffix")


def generate_request(body: GenerateRequest, request_id: str) -> worker_pb2.GenerateRequest:
    check_unsupported(body.model, body.think, body.suffix)
    if body.images:
        raise InvalidRequest("image input is not supported by this model")
    sampling, num_ctx = sampling_params(body.options)
    request = worker_pb2.GenerateRequest(
        request_id=request_id, model=body.model, sampling=sampling, num_ctx=num_ctx, defaults=OLLAMA_DEFAULTS
    )
    if body.raw:
        request.prompt = body.prompt  # as Ollama: a raw prompt neither takes nor gives a context
    else:
        messages = [worker_pb2.ChatMessage(role="system", content=body.system)] if body.system else []
        messages.append(worker_pb2.ChatMessage(role="user", content=body.prompt))
        request.chat.messages.extend(messages)
        request.context.extend(body.context or ())
        request.return_context = True
    _apply_format(request, body.format)
    _apply_logprobs(request, body)
    return request


def chat_request(body: ChatRequest, request_id: str) -> worker_pb2.GenerateRequest:
    check_unsupported(body.model, body.think)
    messages = []
    for i, m in enumerate(body.messages):
        if m.role not in _ROLES:
            raise InvalidRequest(
                f"messages[{i}].role '{quote(m.role)}' is not one of system, user, assistant, tool",
                param=f"messages.{i}.role",
            )
        if m.images:
            raise InvalidRequest("image input is not supported by this model")
        messages.append(
            worker_pb2.ChatMessage(
                role=m.role,
                content=m.content,
                tool_calls=tools.history_calls(m.tool_calls, f"messages.{i}.tool_calls"),
                tool_name=m.tool_name or "",
                tool_call_id=m.tool_call_id or "",
            )
        )
    sampling, num_ctx = sampling_params(body.options)
    request = worker_pb2.GenerateRequest(
        request_id=request_id,
        model=body.model,
        chat=worker_pb2.ChatConversation(messages=messages),
        sampling=sampling,
        num_ctx=num_ctx,
        defaults=OLLAMA_DEFAULTS,
    )
    _apply_format(request, body.format)
    _apply_logprobs(request, body)
    plan = tool_plan(body)
    if plan is not None:
        tools.apply(request, plan)
    return request


def tool_plan(body: ChatRequest) -> tools.ToolPlan | None:
    """Ollama has no tool_choice: with tools, the model decides between text and a call."""
    return tools.plan(tools.parse_tools(body.tools), "auto")


def tool_message(calls: list[tools.ToolCall]) -> dict[str, Any]:
    listed = [{"id": c.id, "function": {"index": i, "name": c.name, "arguments": c.arguments}}
              for i, c in enumerate(calls)]  # fmt: skip
    return {"role": "assistant", "content": "", "tool_calls": listed}


def tool_response(gen: Generation, result: Result, plan: tools.ToolPlan) -> dict[str, Any]:
    answer = response(gen, result, chat=True)
    calls = plan.parse(result.text) if result.finish_reason == "stop" else []
    if calls:
        answer["message"] = tool_message(calls)
    return answer


async def tool_ndjson_stream(gen: Generation, plan: tools.ToolPlan) -> AsyncIterator[bytes]:
    """As ``ndjson_stream``, but an answer that opens like a call is held until it ends, then sent as
    one message with its calls (as Ollama sends calls) or as text."""
    result = Result()
    opening = tools.Opening()
    try:
        async for chunk in gen.chunks():
            text = opening.feed(chunk.text) if chunk.text else ""
            if text:
                yield _line({"model": gen.request.model, "created_at": now(), **_text_field(True, text),
                             "done": False})  # fmt: skip
            if apply_final(result, chunk):
                held = opening.held()
                if held:
                    calls = plan.parse(held) if result.finish_reason == "stop" else []
                    message = tool_message(calls) if calls else {"role": "assistant", "content": held}
                    yield _line({"model": gen.request.model, "created_at": now(), "message": message,
                                 "done": False})  # fmt: skip
                yield _line({"model": gen.request.model, "created_at": now(), **_text_field(True, ""),
                             **final_fields(gen, result)})  # fmt: skip
    except HyperLlamaError as err:
        yield _line({"error": err.message})
    except Exception:
        log.exception("unexpected error in the stream of request %s", gen.request.request_id)
        yield _line({"error": "internal error; the stream was cut short"})


def embed_request(
    model: str, inputs: str | list[str], truncate: bool, request_id: str
) -> worker_pb2.EmbedRequest:
    items = [inputs] if isinstance(inputs, str) else inputs
    if not items or any(not s for s in items):
        raise InvalidRequest("input must be a non-empty string or a list of non-empty strings", param="input")
    return worker_pb2.EmbedRequest(request_id=request_id, model=model, inputs=items, truncate=truncate)


def final_fields(gen: Generation, result: Result) -> dict[str, Any]:
    t = result.timings
    # /api/generate's exchange as tokens, to send back as the next request's context.
    context = {"context": result.context} if result.context else {}
    return {
        "done": True,
        "done_reason": result.finish_reason,
        **context,
        "total_duration": gen.total_duration_ns(),
        "load_duration": t.load_duration_ns,
        "prompt_eval_count": result.prompt_tokens,
        "prompt_eval_duration": t.prompt_eval_duration_ns,
        "eval_count": result.completion_tokens,
        "eval_duration": t.eval_duration_ns,
    }


def _text_field(chat: bool, text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}} if chat else {"response": text}


def response(gen: Generation, result: Result, chat: bool) -> dict[str, Any]:
    answer = {
        "model": gen.request.model,
        "created_at": now(),
        **_text_field(chat, result.text),
        **final_fields(gen, result),
    }
    if gen.request.sampling.logprobs:
        answer["logprobs"] = logprobs.token_entries(result.logprobs)
    return answer


def load_response(model: str, chat: bool, reason: str) -> dict[str, Any]:
    """Ollama's answer to a request with nothing to generate: the model is loaded ("load") or
    unloaded ("unload")."""
    return {"model": model, "created_at": now(), **_text_field(chat, ""), "done": True, "done_reason": reason}


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


async def ndjson_stream(gen: Generation, chat: bool) -> AsyncIterator[bytes]:
    """NDJSON lines; the last has ``done: true``, or a single ``{"error": ...}`` line ends it."""
    result = Result()
    try:
        async for chunk in gen.chunks():
            if chunk.text:
                line = {"model": gen.request.model, "created_at": now(), **_text_field(chat, chunk.text),
                        "done": False}  # fmt: skip
                if chunk.logprobs:
                    line["logprobs"] = logprobs.token_entries(chunk.logprobs)
                yield _line(line)
            if apply_final(result, chunk):
                yield _line(
                    {
                        "model": gen.request.model,
                        "created_at": now(),
                        **_text_field(chat, ""),
                        **final_fields(gen, result),
                    }
                )
    except HyperLlamaError as err:
        yield _line({"error": err.message})
    except Exception:
        # Headers are out: the stream's one terminal marker is an error line, not a dropped connection.
        log.exception("unexpected error in the stream of request %s", gen.request.request_id)
        yield _line({"error": "internal error; the stream was cut short"})


def model_details(info: worker_pb2.ModelInfo) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": info.format,
        "family": info.family,
        "families": [info.family] if info.family else None,
        "parameter_size": info.parameter_size,
        "quantization_level": info.quantization_level,
    }


def _modified_at(info: worker_pb2.ModelInfo) -> str:
    return datetime.fromtimestamp(info.modified_at_unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tag_entry(info: worker_pb2.ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "model": info.name,
        "modified_at": _modified_at(info),
        "size": info.size_bytes,
        "digest": info.digest.removeprefix("sha256:"),
        "details": model_details(info),
    }


_FOREVER = "2318-01-01T00:00:00Z"  # what Ollama shows for a model kept loaded forever


def _expires_at(unix_ms: int) -> str:
    if not unix_ms:
        return _FOREVER
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ps_entry(entry: scheduler_pb2.ModelEntry) -> dict[str, Any]:
    """One loaded model, cluster-wide: Ollama's fields, then where its copies run."""
    info = entry.info
    ready = [p for p in entry.placements if p.state == scheduler_pb2.COPY_STATE_READY]
    expiries = [p.expires_at_unix_ms for p in entry.placements]
    return {
        **tag_entry(info),
        "size": max((p.memory_bytes for p in entry.placements), default=0) or info.size_bytes,
        # The copy that stays longest decides when the model is gone from the cluster.
        "expires_at": _expires_at(0 if not expiries or 0 in expiries else max(expiries)),
        "size_vram": 0,
        "context_length": info.context_length,
        "state": "ready" if ready else "loading",
        "workers": list(entry.worker_ids),
        "placements": [
            {
                "worker": p.worker_id,
                "engine": p.engine,
                "pool": p.pool,
                "state": "ready" if p.state == scheduler_pb2.COPY_STATE_READY else "loading",
                "slots_in_use": p.slots_leased,
                "slots_total": p.slots_total,
                "size": p.memory_bytes,
                "expires_at": _expires_at(p.expires_at_unix_ms),
            }
            for p in entry.placements
        ],
        # The same figures as /api/queue: slots leased to running streams, slots, requests waiting.
        "slots_in_use": entry.slots_leased,
        "slots_total": entry.slots_total,
        "queued": entry.queue_depth,
    }


def show(entry: scheduler_pb2.ModelEntry) -> dict[str, Any]:
    info = entry.info
    model_info: dict[str, Any] = {}
    for key, value in info.metadata.items():
        model_info[key] = int(value) if value.isdigit() else value
    model_info[f"{info.family}.context_length"] = info.context_length
    model_info["general.parameter_count"] = info.parameter_count
    return {
        "license": info.metadata.get("general.license", ""),
        "modelfile": f"FROM {info.name}\n",
        "parameters": "",
        "template": info.chat_template,
        "details": model_details(info),
        "model_info": model_info,
        "capabilities": ["completion", "embedding", "tools"],
        "modified_at": _modified_at(info),
    }

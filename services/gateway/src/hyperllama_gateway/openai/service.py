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

from hyperllama_gateway import logprobs, tools
from hyperllama_gateway.choices import ChoiceEvents
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


# OpenAI's defaults for what neither a request nor the model's parameters set: plain sampling at
# temperature 1, no top-k, min-p or repetition penalty.
OPENAI_DEFAULTS = worker_pb2.SamplingParams(
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    min_p=0.0,
    repeat_penalty=1.0,
    frequency_penalty=0.0,
    presence_penalty=0.0,
)


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
    for token, bias in (body.logit_bias or {}).items():
        params.logit_bias[int(token)] = bias
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
            content = m.text()
        except ValueError as err:
            raise InvalidRequest(f"messages[{i}].content: {err}", param=f"messages.{i}.content") from None
        messages.append(
            worker_pb2.ChatMessage(
                role=role,
                content=content,
                tool_calls=tools.history_calls(m.tool_calls, f"messages.{i}.tool_calls"),
                tool_call_id=m.tool_call_id or "",
                tool_name=m.name or "" if role == "tool" else "",
            )
        )
    request = worker_pb2.GenerateRequest(
        request_id=request_id,
        model=body.model,
        chat=worker_pb2.ChatConversation(messages=messages),
        sampling=sampling_params(body, body.max_completion_tokens or body.max_tokens),
        defaults=OPENAI_DEFAULTS,
    )
    if body.logprobs:
        request.sampling.logprobs = True
        request.sampling.top_logprobs = body.top_logprobs or 0
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_OBJECT
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or not fmt.json_schema.schema_:
            raise InvalidRequest("response_format.json_schema.schema is required", param="response_format")
        request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
        request.response_format.json_schema = json.dumps(fmt.json_schema.schema_)
    plan = tool_plan(body)
    if plan is not None:
        tools.apply(request, plan)
    return request


def tool_plan(body: ChatCompletionRequest) -> tools.ToolPlan | None:
    plan = tools.plan(tools.parse_tools(body.tools), body.tool_choice, parallel=body.parallel_tool_calls)
    if plan is not None and body.n > 1:
        raise InvalidRequest("n > 1 cannot be combined with tools", param="n")
    return plan


def tool_call_json(call: tools.ToolCall, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": call.id, "type": "function",
                           "function": {"name": call.name, "arguments": call.arguments_json()}}  # fmt: skip
    if index is not None:
        out["index"] = index
    return out


def chat_tool_completion(
    gen: Generation, result: Result, plan: tools.ToolPlan, request_id: str
) -> dict[str, Any]:
    """A chat completion whose answer may be a call: ``message.tool_calls`` and finish_reason
    "tool_calls" when it is."""
    response = chat_completion([gen], [result], request_id)
    calls = plan.parse(result.text) if result.finish_reason == "stop" else []
    if calls:
        choice = response["choices"][0]
        choice["message"] = {"role": "assistant", "content": None,
                             "tool_calls": [tool_call_json(call) for call in calls]}  # fmt: skip
        choice["finish_reason"] = "tool_calls"
    return response


async def tool_sse_stream(
    gen: Generation, plan: tools.ToolPlan, request_id: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """A chat stream that may be calls. One required call streams its arguments in pieces as they are
    generated (several, an array, are sent once it ends); with "auto" an answer that opens like a call
    is held until it ends, then sent as calls or as text."""
    base: dict[str, Any] = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk",
                            "created": gen.created, "model": gen.request.model}  # fmt: skip
    extra = {"usage": None} if include_usage else {}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _sse({**base, "choices": [choice], **extra})

    result = Result()
    arguments = tools.ArgumentStream()
    call_id = tools.new_call_id()
    opening = tools.Opening()
    try:
        yield event({"role": "assistant", "content": None if plan.required else ""})
        async for chunk in gen.chunks():
            text = chunk.text
            if plan.required and text:
                name, piece = arguments.feed(text)
                if arguments.name is None:
                    opening.feed(text)  # an array of calls: held until it ends
                if name is not None:
                    yield event({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                                 "function": {"name": name, "arguments": ""}}]})  # fmt: skip
                if piece:
                    yield event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            elif text:
                sendable = opening.feed(text)
                if sendable:
                    yield event({"content": sendable})
            apply_final(result, chunk)
        finish = result.finish_reason
        held = opening.held()
        if plan.required and arguments.name is not None and finish == "stop":
            finish = "tool_calls"
        elif held:
            calls = plan.parse(held) if finish == "stop" else []
            if not calls:
                yield event({"content": held})
            else:
                yield event({"tool_calls": [tool_call_json(call, i) for i, call in enumerate(calls)]})
                finish = "tool_calls"
        yield event({}, finish)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": usage(result)})
        yield b"data: [DONE]\n\n"
    except HyperLlamaError as err:
        yield _sse(openai_error_event(err))
    except Exception:
        log.exception("unexpected error in the stream of request %s", request_id)
        yield _sse(openai_error_event(HyperLlamaError("internal error; the stream was cut short")))


def completion_requests(body: CompletionRequest, request_id: str) -> list[worker_pb2.GenerateRequest]:
    """One generation per prompt, ``n`` per prompt, in the order of their choice indexes."""
    request = worker_pb2.GenerateRequest(request_id=request_id, model=body.model, defaults=OPENAI_DEFAULTS,
                                         sampling=sampling_params(body, body.max_tokens))  # fmt: skip
    if body.logprobs is not None:
        request.sampling.logprobs = True
        request.sampling.top_logprobs = body.logprobs
    choices = []
    for p, prompt in enumerate(body.prompts()):
        if body.echo and not isinstance(prompt, str):
            raise InvalidRequest("echo needs the prompt as text, not token ids", param="echo")
        for i, one in enumerate(choice_requests(request, body.n)):
            if p:
                one.request_id = f"{request_id}-p{p}" + (f"-{i}" if i else "")
            if isinstance(prompt, str):
                one.prompt = prompt
            else:
                one.tokens.ids.extend(prompt)
            choices.append(one)
    return choices


def choice_requests(request: worker_pb2.GenerateRequest, n: int) -> list[worker_pb2.GenerateRequest]:
    """``n`` copies of a request, one per choice: each its own request id (the first keeps the
    request's) and, with a seed, its own seed, so that choices differ and each is reproducible."""
    copies = []
    for i in range(n):
        one = worker_pb2.GenerateRequest()
        one.CopyFrom(request)
        if i:
            one.request_id = f"{request.request_id}-{i}"
            if request.sampling.HasField("seed"):
                one.sampling.seed = request.sampling.seed + i
        copies.append(one)
    return copies


def usage(result: Result) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens},
    }


def total_usage(results: list[Result], n: int) -> dict[str, Any]:
    """Usage of a request's choices: each prompt counted once (``n`` choices share one), every
    choice's completion."""
    prompts = results[::n]
    total = Result(
        prompt_tokens=sum(r.prompt_tokens for r in prompts),
        completion_tokens=sum(r.completion_tokens for r in results),
        cached_prompt_tokens=sum(r.cached_prompt_tokens for r in prompts),
    )
    return usage(total)


def chat_completion(gens: list[Generation], results: list[Result], request_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": gens[0].created,
        "model": gens[0].request.model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": logprobs.chat(result.logprobs) if gen.request.sampling.logprobs else None,
            }
            for i, (gen, result) in enumerate(zip(gens, results, strict=True))
        ],
        "usage": total_usage(results, len(results)),
    }


def text_completion(
    gens: list[Generation], results: list[Result], request_id: str, echo: bool, n: int
) -> dict[str, Any]:
    choices = []
    for i, (gen, result) in enumerate(zip(gens, results, strict=True)):
        text = (gen.request.prompt + result.text) if echo else result.text
        found = None
        if gen.request.sampling.logprobs:
            found = logprobs.completion(result.logprobs, len(text) - len(result.text))
        choices.append({"index": i, "text": text, "finish_reason": result.finish_reason, "logprobs": found})
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": gens[0].created,
        "model": gens[0].request.model,
        "choices": choices,
        "usage": total_usage(results, n),
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
    gens: list[Generation],
    events: ChoiceEvents,
    request_id: str,
    include_usage: bool,
    chat: bool,
    echo: bool = False,
    n: int = 1,
) -> AsyncIterator[bytes]:
    """SSE events for a chat or text completion (each choice's with its ``index``); ends with
    ``[DONE]`` or one error event."""
    base: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{request_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": gens[0].created,
        "model": gens[0].request.model,
    }
    extra = {"usage": None} if include_usage else {}

    wants_logprobs = gens[0].request.sampling.logprobs
    offsets = [0] * len(gens)

    def event(index: int, text: str | None, finish: str | None, first: bool = False,
              entries: Any = ()) -> bytes:  # fmt: skip
        found = None
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else {}
            if text and not first:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta}
            if wants_logprobs and entries:
                found = logprobs.chat(entries)
        else:
            choice = {"index": index, "text": text or ""}
            if wants_logprobs and entries:
                found = logprobs.completion(entries, offsets[index])
            offsets[index] += len(text or "")
        choice.update(finish_reason=finish, logprobs=found)
        return _sse({**base, "choices": [choice], **extra})

    results = [Result() for _ in gens]
    first = [True] * len(gens)
    try:
        if echo:
            for i, gen in enumerate(gens):
                yield event(i, gen.request.prompt, None)
                first[i] = False
        async for index, chunk in events:
            if isinstance(chunk, scheduler_pb2.QueuePosition):
                yield queued_comment(chunk)
                continue
            if chunk.text or first[index]:
                yield event(index, chunk.text, None, first=first[index], entries=chunk.logprobs)
                first[index] = False
            if apply_final(results[index], chunk):
                yield event(index, None, results[index].finish_reason)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": total_usage(results, n)})
        yield b"data: [DONE]\n\n"
    except HyperLlamaError as err:
        yield _sse(openai_error_event(err))
    except Exception:
        # Headers are out: the stream's one terminal marker is an error event, not a dropped connection.
        log.exception("unexpected error in the stream of request %s", request_id)
        yield _sse(openai_error_event(HyperLlamaError("internal error; the stream was cut short")))


def embedding_request(body: EmbeddingRequest, request_id: str) -> worker_pb2.EmbedRequest:
    request = worker_pb2.EmbedRequest(request_id=request_id, model=body.model, truncate=False)
    tokens = body.token_inputs()
    if tokens:
        request.token_inputs.extend(worker_pb2.TokenPrompt(ids=t) for t in tokens)
    else:
        request.inputs.extend([body.input] if isinstance(body.input, str) else body.input)  # type: ignore[arg-type]
    return request


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

"""Thin routes of the OpenAI API; translation lives in service.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from hyperllama_common.errors import ModelNotFound

from hyperllama_gateway.deps import Engine, Priority, RequestId, Scheduler, Settings
from hyperllama_gateway.generation import Generation, until_disconnect
from hyperllama_gateway.openai import service
from hyperllama_gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

router = APIRouter(prefix="/v1")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    http: Request,
    scheduler: Scheduler,
    settings: Settings,
    request_id: RequestId,
    priority: Priority,
    engine: Engine,
) -> dict[str, Any] | StreamingResponse:
    gen = Generation(
        scheduler, service.chat_request(body, request_id), priority, settings.request_timeout_seconds, engine
    )
    await gen.start(http)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            service.sse_stream(gen, request_id, include_usage, chat=True),
            media_type="text/event-stream",
            headers=_SSE_HEADERS,
        )
    return service.chat_completion(gen, await gen.collect(http), request_id)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    http: Request,
    scheduler: Scheduler,
    settings: Settings,
    request_id: RequestId,
    priority: Priority,
    engine: Engine,
) -> dict[str, Any] | StreamingResponse:
    gen = Generation(
        scheduler,
        service.completion_request(body, request_id),
        priority,
        settings.request_timeout_seconds,
        engine,
    )
    await gen.start(http)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            service.sse_stream(gen, request_id, include_usage, chat=False, echo=body.echo),
            media_type="text/event-stream",
            headers=_SSE_HEADERS,
        )
    return service.text_completion(gen, await gen.collect(http), request_id, body.echo)


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest,
    http: Request,
    scheduler: Scheduler,
    settings: Settings,
    request_id: RequestId,
    engine: Engine,
) -> dict[str, Any]:
    request = service.embedding_request(body, request_id)
    response = await until_disconnect(
        http, scheduler.embed(request, settings.request_timeout_seconds, engine)
    )
    return service.embedding_response(body, response)


def _model_card(entry: Any) -> dict[str, Any]:
    return {
        "id": entry.info.name,
        "object": "model",
        "created": entry.info.modified_at_unix,
        "owned_by": "hyperllama",
    }


@router.get("/models")
async def list_models(scheduler: Scheduler) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(e) for e in await scheduler.list_models()]}


@router.get("/models/{model:path}")
async def get_model(model: str, scheduler: Scheduler) -> dict[str, Any]:
    entries = await scheduler.list_models()
    for entry in entries:
        if entry.info.name == model:
            return _model_card(entry)
    names = ", ".join(e.info.name for e in entries)
    raise ModelNotFound(f"model '{model}' not found; available models: {names}", param="model")

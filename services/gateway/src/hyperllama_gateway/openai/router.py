"""Thin routes of the OpenAI API; translation lives in service.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from hyperllama_common.errors import ModelNotFound, quote

from hyperllama_gateway.deps import CallDep, Scheduler
from hyperllama_gateway.generation import Generation, embed
from hyperllama_gateway.openai import service
from hyperllama_gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

router = APIRouter(prefix="/v1")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, call: CallDep) -> dict[str, Any] | StreamingResponse:
    call.http.state.model = body.model
    gen = Generation(call, service.chat_request(body, call.request_id), positions=bool(body.stream))
    await gen.start()
    if body.stream:
        return StreamingResponse(
            service.sse_stream(gen, call.request_id, _include_usage(body), chat=True),
            media_type="text/event-stream",
            headers=_SSE_HEADERS,
        )
    return service.chat_completion(gen, await gen.collect(), call.request_id)


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, call: CallDep) -> dict[str, Any] | StreamingResponse:
    call.http.state.model = body.model
    gen = Generation(call, service.completion_request(body, call.request_id), positions=bool(body.stream))
    await gen.start()
    if body.stream:
        return StreamingResponse(
            service.sse_stream(gen, call.request_id, _include_usage(body), chat=False, echo=body.echo),
            media_type="text/event-stream",
            headers=_SSE_HEADERS,
        )
    return service.text_completion(gen, await gen.collect(), call.request_id, body.echo)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, call: CallDep) -> dict[str, Any]:
    response = await embed(call, service.embedding_request(body, call.request_id))
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
    raise ModelNotFound(f"model '{quote(model)}' not found; available models: {names}", param="model")

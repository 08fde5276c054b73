"""Thin routes of the OpenAI API; translation lives in service.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from hyperllama_common.errors import ModelNotFound, quote

from hyperllama_gateway import catalog
from hyperllama_gateway.deps import CallDep, Scheduler, Store, TenantDep, authorize
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


def _model_card(tag: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": tag["name"],
        "object": "model",
        "created": catalog.modified_unix(tag),
        "owned_by": "hyperllama",
    }


@router.get("/models")
async def list_models(scheduler: Scheduler, store: Store, tenant: TenantDep) -> dict[str, Any]:
    tags = await catalog.all_models(scheduler, store)
    return {"object": "list", "data": [_model_card(t) for t in tags if tenant.allows(t["name"])]}


@router.get("/models/{model:path}")
async def get_model(model: str, scheduler: Scheduler, store: Store, tenant: TenantDep) -> dict[str, Any]:
    authorize(tenant, model)
    tags = [t for t in await catalog.all_models(scheduler, store) if tenant.allows(t["name"])]
    for tag in tags:
        if tag["name"] == model or catalog.name_key(tag["name"]) == catalog.name_key(model):
            return _model_card(tag)
    names = ", ".join(t["name"] for t in tags)
    raise ModelNotFound(f"model '{quote(model)}' not found; available models: {names}", param="model")

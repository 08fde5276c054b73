"""Thin routes of the OpenAI API; translation lives in service.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import ModelNotFound, quote

from hyperllama_gateway import catalog
from hyperllama_gateway.choices import collect_all, stream_all
from hyperllama_gateway.deps import Call, CallDep, Scheduler, Store, TenantDep, authorize
from hyperllama_gateway.generation import Generation, embed
from hyperllama_gateway.openai import responses, service
from hyperllama_gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from hyperllama_gateway.openai.responses import ResponsesRequest

router = APIRouter(prefix="/v1")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _generations(call: Call, requests: list[worker_pb2.GenerateRequest], stream: bool) -> list[Generation]:
    # Only the first choice reports queue positions: one place in line per request.
    return [Generation(call, r, positions=stream and i == 0) for i, r in enumerate(requests)]


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, call: CallDep) -> dict[str, Any] | StreamingResponse:
    call.http.state.model = body.model
    request = service.chat_request(body, call.request_id)
    plan = service.tool_plan(body)
    if plan is not None:
        gen = Generation(call, request, positions=False)
        await gen.start()
        if body.stream:
            return StreamingResponse(
                service.tool_sse_stream(gen, plan, call.request_id, _include_usage(body)),
                media_type="text/event-stream",
                headers=_SSE_HEADERS,
            )
        return service.chat_tool_completion(gen, await gen.collect(), plan, call.request_id)
    requests = service.choice_requests(request, body.n)
    gens = _generations(call, requests, body.stream)
    if body.stream:
        events = await stream_all(call.http, gens)
        return StreamingResponse(
            service.sse_stream(gens, events, call.request_id, _include_usage(body), chat=True, n=body.n),
            media_type="text/event-stream",
            headers=_SSE_HEADERS,
        )
    return service.chat_completion(gens, await collect_all(call.http, gens), call.request_id)


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, call: CallDep) -> dict[str, Any] | StreamingResponse:
    call.http.state.model = body.model
    gens = _generations(call, service.completion_requests(body, call.request_id), body.stream)
    if body.stream:
        events = await stream_all(call.http, gens)
        usage = _include_usage(body)
        return StreamingResponse(
            service.sse_stream(gens, events, call.request_id, usage, chat=False, echo=body.echo, n=body.n),
            media_type="text/event-stream",
            headers=_SSE_HEADERS,
        )
    results = await collect_all(call.http, gens)
    return service.text_completion(gens, results, call.request_id, body.echo, body.n)


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


@router.post("/responses", response_model=None)
async def create_response(body: ResponsesRequest, call: CallDep) -> dict[str, Any] | StreamingResponse:
    call.http.state.model = body.model
    gen = Generation(call, responses.generate_request(body, call.request_id))
    plan = responses.tool_plan(body)
    builder = responses.ResponseBuilder(body, call.request_id)
    await gen.start()
    if body.stream:
        return StreamingResponse(
            responses.event_stream(gen, builder, plan), media_type="text/event-stream", headers=_SSE_HEADERS
        )
    result = await gen.collect()
    return builder.response(result, result.text, responses.finished(result, plan))

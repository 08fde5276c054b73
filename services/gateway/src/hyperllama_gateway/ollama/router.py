"""Thin routes of the Ollama API; translation lives in service.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.durations import keep_alive_ms

from hyperllama_gateway import __version__, catalog
from hyperllama_gateway.deps import Call, CallDep, Scheduler, Store, TenantDep
from hyperllama_gateway.generation import Generation, embed, until_disconnect
from hyperllama_gateway.ollama import service
from hyperllama_gateway.ollama.protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
)

router = APIRouter(prefix="/api")

_NDJSON = "application/x-ndjson"


async def _load_or_unload(call: Call, model: str, keep_alive: int | None, chat: bool) -> dict[str, Any]:
    """Ollama's request with nothing to generate: loads the model (and sets its keep_alive), or with
    keep_alive 0 unloads it."""
    call.authorize(model)
    if keep_alive == 0:
        name = await until_disconnect(call.http, call.scheduler.unload_model(model))
        return service.load_response(name, chat, "unload")
    timeout = call.settings.request_timeout_seconds
    name = await until_disconnect(call.http, call.scheduler.load_model(model, keep_alive, timeout))
    return service.load_response(name, chat, "load")


async def _run(
    call: Call, request: worker_pb2.GenerateRequest, stream: bool, chat: bool, keep_alive: int | None
) -> Any:
    gen = Generation(call, request, keep_alive_ms=keep_alive)
    await gen.start()
    if stream:
        return StreamingResponse(service.ndjson_stream(gen, chat), media_type=_NDJSON)
    return service.response(gen, await gen.collect(), chat)


@router.post("/generate", response_model=None)
async def generate(body: GenerateRequest, call: CallDep) -> Any:
    call.http.state.model = body.model
    keep_alive = keep_alive_ms(body.keep_alive)
    if not body.prompt:
        return await _load_or_unload(call, body.model, keep_alive, chat=False)
    request = service.generate_request(body, call.request_id)
    return await _run(call, request, body.stream, False, keep_alive)


@router.post("/chat", response_model=None)
async def chat(body: ChatRequest, call: CallDep) -> Any:
    call.http.state.model = body.model
    keep_alive = keep_alive_ms(body.keep_alive)
    if not body.messages:
        return await _load_or_unload(call, body.model, keep_alive, chat=True)
    request = service.chat_request(body, call.request_id)
    plan = service.tool_plan(body)
    if plan is None:
        return await _run(call, request, body.stream, True, keep_alive)
    gen = Generation(call, request, keep_alive_ms=keep_alive)
    await gen.start()
    if body.stream:
        return StreamingResponse(service.tool_ndjson_stream(gen, plan), media_type=_NDJSON)
    return service.tool_response(gen, await gen.collect(), plan)


@router.post("/embed")
async def embed_route(body: EmbedRequest, call: CallDep) -> dict[str, Any]:
    response = await embed(
        call,
        service.embed_request(body.model, body.input, body.truncate, call.request_id),
        keep_alive_ms(body.keep_alive),
    )
    return {
        "model": body.model,
        "embeddings": [list(e.values) for e in response.embeddings],
        "total_duration": response.total_duration_ns,
        "load_duration": response.load_duration_ns,
        "prompt_eval_count": response.prompt_tokens,
    }


@router.post("/embeddings")
async def embeddings(body: EmbeddingsRequest, call: CallDep) -> dict[str, Any]:
    response = await embed(
        call,
        service.embed_request(body.model, body.prompt, True, call.request_id),
        keep_alive_ms(body.keep_alive),
    )
    return {"embedding": list(response.embeddings[0].values)}


@router.get("/ps")
async def ps(scheduler: Scheduler, store: Store, tenant: TenantDep) -> dict[str, Any]:
    running = await catalog.running_models(scheduler, store)
    return {"models": [m for m in running if tenant.allows(m["name"])]}


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}

"""Thin routes of the Ollama API; translation lives in service.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import InvalidRequest, ModelNotFound

from hyperllama_gateway import __version__
from hyperllama_gateway.deps import Engine, Priority, RequestId, Scheduler, Settings
from hyperllama_gateway.generation import Generation, until_disconnect
from hyperllama_gateway.ollama import service
from hyperllama_gateway.ollama.protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ShowRequest,
)
from hyperllama_gateway.scheduler_client import SchedulerClient

router = APIRouter(prefix="/api")

_NDJSON = "application/x-ndjson"


async def _find(scheduler: SchedulerClient, model: str) -> scheduler_pb2.ModelEntry:
    entries = await scheduler.list_models()
    for entry in entries:
        if entry.info.name in (model, f"{model}:latest"):
            return entry
    names = ", ".join(e.info.name for e in entries)
    raise ModelNotFound(f"model '{model}' not found; available models: {names}")


async def _run(
    request: worker_pb2.GenerateRequest,
    stream: bool,
    chat: bool,
    http: Request,
    scheduler: SchedulerClient,
    settings: Any,
    priority: int,
    engine: str,
) -> Any:
    gen = Generation(scheduler, request, priority, settings.request_timeout_seconds, engine)
    await gen.start(http)
    if stream:
        return StreamingResponse(service.ndjson_stream(gen, chat), media_type=_NDJSON)
    return service.response(gen, await gen.collect(http), chat)


@router.post("/generate", response_model=None)
async def generate(
    body: GenerateRequest,
    http: Request,
    scheduler: Scheduler,
    settings: Settings,
    request_id: RequestId,
    priority: Priority,
    engine: Engine,
) -> Any:
    if not body.prompt and not body.raw:
        return service.load_response((await _find(scheduler, body.model)).info.name, chat=False)
    request = service.generate_request(body, request_id)
    return await _run(request, body.stream, False, http, scheduler, settings, priority, engine)


@router.post("/chat", response_model=None)
async def chat(
    body: ChatRequest,
    http: Request,
    scheduler: Scheduler,
    settings: Settings,
    request_id: RequestId,
    priority: Priority,
    engine: Engine,
) -> Any:
    if not body.messages:
        return service.load_response((await _find(scheduler, body.model)).info.name, chat=True)
    request = service.chat_request(body, request_id)
    return await _run(request, body.stream, True, http, scheduler, settings, priority, engine)


async def _embed(
    model: str,
    inputs: list[str],
    truncate: bool,
    request_id: str,
    http: Request,
    scheduler: SchedulerClient,
    settings: Any,
    engine: str,
) -> worker_pb2.EmbedResponse:
    if not inputs or any(not s for s in inputs):
        raise InvalidRequest("input must be a non-empty string or a list of non-empty strings")
    request = worker_pb2.EmbedRequest(request_id=request_id, model=model, inputs=inputs, truncate=truncate)
    return await until_disconnect(http, scheduler.embed(request, settings.request_timeout_seconds, engine))


@router.post("/embed")
async def embed(
    body: EmbedRequest,
    http: Request,
    scheduler: Scheduler,
    settings: Settings,
    request_id: RequestId,
    engine: Engine,
) -> dict[str, Any]:
    inputs = [body.input] if isinstance(body.input, str) else body.input
    response = await _embed(body.model, inputs, body.truncate, request_id, http, scheduler, settings, engine)
    return {
        "model": body.model,
        "embeddings": [list(e.values) for e in response.embeddings],
        "total_duration": response.total_duration_ns,
        "load_duration": response.load_duration_ns,
        "prompt_eval_count": response.prompt_tokens,
    }


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingsRequest,
    http: Request,
    scheduler: Scheduler,
    settings: Settings,
    request_id: RequestId,
    engine: Engine,
) -> dict[str, Any]:
    response = await _embed(body.model, [body.prompt], True, request_id, http, scheduler, settings, engine)
    return {"embedding": list(response.embeddings[0].values)}


@router.get("/tags")
async def tags(scheduler: Scheduler) -> dict[str, Any]:
    return {"models": [service.tag_entry(e.info) for e in await scheduler.list_models()]}


@router.get("/ps")
async def ps(scheduler: Scheduler) -> dict[str, Any]:
    return {"models": [service.ps_entry(e) for e in await scheduler.list_models()]}


@router.post("/show")
async def show(body: ShowRequest, scheduler: Scheduler) -> dict[str, Any]:
    if not body.target():
        raise InvalidRequest("model is required", param="model")
    return service.show(await _find(scheduler, body.target()))


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}

"""Thin routes of the Ollama API; translation lives in service.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import ModelNotFound, quote

from hyperllama_gateway import __version__
from hyperllama_gateway.deps import Call, CallDep, Scheduler
from hyperllama_gateway.generation import Generation, embed, explain_not_found
from hyperllama_gateway.ollama import service
from hyperllama_gateway.ollama.protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
)

router = APIRouter(prefix="/api")

_NDJSON = "application/x-ndjson"


async def _find(call: Call, model: str) -> scheduler_pb2.ModelEntry:
    entries = await call.scheduler.list_models()
    for entry in entries:
        if entry.info.name in (model, f"{model}:latest"):
            return entry
    names = ", ".join(e.info.name for e in entries)
    err = ModelNotFound(f"model '{quote(model)}' not found; available models: {names}")
    raise await explain_not_found(call.store, model, err)


async def _run(call: Call, request: worker_pb2.GenerateRequest, stream: bool, chat: bool) -> Any:
    gen = Generation(call, request)
    await gen.start()
    if stream:
        return StreamingResponse(service.ndjson_stream(gen, chat), media_type=_NDJSON)
    return service.response(gen, await gen.collect(), chat)


@router.post("/generate", response_model=None)
async def generate(body: GenerateRequest, call: CallDep) -> Any:
    call.http.state.model = body.model
    # Nothing to generate (raw or not): Ollama answers that the model is loaded.
    if not body.prompt:
        return service.load_response((await _find(call, body.model)).info.name, chat=False)
    return await _run(call, service.generate_request(body, call.request_id), body.stream, chat=False)


@router.post("/chat", response_model=None)
async def chat(body: ChatRequest, call: CallDep) -> Any:
    call.http.state.model = body.model
    if not body.messages:
        return service.load_response((await _find(call, body.model)).info.name, chat=True)
    return await _run(call, service.chat_request(body, call.request_id), body.stream, chat=True)


@router.post("/embed")
async def embed_route(body: EmbedRequest, call: CallDep) -> dict[str, Any]:
    response = await embed(
        call, service.embed_request(body.model, body.input, body.truncate, call.request_id)
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
    response = await embed(call, service.embed_request(body.model, body.prompt, True, call.request_id))
    return {"embedding": list(response.embeddings[0].values)}


@router.get("/ps")
async def ps(scheduler: Scheduler) -> dict[str, Any]:
    return {"models": [service.ps_entry(e) for e in await scheduler.list_models()]}


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}

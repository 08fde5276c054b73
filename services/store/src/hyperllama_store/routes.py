"""The store's own API under /store: the catalog, create/copy/delete and blob upload. Internal: the gateway
answers Ollama's /api routes with it. Errors are Ollama's ``{"error": "..."}``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from hyperllama_common.errors import InvalidRequest, ModelNotFound
from pydantic import BaseModel, Field

from hyperllama_store import modelfile
from hyperllama_store.blobs import DigestMismatch, QuotaExceeded
from hyperllama_store.create import CreateRequest, plan_create, run_create
from hyperllama_store.deps import MetricsDep, StoreDep
from hyperllama_store.models import copy_model, delete_model
from hyperllama_store.names import ModelName, parse_digest
from hyperllama_store.transfer_routes import TransferDep, respond, started

log = logging.getLogger(__name__)

router = APIRouter(prefix="/store")


class ModelRequest(BaseModel):
    model: str = Field(min_length=1)
    verbose: bool = False


class CopyRequest(BaseModel):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


@router.get("/models")
async def list_models(store: StoreDep) -> dict[str, Any]:
    # Reading a GGUF header for the first time takes seconds: off the event loop.
    entries = await asyncio.to_thread(store.catalog.list)
    return {"models": [entry.to_json() for entry in entries]}


@router.post("/show")
async def show(body: ModelRequest, store: StoreDep) -> dict[str, Any]:
    name = ModelName.parse(body.model)
    entry = await asyncio.to_thread(store.catalog.get, name)
    return {
        **entry.to_json(),
        "modelfile": modelfile.render(entry, store.layout),
        "model_info": entry.model_info,
        # For workers loading the model: whether "template" is Ollama's Go syntax (from a TEMPLATE layer)
        # or the GGUF's own Jinja, and what the KV cache costs per token of context.
        "template_from_layer": entry.template_from_layer,
        "kv_bytes_per_token": entry.kv_bytes_per_token,
    }


@router.post("/copy")
async def copy(body: CopyRequest, store: StoreDep) -> dict[str, Any]:
    await copy_model(store, body.source, body.destination)
    return {}


@router.delete("/models")
async def delete(body: ModelRequest, store: StoreDep) -> dict[str, Any]:
    removed = await delete_model(store, body.model)
    return {"removed_blobs": removed}


@router.post("/create")
async def create(body: CreateRequest, store: StoreDep, transfer: TransferDep) -> Response:
    plan = await plan_create(store, body)
    pulled = None
    if plan.pull_from is not None:
        # The base is pulled first; errors up to its registry's first answer keep their status.
        pulled = await started(transfer.pull(body.from_ or str(plan.pull_from), insecure=body.insecure))
    return await respond(run_create(store, plan, pulled), body.stream, "create")


@router.head("/blobs/{digest}")
async def head_blob(digest: str, store: StoreDep) -> Response:
    path = store.layout.blob_path(parse_digest(digest))
    if not path.is_file():
        return Response(status_code=404)
    return Response(status_code=200, headers={"Content-Length": str(path.stat().st_size)})


@router.get("/blobs/{digest}")
async def get_blob(digest: str, store: StoreDep) -> Response:
    """A blob by digest, for workers filling their caches. FileResponse streams it from disk and answers
    a Range request with 206, so an interrupted download resumes."""
    digest = parse_digest(digest)
    path = store.layout.blob_path(digest)
    if not path.is_file():
        raise ModelNotFound(f"blob {digest} not found", param="digest")
    return FileResponse(
        path, media_type="application/octet-stream", headers={"Docker-Content-Digest": digest}
    )


@router.post("/blobs/{digest}")
async def upload_blob(digest: str, request: Request, store: StoreDep, metrics: MetricsDep) -> Response:
    digest = parse_digest(digest)
    length = request.headers.get("content-length")
    try:
        expected = int(length) if length is not None else None
    except ValueError:
        raise InvalidRequest("invalid Content-Length") from None
    try:
        result = await store.blobs.ingest(digest, request.stream(), expected)
    except DigestMismatch:
        metrics.uploads.labels("mismatch").inc()
        raise
    except QuotaExceeded:
        metrics.uploads.labels("quota").inc()
        raise
    except Exception:
        metrics.uploads.labels("failed").inc()
        raise
    if result.created:
        metrics.uploads.labels("created").inc()
        metrics.upload_bytes.inc(result.size)
        return Response(status_code=201)
    metrics.uploads.labels("exists").inc()
    return Response(status_code=200)

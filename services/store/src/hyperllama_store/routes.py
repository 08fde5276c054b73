"""The store's own API under /store: the catalog, create/copy/delete and blob upload. Internal: the gateway
answers Ollama's /api routes with it. Errors are Ollama's ``{"error": "..."}``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from hyperllama_common.errors import HyperLlamaError, InvalidRequest
from pydantic import BaseModel, Field

from hyperllama_store import modelfile
from hyperllama_store.blobs import DigestMismatch, QuotaExceeded
from hyperllama_store.create import CreateRequest, plan_create, run_create
from hyperllama_store.deps import MetricsDep, StoreDep
from hyperllama_store.models import copy_model, delete_model
from hyperllama_store.names import ModelName, parse_digest

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
async def create(body: CreateRequest, store: StoreDep) -> Response:
    plan = await plan_create(store, body)
    if body.stream is False:
        last: dict[str, Any] = {}
        async for event in run_create(store, plan):
            last = event
        return JSONResponse(last)
    return StreamingResponse(_ndjson(run_create(store, plan)), media_type="application/x-ndjson")


async def _ndjson(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield json.dumps(event).encode() + b"\n"
    except HyperLlamaError as err:
        yield json.dumps({"error": err.message}).encode() + b"\n"
    except Exception as err:
        # The status line is gone; one error line ends the stream instead.
        log.exception("create failed")
        yield json.dumps({"error": f"create failed: {type(err).__name__}: {err}"}).encode() + b"\n"


@router.head("/blobs/{digest}")
async def head_blob(digest: str, store: StoreDep) -> Response:
    path = store.layout.blob_path(parse_digest(digest))
    if not path.is_file():
        return Response(status_code=404)
    return Response(status_code=200, headers={"Content-Length": str(path.stat().st_size)})


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

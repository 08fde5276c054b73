"""Thin routes of Ollama's model management API, answered by the model store: list, show, create, copy,
delete, pull, push and blobs. Translation lives in catalog.py; the store speaks Ollama's bodies."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from hyperllama_common.errors import InvalidRequest, ModelNotFound, Unavailable, quote

from hyperllama_gateway import catalog
from hyperllama_gateway.deps import Scheduler, Store, TenantDep, authorize
from hyperllama_gateway.ollama import service
from hyperllama_gateway.ollama import show as show_card
from hyperllama_gateway.ollama.protocol import (
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    PullRequest,
    PushRequest,
    ShowRequest,
)
from hyperllama_gateway.relay import relay_ndjson
from hyperllama_gateway.store_client import StoreClient

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api")

_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


def _required(model: str) -> str:
    if not model:
        raise InvalidRequest("model is required", param="model")
    return model


def _digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise InvalidRequest(f"invalid digest format: '{quote(digest, 80)}'", param="digest")
    return digest


@router.get("/tags")
async def tags(scheduler: Scheduler, store: Store, tenant: TenantDep) -> dict[str, Any]:
    return {"models": [m for m in await catalog.all_models(scheduler, store) if tenant.allows(m["name"])]}


@router.post("/show")
async def show(body: ShowRequest, scheduler: Scheduler, store: Store, tenant: TenantDep) -> dict[str, Any]:
    model = _required(body.target())
    authorize(tenant, model)
    try:
        return show_card.show_stored(await store.show(model))
    except (ModelNotFound, Unavailable):
        pass  # a model only a worker serves (a vLLM worker's Hugging Face model) keeps its card
    for entry in await scheduler.list_models():
        if catalog.name_key(entry.info.name) == catalog.name_key(model):
            return service.show(entry)
    raise ModelNotFound(f"model '{quote(model)}' not found", param="model")


async def _ndjson_or_last(store: StoreClient, path: str, body: dict[str, Any]) -> Response:
    """The store's NDJSON relayed line by line; ``stream: false`` answers its single object."""
    upstream = await store.open("POST", path, body)
    if body.get("stream", True) is False:
        try:
            data = await upstream.aread()
        finally:
            await upstream.aclose()
        return Response(data, status_code=upstream.status_code, media_type="application/json")
    return relay_ndjson(upstream)


@router.post("/pull")
async def pull(body: PullRequest, store: Store) -> Response:
    _required(body.target())
    return await _ndjson_or_last(store, "/store/pull", body.store_body())


@router.post("/push")
async def push(body: PushRequest, store: Store) -> Response:
    _required(body.target())
    return await _ndjson_or_last(store, "/store/push", body.store_body())


@router.post("/create")
async def create(body: CreateRequest, store: Store) -> Response:
    _required(body.target())
    return await _ndjson_or_last(store, "/store/create", body.store_body())


@router.post("/copy")
async def copy(body: CopyRequest, store: Store) -> Response:
    if not body.source or not body.destination:
        raise InvalidRequest("source and destination are required")
    await store.copy(body.source, body.destination)
    return Response(status_code=200)


@router.delete("/delete")
async def delete(body: DeleteRequest, store: Store, scheduler: Scheduler) -> Response:
    model = _required(body.target())
    # Unloaded everywhere first: no worker keeps serving a model the store no longer has.
    try:
        await scheduler.unload_model(model)
    except ModelNotFound:
        pass
    await store.delete(model)
    return Response(status_code=200)


@router.head("/blobs/{digest}")
async def head_blob(digest: str, store: Store) -> Response:
    return Response(status_code=await store.head_blob(_digest(digest)))


@router.post("/blobs/{digest}")
async def upload_blob(digest: str, request: Request, store: Store) -> Response:
    # Straight through: the body goes to the store as it arrives (no body limit here, the store's quota).
    status = await store.upload_blob(_digest(digest), request.stream(), request.headers.get("content-length"))
    return Response(status_code=status)

"""The store as a read-only registry: the OCI distribution API's pull side under /v2, so another HyperLlama
(or Ollama with --insecure) pulls models from this cluster."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from hyperllama_store.deps import StoreDep
from hyperllama_store.errors import OCIError
from hyperllama_store.manifest import Manifest
from hyperllama_store.names import DEFAULT_HOST, InvalidName, ModelName, parse_digest
from hyperllama_store.store import Store

router = APIRouter(prefix="/v2")

_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


@router.get("/")
async def base() -> JSONResponse:
    return JSONResponse({}, headers=_API_VERSION)


def _repository(namespace: str, model: str) -> tuple[str, str]:
    try:
        name = ModelName(DEFAULT_HOST, namespace, model, "latest")
    except InvalidName as err:
        raise OCIError(400, "NAME_INVALID", err.message) from None
    return name.namespace, name.model


def _find_manifest(store: Store, namespace: str, model: str, reference: str) -> tuple[bytes, str]:
    """The manifest bytes and digest. This store may hold the same repository under several registry
    hosts; the default registry's copy is served first, then the others in name order."""
    wanted_digest = parse_digest(reference) if reference.startswith("sha256") else None
    if wanted_digest is None:
        try:
            ModelName(DEFAULT_HOST, namespace, model, reference)
        except InvalidName as err:
            raise OCIError(400, "TAG_INVALID", err.message) from None
    candidates = []
    for name, path in store.layout.list_manifests():
        if name.key[1:3] != (namespace.lower(), model.lower()):
            continue
        if wanted_digest is None and name.key[3] != reference.lower():
            continue
        candidates.append((name.key[0] != DEFAULT_HOST, name.key, path))
    for _, _, path in sorted(candidates):
        data = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if wanted_digest is None or digest == wanted_digest:
            return data, digest
    raise OCIError(404, "MANIFEST_UNKNOWN", f"manifest unknown: {namespace}/{model}:{reference}")


@router.api_route("/{namespace}/{model}/manifests/{reference}", methods=["GET", "HEAD"])
async def manifest(namespace: str, model: str, reference: str, request: Request, store: StoreDep) -> Response:
    namespace, model = _repository(namespace, model)
    data, digest = await asyncio.to_thread(_find_manifest, store, namespace, model, reference)
    media_type = Manifest.decode(data).media_type
    headers = {**_API_VERSION, "Docker-Content-Digest": digest, "Content-Length": str(len(data))}
    body = b"" if request.method == "HEAD" else data
    return Response(body, media_type=media_type, headers=headers)


@router.api_route("/{namespace}/{model}/blobs/{digest}", methods=["GET", "HEAD"])
async def blob(namespace: str, model: str, digest: str, store: StoreDep) -> Response:
    _repository(namespace, model)
    try:
        digest = parse_digest(digest)
    except InvalidName as err:
        raise OCIError(400, "DIGEST_INVALID", err.message) from None
    path: Path = store.layout.blob_path(digest)
    if not path.is_file():
        raise OCIError(404, "BLOB_UNKNOWN", f"blob unknown: {digest}")
    # Starlette's FileResponse streams from disk and answers Range requests with 206.
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={**_API_VERSION, "Docker-Content-Digest": digest},
    )

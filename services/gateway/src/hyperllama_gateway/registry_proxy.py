"""The cluster as a registry: ``GET|HEAD /v2/...`` relayed read-only to the model store, so another
HyperLlama, or Ollama with --insecure, pulls from the gateway's port. Blobs stream through, ranges too."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from hyperllama_common.errors import HyperLlamaError

from hyperllama_gateway.deps import Store
from hyperllama_gateway.relay import Relay, raw_bytes

router = APIRouter(prefix="/v2")

# Request headers a registry client sends that the store reads; everything else stays here.
_FORWARDED = ("accept", "range", "if-none-match", "if-range", "if-modified-since")
# Response headers that describe the content, relayed as the store sent them.
_RELAYED = (
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    "docker-content-digest",
    "docker-distribution-api-version",
)


@router.api_route("/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def registry(path: str, request: Request, store: Store) -> Response:
    headers = {k: v for k, v in request.headers.items() if k in _FORWARDED}
    try:
        upstream = await store.open(request.method, f"/v2/{path}", headers=headers, raise_for_error=False)
    except HyperLlamaError as err:
        body = {"errors": [{"code": "UNAVAILABLE", "message": err.message, "detail": None}]}
        return JSONResponse(body, status_code=err.http_status)
    relayed = {k: v for k, v in upstream.headers.items() if k in _RELAYED}
    if request.method == "HEAD":
        await upstream.aclose()
        return Response(status_code=upstream.status_code, headers=relayed)
    return Relay(upstream, raw_bytes(upstream), status_code=upstream.status_code, headers=relayed)

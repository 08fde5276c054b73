"""The model store's HTTP API as the gateway uses it (services/store: /store/* and the /v2 registry).

One ``httpx.AsyncClient`` per gateway process, made in the app's lifespan. Every call has a timeout; the
streaming calls hand back the open response so the routes relay it piece by piece, never holding a blob or
a whole NDJSON stream in memory. A store answer that is an error becomes the matching HyperLlamaError with
the store's status and message, so the client sees what Ollama would have said.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from hyperllama_common.errors import HyperLlamaError, InvalidRequest, ModelNotFound, Unavailable, quote

log = logging.getLogger(__name__)

# An error body is one short JSON object; a longer one is cut rather than read whole.
_MAX_ERROR_BYTES = 64 * 1024


class StoreError(HyperLlamaError):
    """An error the store answered with a status of its own (413 quota, 409 ...)."""


def error_from(status: int, message: str) -> HyperLlamaError:
    err: HyperLlamaError
    if status == 404:
        err = ModelNotFound(message)
        err.code = None
    elif status == 400:
        err = InvalidRequest(message)
    else:
        err = StoreError(message)
    err.http_status = status
    return err


def _message(body: bytes, status: int) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return quote(data["error"], 1000)
    return f"model store answered {status}"


class StoreClient:
    def __init__(self, base_url: str, timeout: float, stream_idle_timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout)
        # A pull can be quiet for a while (verifying a large blob); a stream waits this long between pieces.
        self._stream_timeout = httpx.Timeout(timeout, read=stream_idle_timeout, write=stream_idle_timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as err:
            raise self._unreachable(err) from None
        if response.status_code >= 400:
            raise error_from(response.status_code, _message(response.content, response.status_code))
        return response

    def _unreachable(self, err: Exception) -> Unavailable:
        log.warning("model store at %s: %s: %s", self.base_url, type(err).__name__, err)
        return Unavailable("the model store is unreachable; try again shortly")

    async def list_models(self) -> list[dict[str, Any]]:
        models = (await self._call("GET", "/store/models")).json().get("models", [])
        return [m for m in models if isinstance(m, dict)]

    async def show(self, model: str) -> dict[str, Any]:
        data = (await self._call("POST", "/store/show", {"model": model})).json()
        return data if isinstance(data, dict) else {}

    async def has(self, model: str) -> bool:
        """Whether the store holds ``model``; False too when it cannot say (unreachable, bad name)."""
        try:
            await self.show(model)
        except HyperLlamaError:
            return False
        return True

    async def copy(self, source: str, destination: str) -> None:
        await self._call("POST", "/store/copy", {"source": source, "destination": destination})

    async def delete(self, model: str) -> None:
        await self._call("DELETE", "/store/models", {"model": model})

    async def head_blob(self, digest: str) -> int:
        try:
            response = await self._http.head(f"/store/blobs/{digest}")
        except httpx.HTTPError as err:
            raise self._unreachable(err) from None
        if response.status_code in (200, 404):
            return response.status_code
        raise error_from(response.status_code, f"model store answered {response.status_code}")

    async def upload_blob(self, digest: str, body: AsyncIterator[bytes], length: str | None) -> int:
        """Stream ``body`` to the store as it arrives; the store's status (201 new, 200 already there)."""
        headers = {"Content-Length": length} if length is not None else {}
        try:
            response = await self._http.post(
                f"/store/blobs/{digest}", content=body, headers=headers, timeout=self._stream_timeout
            )
        except httpx.HTTPError as err:
            raise self._unreachable(err) from None
        if response.status_code >= 400:
            raise error_from(response.status_code, _message(response.content, response.status_code))
        return response.status_code

    async def open(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        raise_for_error: bool = True,
    ) -> httpx.Response:
        """An open streamed response; the caller reads it piece by piece and closes it. With
        ``raise_for_error`` an error status is read (bounded), closed and raised."""
        request = self._http.build_request(
            method, path, json=body, headers=headers, timeout=self._stream_timeout
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as err:
            raise self._unreachable(err) from None
        if raise_for_error and response.status_code >= 400:
            try:
                data = b""
                async for piece in response.aiter_bytes():
                    data += piece
                    if len(data) > _MAX_ERROR_BYTES:
                        break
            except httpx.HTTPError:
                pass
            finally:
                await response.aclose()
            raise error_from(response.status_code, _message(data, response.status_code))
        return response

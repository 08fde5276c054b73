"""A small streaming client for the engine's OpenAI-compatible server on loopback.

Engine answers become HyperLlama errors here, once: a 4xx is the caller's mistake (InvalidRequest, or
ContextLengthExceeded when the engine says the prompt does not fit), anything else is BackendFailed,
and a refused connection means the engine is not there (Unavailable).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from hyperllama_common.errors import (
    BackendFailed,
    ContextLengthExceeded,
    HyperLlamaError,
    InvalidRequest,
    Unavailable,
)


def _engine_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:500]
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)
    return str(err)


def error_from_status(status: int, body: bytes, param: str | None = None) -> HyperLlamaError:
    message = _engine_message(body)
    if 400 <= status < 500 and status not in (408, 429):
        lowered = message.lower()
        if "context length" in lowered or "maximum context" in lowered or "too long" in lowered:
            return ContextLengthExceeded(message, param=param)
        return InvalidRequest(message, param=param)
    return BackendFailed(f"engine answered {status}: {message}")


def _stream_error(event: dict[str, Any], data: str, param: str | None) -> HyperLlamaError:
    """An error event in a stream: vLLM validates some sampling fields only once the stream has begun
    and then sends its 400 as an event, which is still the caller's mistake."""
    err = event["error"]
    code = err.get("code") if isinstance(err, dict) else None
    if isinstance(code, int) and 400 <= code < 500:
        return error_from_status(code, data.encode(), param)
    return BackendFailed(f"engine failed mid-stream: {_engine_message(data.encode())}")


class EngineClient:
    def __init__(self, base_url: str, connect_timeout: float = 5.0):
        # No read timeout on streams: a long generation is fine; a hung engine is the supervisor's job.
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(None, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def healthy(self, path: str, timeout: float) -> bool:
        try:
            response = await self._http.get(path, timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def stream(
        self, path: str, body: dict[str, Any], param: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """POST with ``stream: true`` and yield each server-sent event's JSON object.

        Leaving the iteration early closes the connection, which makes the engine abort the request."""
        try:
            async with self._http.stream("POST", path, json={**body, "stream": True}) as response:
                if response.status_code != 200:
                    raise error_from_status(response.status_code, await response.aread(), param)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if isinstance(event, dict) and "error" in event:
                        raise _stream_error(event, data, param)
                    yield event
        except httpx.ConnectError as err:
            raise Unavailable(f"the engine is not reachable: {err}") from err
        except httpx.HTTPError as err:
            raise BackendFailed(f"the engine connection failed: {err!r}") from err

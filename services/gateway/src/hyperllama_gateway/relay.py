"""Relaying an open store response to the client piece by piece: NDJSON line by line, bytes as they come.
The store's response is closed however the relay ends, so a client that leaves stops the relay at once
(the store decides whether the work behind it goes on for others)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping

import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


class Relay(StreamingResponse):
    def __init__(
        self,
        upstream: httpx.Response,
        content: AsyncIterator[bytes],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers, media_type=media_type)
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.upstream.aclose()


async def ndjson_lines(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The store's NDJSON, each line sent as soon as it is whole. A store that stops answering mid-stream
    ends it with one error line, as every stream on /api ends."""
    try:
        async for line in upstream.aiter_lines():
            if line.strip():
                yield line.encode() + b"\n"
    except httpx.HTTPError as err:
        log.warning("model store stream broke off: %s: %s", type(err).__name__, err)
        yield json.dumps({"error": "the model store stopped answering"}).encode() + b"\n"


async def raw_bytes(upstream: httpx.Response) -> AsyncIterator[bytes]:
    async for piece in upstream.aiter_raw():
        yield piece


def relay_ndjson(upstream: httpx.Response) -> Relay:
    return Relay(upstream, ndjson_lines(upstream), media_type=NDJSON)

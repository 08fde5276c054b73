"""Request-body handling before routing: a size limit, and JSON whatever the declared type."""

from __future__ import annotations

from collections.abc import Callable

from hyperllama_common.errors import InvalidRequest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hyperllama_gateway.errors import error_response

BLOB_PREFIX = "/api/blobs/"


def is_blob_upload(scope: Scope) -> bool:
    """POST /api/blobs/<digest>: a model file streamed through to the store, not a JSON body."""
    return scope["method"] == "POST" and scope["path"].startswith(BLOB_PREFIX)


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, exempt: Callable[[Scope], bool] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = InvalidRequest(f"request body exceeds the limit of {self.max_bytes} bytes")
        err.http_status, err.code = 413, "request_too_large"
        response = error_response(scope["path"], err)
        response.headers["connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt is not None and self.exempt(scope)):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No declared length (chunked upload): count as it arrives, keep at most the limit.
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)


class JsonBodies:
    """Ollama reads every body as JSON whatever its Content-Type (curl -d sends a form type), and so
    do we: a POST without a JSON content type is relabelled before FastAPI parses it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not is_blob_upload(scope):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            ctype = dict(scope["headers"]).get(b"content-type", b"")
            if not ctype.startswith(b"application/json"):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)

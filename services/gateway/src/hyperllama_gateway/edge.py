"""The outermost layer of every HTTP request: request ids, and the last line of defence against an
unexpected exception.

- The internal request id (the scheduler's queue key, the worker's sequence id, the response's
  ``chatcmpl-<id>``) is always minted here: two clients sending the same ``X-Request-Id`` must not
  collide. The client's header is only correlation: echoed on every response and logged.
- Any exception that no handler turned into an error response becomes a 500 in the API's envelope
  with its traceback logged. Caught here rather than by an ``exception_handler(Exception)``, which
  Starlette runs in ServerErrorMiddleware and then re-raises, so uvicorn closes the keep-alive
  connection.
"""

from __future__ import annotations

import logging
import uuid

from hyperllama_common.errors import HyperLlamaError, quote
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hyperllama_gateway.errors import error_response
from hyperllama_gateway.limits import MAX_CLIENT_REQUEST_ID_CHARS

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
_UNPRINTABLE = bytes(b for b in range(256) if not 0x20 <= b < 0x7F)


def client_request_id(raw: bytes | None) -> str:
    """The client's X-Request-Id as it may be echoed: printable ASCII only, bounded; "" if none."""
    if not raw:
        return ""
    kept = raw.translate(None, _UNPRINTABLE)[:MAX_CLIENT_REQUEST_ID_CHARS]
    return kept.decode("ascii").strip()


class RequestEdge:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        client_id = ""
        for key, value in scope["headers"]:
            if key == REQUEST_ID_HEADER:
                client_id = client_request_id(value)
                break
        # Read by deps.Call through request.state.
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_request_id"] = client_id
        if client_id:
            log.debug("request %s has client id %s", request_id, client_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if client_id:
                    headers = [*message.get("headers", ()), (REQUEST_ID_HEADER, client_id.encode())]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "unexpected error serving %s %s (request %s, client id %r)",
                scope.get("method"),
                quote(scope.get("path", "")),
                request_id,
                client_id,
            )
            app = scope.get("app")
            metrics = getattr(getattr(app, "state", None), "metrics", None)
            if metrics is not None and not state.get("recorded"):
                metrics.record(scope.get("path", ""), "-", "failed")
            if started:
                return  # part of the response is out: uvicorn closes the connection, as it must
            err = HyperLlamaError("internal error; the request was not served")
            await error_response(scope.get("path", ""), err)(scope, receive, send_with_id)

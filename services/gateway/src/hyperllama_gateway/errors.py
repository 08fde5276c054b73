"""The HTTP side of the error hierarchy: one envelope per API family, decided by the path."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from hyperllama_common.errors import HyperLlamaError, InvalidRequest, ModelNotFound, Overloaded, quote
from starlette.exceptions import HTTPException as StarletteHTTPException

from hyperllama_gateway.metrics import outcome_of


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def error_response(path: str, err: HyperLlamaError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    if is_openai_path(path):
        body = {
            "error": {
                "message": err.message,
                "type": err.openai_type,
                "param": err.param,
                "code": err.code,
            }
        }
        return JSONResponse(body, status_code=err.http_status, headers=headers)
    # Ollama answers an overloaded server with 503.
    status = 503 if isinstance(err, Overloaded) else err.http_status
    return JSONResponse({"error": err.message}, status_code=status, headers=headers)


def openai_error_event(err: HyperLlamaError) -> dict[str, object]:
    return {"error": {"message": err.message, "type": err.openai_type, "param": err.param, "code": err.code}}


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """The message and field of the first error. Whatever it echoes from the request (dict keys in
    its location, a bad value in a message) is cut by ``quote``."""
    first = exc.errors()[0] if exc.errors() else {}
    ctx = first.get("ctx") or {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return quote(f"invalid JSON in request body: {ctx.get('error', '')}".strip(), 300), None
    if first.get("type") == "missing" and not loc:
        return "request body is required (a JSON object)", None
    message = quote(str(first.get("msg", "invalid request")), 300)
    if isinstance(ctx.get("param"), str):  # a whole-body check (wellformed) names the field itself
        return message, ctx["param"] or None
    where = quote(".".join(loc))
    return (f"{where}: {message}" if where else message), (quote(loc[0]) if loc else None)


def install(app: FastAPI) -> None:
    def respond(request: Request, err: HyperLlamaError) -> JSONResponse:
        if not getattr(request.state, "recorded", False):
            model = getattr(request.state, "model", "-")
            request.app.state.metrics.record(request.url.path, model, outcome_of(err))
        return error_response(request.url.path, err)

    @app.exception_handler(HyperLlamaError)
    async def _hyperllama(request: Request, err: HyperLlamaError) -> JSONResponse:
        return respond(request, err)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(exc)
        return respond(request, InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err: HyperLlamaError
        if exc.status_code == 404:
            err = ModelNotFound(f"no route for {request.method} {quote(request.url.path)}")
            err.code = None
        else:
            err = InvalidRequest(quote(str(exc.detail), 300))
        err.http_status = exc.status_code
        return error_response(request.url.path, err)

"""The store's two error shapes: Ollama's ``{"error": "..."}`` on /store routes, and the OCI distribution
envelope ``{"errors": [{"code", "message", "detail"}]}`` on the registry's /v2 routes."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from hyperllama_common.errors import HyperLlamaError
from starlette.exceptions import HTTPException


class OCIError(Exception):
    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail


def oci_response(err: OCIError) -> JSONResponse:
    body = {"errors": [{"code": err.code, "message": err.message, "detail": err.detail}]}
    return JSONResponse(body, status_code=err.status)


async def on_oci_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OCIError)
    return oci_response(exc)


async def on_store_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HyperLlamaError)
    if request.url.path.startswith("/v2/"):
        code = "NAME_INVALID" if exc.http_status == 400 else "NAME_UNKNOWN"
        return oci_response(OCIError(exc.http_status, code, exc.message))
    return JSONResponse({"error": exc.message}, status_code=exc.http_status)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'body'}: {err.get('msg', 'invalid')}"
        for err in exc.errors()[:5]
    )
    return JSONResponse({"error": problems or "invalid request"}, status_code=400)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/v2/"):
        code = "UNSUPPORTED" if exc.status_code == 405 else "NAME_UNKNOWN"
        return oci_response(OCIError(exc.status_code, code, str(exc.detail)))
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

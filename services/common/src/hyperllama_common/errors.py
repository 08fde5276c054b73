"""The one error hierarchy of HyperLlama.

Each error is mapped once to a gRPC status (here) and once to an HTTP status and OpenAI error type
(class attributes, read by the gateway). Across a gRPC hop the error's kind, param and retry hint travel
in trailing metadata so the far side rebuilds the same exception.
"""

from __future__ import annotations

import grpc

_KIND_KEY = "hl-error-kind"
# Error messages travel in gRPC trailers (a few KiB at most) and go back to clients: what they quote
# from a request (a model name, a role) is cut to this many characters.
QUOTE_LIMIT = 100


def quote(value: str, limit: int = QUOTE_LIMIT) -> str:
    """``value`` for an error message: at most ``limit`` characters, lone surrogates replaced."""
    value = value.encode("utf-8", "replace").decode("utf-8")
    return value if len(value) <= limit else value[:limit] + f"... ({len(value)} characters)"


_PARAM_KEY = "hl-error-param"
_RETRY_KEY = "hl-retry-after"


class HyperLlamaError(Exception):
    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500
    openai_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after


class InvalidRequest(HyperLlamaError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    openai_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(HyperLlamaError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    openai_type = "invalid_request_error"
    code = "model_not_found"


class Overloaded(HyperLlamaError):
    """The queue is full: refused at once, try again later."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    openai_type = "rate_limit_exceeded"
    code = "queue_full"


class RateLimited(HyperLlamaError):
    """A tenant's own limit (requests or tokens per minute, concurrent requests) is reached. Unlike
    Overloaded (the cluster is full) Ollama's routes answer it with 429 as well."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    openai_type = "requests"
    code = "rate_limit_exceeded"


class Unauthenticated(HyperLlamaError):
    """No API key, or one that is not (or no longer) valid."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    openai_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(HyperLlamaError):
    """A valid key whose tenant may not use this model or route."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    openai_type = "permission_error"
    code = "permission_denied"


class DeadlineExceeded(HyperLlamaError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    openai_type = "timeout"
    code = "deadline_exceeded"


class Cancelled(HyperLlamaError):
    grpc_code = grpc.StatusCode.CANCELLED
    http_status = 499
    openai_type = "cancelled"


class Unavailable(HyperLlamaError):
    """A dependency (scheduler, Redis, every worker of a model) cannot be reached."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    openai_type = "service_unavailable"


class BackendFailed(HyperLlamaError):
    """A worker or engine failed while serving the request."""

    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 502
    openai_type = "server_error"
    code = "backend_failed"


class InsufficientMemory(HyperLlamaError):
    """A model does not fit a worker's memory budget, even with its idle models unloaded."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 503
    openai_type = "service_unavailable"
    code = "insufficient_memory"


class ModelInUse(HyperLlamaError):
    """A model cannot be unloaded while streams use it."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409
    openai_type = "conflict"
    code = "model_in_use"


_KINDS: dict[str, type[HyperLlamaError]] = {
    cls.__name__: cls
    for cls in (
        HyperLlamaError,
        InvalidRequest,
        ContextLengthExceeded,
        ModelNotFound,
        Overloaded,
        RateLimited,
        Unauthenticated,
        PermissionDenied,
        DeadlineExceeded,
        Cancelled,
        Unavailable,
        BackendFailed,
        InsufficientMemory,
        ModelInUse,
    )
}
_BY_GRPC_CODE: dict[grpc.StatusCode, type[HyperLlamaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: ModelInUse,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def to_trailing_metadata(err: HyperLlamaError) -> tuple[tuple[str, str], ...]:
    md = [(_KIND_KEY, type(err).__name__)]
    if err.param:
        md.append((_PARAM_KEY, err.param))
    if err.retry_after is not None:
        md.append((_RETRY_KEY, str(err.retry_after)))
    return tuple(md)


def raised_by_peer(err: grpc.aio.AioRpcError) -> bool:
    """True when the far side's handler raised the error on purpose (it carries our metadata); false
    for what gRPC itself reports: a refused or broken connection, a crashed peer, a local limit."""
    return any(k == _KIND_KEY for k, _ in (err.trailing_metadata() or ()))


def from_rpc_error(err: grpc.aio.AioRpcError) -> HyperLlamaError:
    """Rebuild the HyperLlamaError that the remote side raised (or the nearest one)."""
    md = {k: v for k, v in (err.trailing_metadata() or ()) if isinstance(v, str)}
    cls = _KINDS.get(md.get(_KIND_KEY, "")) or _BY_GRPC_CODE.get(err.code(), BackendFailed)
    retry = md.get(_RETRY_KEY)
    message = err.details() or err.code().name
    return cls(message, param=md.get(_PARAM_KEY), retry_after=int(retry) if retry else None)


async def abort_with(context: grpc.aio.ServicerContext, err: HyperLlamaError) -> None:
    """End the current RPC with the status and metadata that describe ``err``."""
    context.set_trailing_metadata(to_trailing_metadata(err))
    await context.abort(err.grpc_code, err.message)

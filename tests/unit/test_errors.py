"""Each error maps once to gRPC and HTTP, and survives a gRPC hop with its kind and hints."""

import grpc
import pytest
from hyperllama_common import errors
from hyperllama_gateway.errors import error_response


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code, details, md):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*md), details)


@pytest.mark.parametrize(
    "err",
    [
        errors.InvalidRequest("bad", param="messages"),
        errors.ContextLengthExceeded("too long", param="prompt"),
        errors.ModelNotFound("nope"),
        errors.Overloaded("full", retry_after=3),
        errors.DeadlineExceeded("late"),
        errors.Unavailable("down"),
        errors.BackendFailed("boom"),
    ],
)
def test_round_trip_over_grpc_metadata(err):
    rpc = FakeRpcError(err.grpc_code, err.message, errors.to_trailing_metadata(err))
    back = errors.from_rpc_error(rpc)
    assert type(back) is type(err)
    assert back.message == err.message
    assert back.param == err.param
    assert back.retry_after == err.retry_after


def test_plain_grpc_status_without_metadata_maps_by_code():
    rpc = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connect failed", ())
    assert isinstance(errors.from_rpc_error(rpc), errors.Unavailable)


def test_openai_envelope_and_retry_after():
    resp = error_response("/v1/chat/completions", errors.Overloaded("queue full", retry_after=2))
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "2"
    assert resp.body == (
        b'{"error":{"message":"queue full","type":"rate_limit_exceeded","param":null,"code":"queue_full"}}'
    )


def test_ollama_envelope_uses_503_for_overload():
    resp = error_response("/api/chat", errors.Overloaded("queue full", retry_after=1))
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.body == b'{"error":"queue full"}'


def test_ollama_envelope_for_invalid_request():
    resp = error_response("/api/generate", errors.InvalidRequest("model is required"))
    assert resp.status_code == 400
    assert resp.body == b'{"error":"model is required"}'

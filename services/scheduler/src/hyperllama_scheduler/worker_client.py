"""gRPC calls from the scheduler to workers, one cached channel per worker address."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.errors import BackendFailed, HyperLlamaError, from_rpc_error, raised_by_peer
from hyperllama_common.grpc_server import MESSAGE_SIZE_OPTIONS


class WorkerLost(BackendFailed):
    """The call broke without the worker answering: it crashed, was killed or cannot be reached.
    The only kind of failure that makes the scheduler stop trusting a worker."""


# What gRPC reports on its own when the peer process or the connection goes away.
_LOST_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def worker_error(err: grpc.aio.AioRpcError) -> HyperLlamaError:
    if raised_by_peer(err):
        return from_rpc_error(err)
    if err.code() in _LOST_CODES:
        return WorkerLost(f"worker call broke: {err.code().name}: {err.details()}")
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # gRPC's own message-size limit: about this response, not a busy worker.
        return BackendFailed(f"the worker's answer is too large to relay: {err.details()}")
    return from_rpc_error(err)


class WorkerClients:
    def __init__(self, interceptors: list[grpc.aio.ClientInterceptor] | None = None) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._interceptors = interceptors or []

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(
                address, options=MESSAGE_SIZE_OPTIONS, interceptors=self._interceptors
            )
        return worker_pb2_grpc.WorkerServiceStub(channel)

    async def generate(
        self, address: str, request: worker_pb2.GenerateRequest, deadline: float
    ) -> AsyncIterator[worker_pb2.GenerateChunk]:
        call = self._stub(address).Generate(request, timeout=max(0.001, deadline - time.time()))
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as err:
            raise worker_error(err) from None
        finally:
            call.cancel()  # a no-op after a normal end; stops decoding if we leave early

    async def embed(
        self, address: str, request: worker_pb2.EmbedRequest, timeout: float
    ) -> worker_pb2.EmbedResponse:
        try:
            return await self._stub(address).Embed(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise worker_error(err) from None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

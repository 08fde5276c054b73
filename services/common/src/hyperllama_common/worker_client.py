"""gRPC calls to workers (the gateway streams from them, the scheduler embeds), one cached channel
per worker address, and what each kind of failure means. Every call carries the internal token (and
the channels speak mTLS) as hyperllama_common.internal_auth says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from opentelemetry import trace

from hyperllama_common.errors import BackendFailed, HyperLlamaError, from_rpc_error, raised_by_peer
from hyperllama_common.grpc_server import MESSAGE_SIZE_OPTIONS
from hyperllama_common.internal_auth import InternalAuth


class WorkerLost(BackendFailed):
    """The call broke without the worker answering: it crashed or was killed while serving it.
    With WorkerUnreachable, the only kind of failure that makes the scheduler stop trusting a worker."""


class WorkerUnreachable(WorkerLost):
    """No connection could be made: the worker was gone before the request reached it, so the request
    cannot have caused it."""


# What gRPC reports on its own when the peer process or the connection goes away.
_LOST_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
# gRPC core's wording when no connection could be made (nothing was sent).
_CONNECT_FAILED = "failed to connect to all addresses"


def worker_error(err: grpc.aio.AioRpcError) -> HyperLlamaError:
    if raised_by_peer(err):
        return from_rpc_error(err)
    if err.code() == grpc.StatusCode.UNAVAILABLE and _CONNECT_FAILED in (err.details() or ""):
        return WorkerUnreachable(f"worker unreachable: {err.details()}")
    if err.code() in _LOST_CODES:
        return WorkerLost(f"worker call broke: {err.code().name}: {err.details()}")
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # gRPC's own message-size limit: about this response, not a busy worker.
        return BackendFailed(f"the worker's answer is too large to relay: {err.details()}")
    return from_rpc_error(err)


class WorkerClients:
    def __init__(
        self, interceptors: list[grpc.aio.ClientInterceptor] | None = None, auth: InternalAuth | None = None
    ) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._interceptors = interceptors or []
        self._closing: set[asyncio.Task[None]] = set()
        self._auth = InternalAuth.from_env() if auth is None else auth
        # Passed on each call rather than by an interceptor: an intercepted stream relays every token
        # through one more task and generator.
        self._metadata = self._auth.metadata

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._auth.channel(
                address, MESSAGE_SIZE_OPTIONS, self._interceptors, add_token=False
            )
        return worker_pb2_grpc.WorkerServiceStub(channel)

    async def generate(
        self,
        address: str,
        request: worker_pb2.GenerateRequest,
        deadline: float,
        parent: trace.Span | None = None,
    ) -> AsyncIterator[worker_pb2.GenerateChunk]:
        """The worker's chunks. ``parent``: the span the worker's spans belong under; it is made
        current only while the call is created (the tracing interceptor reads it then), never
        across this generator's yields, which may resume in another task."""
        with trace.use_span(parent, end_on_exit=False) if parent else contextlib.nullcontext():
            call = self._stub(address).Generate(
                request, timeout=max(0.001, deadline - time.time()), metadata=self._metadata
            )
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as err:
            raise self._error(address, err) from None
        finally:
            call.cancel()  # a no-op after a normal end; stops decoding if we leave early

    async def embed(
        self, address: str, request: worker_pb2.EmbedRequest, timeout: float
    ) -> worker_pb2.EmbedResponse:
        try:
            return await self._stub(address).Embed(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise self._error(address, err) from None

    async def load(self, address: str, model: str, digest: str, timeout: float) -> worker_pb2.WorkerInfo:
        try:
            reply = await self._stub(address).Load(
                worker_pb2.LoadRequest(model=model, digest=digest), timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as err:
            raise self._error(address, err) from None
        return reply.worker

    async def unload(self, address: str, model: str, timeout: float = 30.0) -> worker_pb2.WorkerInfo:
        try:
            reply = await self._stub(address).Unload(
                worker_pb2.UnloadRequest(model=model), timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as err:
            raise self._error(address, err) from None
        return reply.worker

    def _error(self, address: str, err: grpc.aio.AioRpcError) -> HyperLlamaError:
        error = worker_error(err)
        if isinstance(error, WorkerUnreachable):
            # A channel that failed to connect waits out a growing back-off before it tries again,
            # and fails every call meanwhile: a worker restarted on the same address would be
            # refused for seconds. The next call gets a fresh channel that connects at once.
            channel = self._channels.pop(address, None)
            if channel is not None:
                task = asyncio.get_running_loop().create_task(channel.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        return error

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

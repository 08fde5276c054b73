"""The gateway's only way to the scheduler (its replicas): typed gRPC calls with deadlines and mapped
errors. A replica that goes away during a call is replaced by another for the next try: any replica
answers any call, since they share their state in Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import BackendFailed, from_rpc_error, raised_by_peer
from hyperllama_common.targets import scheduler_channel

log = logging.getLogger(__name__)


def _is_transport_failure(err: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE raised by the channel itself (scheduler down or restarting), not by the scheduler."""
    return err.code() == grpc.StatusCode.UNAVAILABLE and not raised_by_peer(err)


class SchedulerClient:
    def __init__(
        self,
        address: str,
        control_timeout: float,
        retry_seconds: float,
        interceptors: list[grpc.aio.ClientInterceptor] | None = None,
    ):
        self._channel = scheduler_channel(address, interceptors)
        self._stub = scheduler_pb2_grpc.SchedulerServiceStub(self._channel)
        self.control_timeout = control_timeout
        self.retry_seconds = retry_seconds

    async def close(self) -> None:
        await self._channel.close()

    async def acquire(
        self, request: scheduler_pb2.AcquireRequest, timeout: float
    ) -> AsyncIterator[scheduler_pb2.AcquireEvent]:
        """Queue positions, then the lease. A replica that goes away is replaced by another with the
        same request id, which keeps the request's place in the queue (or finds its lease)."""
        # The retry window opens at the first failure: a request that waited long in the queue before
        # its replica went away deserves the same retries as a new one.
        give_up_at: float | None = None
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            call = self._stub.Acquire(request, timeout=max(0.001, deadline - time.monotonic()))
            try:
                granted = None
                # Read to the call's end (right after the lease) rather than cancelling it: a call
                # completes normally on both sides, and its trace span ends.
                async for event in call:
                    if event.HasField("lease"):
                        granted = event
                    else:
                        yield event
                if granted is None:
                    raise BackendFailed("the scheduler ended the call without granting a slot")
                yield granted
                return
            except grpc.aio.AioRpcError as err:
                if give_up_at is None:
                    give_up_at = time.monotonic() + self.retry_seconds
                if not _is_transport_failure(err) or time.monotonic() > give_up_at:
                    raise from_rpc_error(err) from None
                log.warning("scheduler unavailable, retrying %s", request.request.request_id)
            finally:
                call.cancel()  # the client went away: its queue entry goes too
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout or self.control_timeout)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    async def renew(self, leases: list[scheduler_pb2.Lease]) -> list[str]:
        """Renew leases; the ids of those that had lapsed."""
        response = await self._unary(self._stub.Renew, scheduler_pb2.RenewRequest(leases=leases))
        return list(response.lapsed)

    async def release(self, request: scheduler_pb2.ReleaseRequest) -> None:
        await self._unary(self._stub.Release, request)

    async def queue_status(self) -> list[scheduler_pb2.ModelQueue]:
        response = await self._unary(self._stub.QueueStatus, scheduler_pb2.QueueStatusRequest())
        return list(response.models)

    async def embed(
        self,
        request: worker_pb2.EmbedRequest,
        timeout: float,
        engine: str = "",
        keep_alive_ms: int | None = None,
    ) -> worker_pb2.EmbedResponse:
        embed = scheduler_pb2.EmbedRequest(request=request, engine=engine, keep_alive_ms=keep_alive_ms)
        response: worker_pb2.EmbedResponse = await self._unary(self._stub.Embed, embed, timeout)
        return response

    async def list_models(self) -> list[scheduler_pb2.ModelEntry]:
        response = await self._unary(self._stub.ListModels, scheduler_pb2.ListModelsRequest())
        return list(response.models)

    async def load_model(self, model: str, keep_alive_ms: int | None, timeout: float) -> str:
        """Load the model unless a worker serves it; its full name."""
        request = scheduler_pb2.LoadModelRequest(
            model=model,
            keep_alive_ms=keep_alive_ms,
            deadline_unix_ms=int((time.time() + timeout) * 1000),
        )
        response = await self._unary(self._stub.LoadModel, request, timeout)
        return str(response.model)

    async def unload_model(self, model: str) -> str:
        request = scheduler_pb2.UnloadModelRequest(model=model)
        response = await self._unary(self._stub.UnloadModel, request, 60.0)
        return str(response.model)

    async def list_workers(self) -> list[worker_pb2.WorkerInfo]:
        response = await self._unary(self._stub.ListWorkers, scheduler_pb2.ListWorkersRequest())
        return list(response.workers)

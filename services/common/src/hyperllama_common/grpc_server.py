"""gRPC server plumbing shared by the scheduler and the workers."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hyperllama_common.errors import HyperLlamaError, abort_with
from hyperllama_common.internal_auth import InternalAuth

log = logging.getLogger(__name__)

# gRPC's 4 MiB default is smaller than a batch of embeddings or a long prompt can be: every server and
# channel between the services accepts messages up to the gateway's own body limit and then some.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MESSAGE_SIZE_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns a HyperLlamaError raised by any handler into its gRPC status, in one place."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_uu(request, context)
                except HyperLlamaError as err:
                    await abort_with(context, err)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async for item in inner_us(request, context):
                        yield item
                except HyperLlamaError as err:
                    await abort_with(context, err)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class GrpcServer:
    """An aio server with the standard health service and a graceful stop on SIGTERM/SIGINT. Internal
    auth (the token, mTLS) comes from the environment unless ``auth`` is given."""

    def __init__(
        self,
        address: str,
        service_name: str,
        grace_seconds: float = 10.0,
        interceptors: list[grpc.aio.ServerInterceptor] | None = None,
        auth: InternalAuth | None = None,
    ):
        self.auth = InternalAuth.from_env() if auth is None else auth
        # Outer interceptors (tracing) see the status the error interceptor sets; the token check
        # comes first, so a refused call reaches nothing else.
        self.server = grpc.aio.server(
            interceptors=[*self.auth.server_interceptors(), *(interceptors or []), ErrorInterceptor()],
            options=[("grpc.so_reuseport", 0), *MESSAGE_SIZE_OPTIONS],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address = address
        self.service_name = service_name
        self.grace_seconds = grace_seconds
        self.port = 0
        self._stopping = asyncio.Event()

    async def start(self) -> int:
        self.port = self.auth.add_port(self.server, self.address)
        if self.port == 0:
            raise RuntimeError(f"cannot bind gRPC server to {self.address}")
        await self.server.start()
        log.info("%s on port %d, internal auth: %s", self.service_name, self.port, self.auth.describe())
        await self.set_serving(True)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(self.service_name, status)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)

    async def wait_for_stop_signal(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Report NOT_SERVING, let in-flight calls finish within the grace period, then stop."""
        await self.set_serving(False)
        await self.server.stop(self.grace_seconds)
        log.info("%s stopped", self.service_name)

"""Authentication between the services: a shared token on every internal gRPC call, and optional mTLS.

Every internal call (gateway -> scheduler, gateway and scheduler -> worker, worker -> scheduler) carries
the cluster's shared token in its metadata, and a server refuses a call without it with UNAUTHENTICATED;
only the standard health service (``/grpc.health.v1.Health/*``) answers without one: probes cannot send
metadata, and it tells nothing. With certificate files the channels are mutual TLS as well: a server
asks every client for a certificate from the cluster's CA, and a client checks the server's.

With no token configured, internal auth is off (a developer's processes on loopback); ``hyperllama
serve`` generates a token per start, so the default local cluster is authenticated as well.

GrpcServer, scheduler_channel, WorkerClients and the health probe read these settings themselves, so
no call site carries them.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from hyperllama_common.errors import BackendFailed, to_trailing_metadata

log = logging.getLogger(__name__)

METADATA_KEY = "x-hyperllama-internal-token"
HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"
REFUSED = "this call needs the cluster's internal token (HYPERLLAMA_INTERNAL_TOKEN)"


class InternalAuthError(ValueError):
    """The settings cannot be used: the service must not start half secured."""


class InternalAuthSettings(BaseSettings):
    # Unlike every other setting these names have no per-service prefix (HYPERLLAMA_<SVC>_): every
    # service must hold the same token and trust the same CA, and one Secret mounted into every pod
    # (one volume in compose, one environment in `hyperllama serve`) then sets them all alike.
    model_config = SettingsConfigDict(env_prefix="HYPERLLAMA_")

    # HYPERLLAMA_INTERNAL_TOKEN, or HYPERLLAMA_INTERNAL_TOKEN_FILE: a file holding it (a mounted Secret).
    internal_token: SecretStr = SecretStr("")
    internal_token_file: str = ""
    # PEM files; all three or none. HYPERLLAMA_TLS_CA: the CA that signs every service's certificate.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # The name a client checks the server's certificate against instead of the host it dials: workers
    # register by address (a pod's IP), which no certificate made in advance can name.
    tls_server_name: str = ""


@dataclass(frozen=True)
class TlsFiles:
    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)
    server_name: str = ""


@dataclass(frozen=True)
class InternalAuth:
    """What a process proves and checks on internal calls; ``InternalAuth()`` is auth off."""

    token: str = field(default="", repr=False)
    tls: TlsFiles | None = None

    @classmethod
    def from_env(cls) -> InternalAuth:
        return cls.from_settings(InternalAuthSettings())

    @classmethod
    def from_settings(cls, settings: InternalAuthSettings) -> InternalAuth:
        token = settings.internal_token.get_secret_value().strip()
        if settings.internal_token_file:
            if token:
                raise InternalAuthError(
                    "set HYPERLLAMA_INTERNAL_TOKEN or HYPERLLAMA_INTERNAL_TOKEN_FILE, not both"
                )
            token = _read(settings.internal_token_file, "HYPERLLAMA_INTERNAL_TOKEN_FILE").decode().strip()
            if not token:
                raise InternalAuthError(f"{settings.internal_token_file} (the internal token) is empty")
        if token and not (token.isascii() and token.isprintable() and " " not in token):
            # gRPC metadata values are printable ASCII; the message must not echo the token.
            raise InternalAuthError("the internal token must be printable ASCII without spaces")
        files = {"HYPERLLAMA_TLS_CA": settings.tls_ca, "HYPERLLAMA_TLS_CERT": settings.tls_cert,
                 "HYPERLLAMA_TLS_KEY": settings.tls_key}  # fmt: skip
        given = [name for name, path in files.items() if path]
        tls = None
        if given:
            if len(given) != len(files):
                missing = sorted(set(files) - set(given))
                raise InternalAuthError(f"mTLS needs {', '.join(files)}; missing: {', '.join(missing)}")
            tls = TlsFiles(
                _read(settings.tls_ca, "HYPERLLAMA_TLS_CA"),
                _read(settings.tls_cert, "HYPERLLAMA_TLS_CERT"),
                _read(settings.tls_key, "HYPERLLAMA_TLS_KEY"),
                settings.tls_server_name,
            )
        return cls(token, tls)

    def describe(self) -> str:
        parts = (["token"] if self.token else []) + (["mTLS"] if self.tls else [])
        return " + ".join(parts) or "off"

    # Server side.

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [TokenCheck(self.token)] if self.token else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        if self.tls is None:
            return server.add_insecure_port(address)
        credentials = grpc.ssl_server_credentials(
            [(self.tls.key, self.tls.cert)], root_certificates=self.tls.ca, require_client_auth=True
        )
        return server.add_secure_port(address, credentials)

    # Client side.

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata to send on a call made without the token interceptor (a hot path)."""
        return ((METADATA_KEY, self.token),) if self.token else ()

    def channel(
        self,
        target: str,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        *,
        add_token: bool = True,
    ) -> grpc.aio.Channel:
        """An aio channel that speaks TLS when configured and, with ``add_token``, sends the token on
        every call (else the caller passes ``metadata``)."""
        chain = [*(token_interceptors(self.token) if add_token and self.token else []), *interceptors]
        if self.tls is None:
            return grpc.aio.insecure_channel(target, options=list(options), interceptors=chain)
        return grpc.aio.secure_channel(
            target, self._credentials(), options=[*options, *self._name_options()], interceptors=chain
        )

    def sync_channel(self, target: str) -> grpc.Channel:
        """A blocking channel without the token: for the health service alone."""
        if self.tls is None:
            return grpc.insecure_channel(target)
        return grpc.secure_channel(target, self._credentials(), options=self._name_options())

    def _credentials(self) -> grpc.ChannelCredentials:
        assert self.tls is not None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca, private_key=self.tls.key, certificate_chain=self.tls.cert
        )

    def _name_options(self) -> list[tuple[str, Any]]:
        if self.tls is None or not self.tls.server_name:
            return []
        return [("grpc.ssl_target_name_override", self.tls.server_name)]


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as err:
        raise InternalAuthError(f"{setting}: cannot read {path}: {err.strerror}") from None


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses every call that lacks the token, but the health service's."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def __repr__(self) -> str:
        return "TokenCheck()"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        if method.startswith(HEALTH_SERVICE_PREFIX) or self._carries_token(metadata):
            return await continuation(handler_call_details)
        return _refusal(await continuation(handler_call_details), method)

    def _carries_token(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key == METADATA_KEY:
                given = value if isinstance(value, bytes) else value.encode()
                return hmac.compare_digest(given, self._token)
        return False


def _refusal(handler: grpc.RpcMethodHandler | None, method: str) -> grpc.RpcMethodHandler:
    """A handler of the method's own kind that refuses the call without reading its request (no
    deserializer: an unauthenticated peer's bytes are never parsed)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        log.warning("refused %s from %s: no valid internal token", method, context.peer())
        # To a caller inside the cluster a refusal is the cluster's misconfiguration: marked as a
        # backend failure, a gateway answers its client 502, never 401 as if the client's key were bad.
        context.set_trailing_metadata(to_trailing_metadata(BackendFailed(REFUSED)))
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)

    if handler is None or handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


class _AddsToken:
    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata[METADATA_KEY] = self._token
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_AddsToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStream(_AddsToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnary(_AddsToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
        return await continuation(self._details(client_call_details), requests)


class _StreamStream(_AddsToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, requests: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), requests)


def token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that add ``token`` to every call of a channel: one per kind of call, since
    a channel files each interceptor under the first kind it implements."""
    return [_UnaryUnary(token), _UnaryStream(token), _StreamUnary(token), _StreamStream(token)]

"""Who is calling: the API key on every request, its tenant, and the routes a tenant may use.

With auth off (the loopback developer setup, as Ollama) every request is the open default tenant's.
With auth on, every route but the probes needs a key: ``Authorization: Bearer <key>`` (what the
openai and ollama clients send), a bare ``Authorization: <key>``, or ``x-api-key: <key>``. The admin
key (from configuration, compared in constant time) may do everything, and alone may use /admin.
Whether a tenant may use a given model is checked where the model is known (deps.Call.authorize,
the store routes, the filtered lists).

A key is never logged, put on a span or used as a label: only its tenant is.
"""

from __future__ import annotations

import hmac
import logging

from hyperllama_common.errors import HyperLlamaError, PermissionDenied, Unauthenticated
from starlette.types import ASGIApp, Receive, Scope, Send

from hyperllama_gateway.api_keys import ApiKeys
from hyperllama_gateway.errors import error_response
from hyperllama_gateway.metrics import GatewayMetrics
from hyperllama_gateway.tenants import ADMIN, OPEN_DEFAULT, Tenant, Tenants

log = logging.getLogger(__name__)

# Probes and scrapes answer without a key: they reveal nothing a caller could use.
OPEN_PATHS = {"/health", "/ready", "/metrics"}
# Routes that change the store or show the cluster's insides: tenants with manage_models only.
MANAGE_ROUTES = {
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("GET", "/api/workers"),
}


def is_open(method: str, path: str) -> bool:
    return path in OPEN_PATHS or (path == "/" and method in ("GET", "HEAD"))


def needs_manage(method: str, path: str) -> bool:
    return (method, path) in MANAGE_ROUTES or path.startswith("/api/blobs/")


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries, or None. Header bytes are whatever a client sent: latin-1 decodes
    every byte, so no header can raise here."""
    found = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.decode("latin-1").strip().partition(" ")
            found = rest.strip() if scheme.lower() == "bearer" else scheme  # "Bearer <key>" or "<key>"
            break
        if name == b"x-api-key" and found is None:
            found = value.decode("latin-1").strip()
    return found or None


class Authenticator:
    """Decides the tenant of a request from its key."""

    def __init__(self, admin_key: str, keys: ApiKeys, tenants: Tenants):
        self._admin_digest = admin_key.encode()
        self.keys = keys
        self.tenants = tenants

    async def tenant(self, key: str | None) -> Tenant:
        if key is None:
            raise Unauthenticated(
                "missing API key: send it as 'Authorization: Bearer <key>' (or the x-api-key header)"
            )
        if hmac.compare_digest(key.encode("latin-1", "replace"), self._admin_digest):
            return ADMIN
        name = await self.keys.tenant_of(key)
        tenant = self.tenants.get(name) if name is not None else None
        if tenant is None:
            # A key whose tenant was removed from the configuration is as good as revoked.
            raise Unauthenticated("invalid API key (it is wrong, or it was revoked)")
        return tenant


class Authenticate:
    """ASGI middleware: sets ``request.state.tenant`` or answers 401/403 in the API's envelope."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator | None, metrics: GatewayMetrics):
        self.app = app
        self.authenticator = authenticator
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        method, path = scope.get("method", "GET"), scope.get("path", "")
        if self.authenticator is None:
            state["tenant"] = OPEN_DEFAULT
            await self.app(scope, receive, send)
            return
        if is_open(method, path):
            await self.app(scope, receive, send)
            return
        key = presented_key(scope["headers"])
        try:
            tenant = await self.authenticator.tenant(key)
            if path.startswith("/admin") and tenant is not ADMIN:
                raise PermissionDenied("the admin API needs the admin key")
            if needs_manage(method, path) and not tenant.manage_models:
                raise PermissionDenied(
                    f"tenant '{tenant.name}' may not manage models ({method} {path} needs manage_models)"
                )
        except Unauthenticated as err:
            self.metrics.auth_failures.labels("missing" if key is None else "invalid").inc()
            response = error_response(path, err)
            response.headers["WWW-Authenticate"] = 'Bearer realm="hyperllama"'
            await response(scope, receive, send)
            return
        except PermissionDenied as err:
            self.metrics.auth_failures.labels("forbidden").inc()
            await error_response(path, err)(scope, receive, send)
            return
        except HyperLlamaError as err:  # Redis unreachable: 503
            log.warning("cannot check an API key: %s", err.message)
            await error_response(path, err)(scope, receive, send)
            return
        state["tenant"] = tenant
        await self.app(scope, receive, send)

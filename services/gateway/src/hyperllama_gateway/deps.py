"""Typed dependencies that reach the app's state; no module-level singletons.

Each is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a hop to
another thread and back on every request (about a millisecond of TTFT on two cores)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from hyperllama_common.errors import InvalidRequest, PermissionDenied, quote

from hyperllama_gateway.dispatch import Dispatch
from hyperllama_gateway.limits import MAX_ENGINE_CHARS, PRIORITY_MAX, PRIORITY_MIN
from hyperllama_gateway.metrics import GatewayMetrics
from hyperllama_gateway.quotas import Quotas
from hyperllama_gateway.scheduler_client import SchedulerClient
from hyperllama_gateway.settings import GatewaySettings
from hyperllama_gateway.store_client import StoreClient
from hyperllama_gateway.tenants import OPEN_DEFAULT, Tenant

PRIORITY_HEADER = "X-HyperLlama-Priority"
ENGINE_HEADER = "X-HyperLlama-Engine"
# ASCII digits only: str.isdigit() also accepts "²" and "٣", which int() then refuses or reads.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_ENGINE = re.compile(r"[a-z0-9][a-z0-9._-]*")


async def _scheduler(request: Request) -> SchedulerClient:
    return request.app.state.scheduler


async def _store(request: Request) -> StoreClient:
    return request.app.state.store


async def _metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


@dataclass
class Call:
    """Everything a generation or embedding route needs about the request it serves."""

    http: Request
    scheduler: SchedulerClient
    # Asked only when a model is not found, to say whether it is in the store but not loaded.
    store: StoreClient
    dispatch: Dispatch
    settings: GatewaySettings
    metrics: GatewayMetrics
    # Minted by the gateway (edge.RequestEdge), never the client's X-Request-Id.
    request_id: str
    priority: int
    # X-HyperLlama-Engine pins the request to one engine's workers; empty means any engine.
    engine: str
    # Set by auth.Authenticate; the open default tenant when auth is off.
    tenant: Tenant = OPEN_DEFAULT
    # Per-tenant limits and usage (None while auth is off: there are no tenants to tell apart).
    quotas: Quotas | None = None

    def authorize(self, model: str) -> None:
        """Raise PermissionDenied unless the caller's tenant may use ``model``."""
        authorize(self.tenant, model)


def authorize(tenant: Tenant, model: str) -> None:
    if not tenant.allows(model):
        raise PermissionDenied(f"tenant '{tenant.name}' may not use model '{quote(model)}'", param="model")


def parse_priority(raw: str | None) -> int:
    """X-HyperLlama-Priority: an integer; outside the scheduler's band it is clamped to the band."""
    if raw is None:
        return 0
    value = raw.strip()
    if not _INTEGER.fullmatch(value):
        raise InvalidRequest(
            f"{PRIORITY_HEADER} must be an integer (higher runs first, {PRIORITY_MIN}..{PRIORITY_MAX}); "
            f"got '{quote(raw, 40)}'",
            param=PRIORITY_HEADER,
        )
    digits = value.lstrip("+-").lstrip("0")
    if len(digits) > 3:  # far outside the band, and int() of thousands of digits is refused
        return PRIORITY_MIN if value.startswith("-") else PRIORITY_MAX
    return max(PRIORITY_MIN, min(PRIORITY_MAX, int(value)))


def parse_engine(raw: str | None) -> str:
    value = (raw or "").strip().lower()
    if value and (len(value) > MAX_ENGINE_CHARS or not _ENGINE.fullmatch(value)):
        raise InvalidRequest(
            f"{ENGINE_HEADER} must name an engine (llamacpp, vllm, max); got '{quote(raw or '', 40)}'",
            param=ENGINE_HEADER,
        )
    return value


def _tenant_of(request: Request) -> Tenant:
    return getattr(request.state, "tenant", None) or OPEN_DEFAULT


async def _tenant(request: Request) -> Tenant:
    return _tenant_of(request)


async def _call(request: Request) -> Call:
    tenant = _tenant_of(request)
    return Call(
        http=request,
        scheduler=request.app.state.scheduler,
        store=request.app.state.store,
        dispatch=request.app.state.dispatch,
        settings=request.app.state.settings,
        metrics=request.app.state.metrics,
        # Set by the edge middleware; minted here only when the app runs without it (unit tests).
        request_id=getattr(request.state, "request_id", None) or uuid.uuid4().hex,
        # A tenant's ceiling bounds what its requests may claim.
        priority=min(tenant.max_priority, parse_priority(request.headers.get(PRIORITY_HEADER))),
        engine=parse_engine(request.headers.get(ENGINE_HEADER)),
        tenant=tenant,
        quotas=request.app.state.quotas,
    )


Scheduler = Annotated[SchedulerClient, Depends(_scheduler)]
Store = Annotated[StoreClient, Depends(_store)]
Metrics = Annotated[GatewayMetrics, Depends(_metrics)]
TenantDep = Annotated[Tenant, Depends(_tenant)]
CallDep = Annotated[Call, Depends(_call)]

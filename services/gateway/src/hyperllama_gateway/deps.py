"""Typed dependencies that reach the app's state; no module-level singletons."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from hyperllama_gateway.metrics import GatewayMetrics
from hyperllama_gateway.scheduler_client import SchedulerClient
from hyperllama_gateway.settings import GatewaySettings


def _scheduler(request: Request) -> SchedulerClient:
    return request.app.state.scheduler


def _metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


@dataclass
class Call:
    """Everything a generation or embedding route needs about the request it serves."""

    http: Request
    scheduler: SchedulerClient
    settings: GatewaySettings
    metrics: GatewayMetrics
    request_id: str
    priority: int
    # X-HyperLlama-Engine pins the request to one engine's workers; empty means any engine.
    engine: str


def _call(request: Request) -> Call:
    raw_priority = request.headers.get("x-hyperllama-priority", "0")
    return Call(
        http=request,
        scheduler=request.app.state.scheduler,
        settings=request.app.state.settings,
        metrics=request.app.state.metrics,
        request_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
        priority=int(raw_priority) if raw_priority.lstrip("-").isdigit() else 0,
        engine=request.headers.get("x-hyperllama-engine", "").strip().lower(),
    )


Scheduler = Annotated[SchedulerClient, Depends(_scheduler)]
Metrics = Annotated[GatewayMetrics, Depends(_metrics)]
CallDep = Annotated[Call, Depends(_call)]

"""Typed dependencies that reach the app's state; no module-level singletons."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from hyperllama_gateway.scheduler_client import SchedulerClient
from hyperllama_gateway.settings import GatewaySettings


def _scheduler(request: Request) -> SchedulerClient:
    return request.app.state.scheduler


def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


def _request_id(request: Request) -> str:
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def _priority(request: Request) -> int:
    raw = request.headers.get("x-hyperllama-priority", "0")
    return int(raw) if raw.lstrip("-").isdigit() else 0


def _engine(request: Request) -> str:
    """X-HyperLlama-Engine pins a request to one engine's workers; empty means any engine."""
    return request.headers.get("x-hyperllama-engine", "").strip().lower()


Scheduler = Annotated[SchedulerClient, Depends(_scheduler)]
Settings = Annotated[GatewaySettings, Depends(_settings)]
RequestId = Annotated[str, Depends(_request_id)]
Priority = Annotated[int, Depends(_priority)]
Engine = Annotated[str, Depends(_engine)]

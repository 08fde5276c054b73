"""The gateway's routes as FastAPI will run them."""

from __future__ import annotations

import inspect

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from hyperllama_gateway.app import create_app
from hyperllama_gateway.settings import GatewaySettings


def _api_routes(routes: list[object]) -> list[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI 0.16x keeps those as one route each)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (router := getattr(route, "original_router", None)) is not None:
            found.extend(_api_routes(router.routes))
    return found


def _calls(dependant: Dependant) -> list[object]:
    calls = [dependant.call]
    for sub in dependant.dependencies:
        calls.extend(_calls(sub))
    return calls


def test_every_route_and_dependency_runs_on_the_event_loop():
    """FastAPI runs a plain ``def`` endpoint or dependency in its thread pool: a hop to another thread
    and back on every request, which on two cores costs generations about half a millisecond of TTFT."""
    app = create_app(GatewaySettings(scheduler_address="127.0.0.1:1"))
    routes = _api_routes(app.routes)
    assert len(routes) > 20  # both APIs' routes, not an empty app
    sync = [
        f"{route.path}: {getattr(call, '__qualname__', call)}"
        for route in routes
        for call in _calls(route.dependant)
        if call is not None and not inspect.iscoroutinefunction(call)
    ]
    assert sync == []

"""Reading a running cluster's own answers in tests: poll until a state holds, and what /api/ps says."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from hyperllama_cli.cluster import LocalCluster


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll the cluster's own answer until ``check`` holds (a state change, never a timing)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def ps_raw(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    """/api/ps by model name, with the fields the ollama client drops (state, placements)."""
    body = httpx.get(f"{cluster.gateway_url}/api/ps", timeout=10).json()
    return {m["name"]: m for m in body["models"]}

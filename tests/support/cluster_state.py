"""Test clusters: stopped after use (with their logs shown when something failed), and their own
answers read back: poll until a state holds, and what /api/ps says."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from hyperllama_cli.cluster import LocalCluster


@contextlib.contextmanager
def reported(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """Stop ``cluster`` when the block ends; if it ends by an error, print each process's log tail
    first (the test report then shows what the processes said)."""
    try:
        yield cluster
    except BaseException:
        for p in cluster.processes:
            print(f"--- {p.name} ---\n{p.log_tail(80)}")
        raise
    finally:
        cluster.stop()


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

"""The cluster keeps its promises when parts of it stop: Redis restarts, SIGTERM drains.

Workers are the scripted test double (tests/support/scripted_worker.py) with a delay between tokens,
so a stream is reliably in flight when a process is stopped.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hyperllama_cli.cluster import LocalCluster, free_port, wait_for

SUPPORT = Path(__file__).resolve().parents[1] / "support"
MODEL = "scripted:1"


def start(tmp_path: Path, redis_url: str = "") -> LocalCluster:
    cluster = LocalCluster(gateway_port=free_port(), log_dir=tmp_path, redis_url=redis_url)
    cluster.start_redis()
    cluster.start_scheduler(worker_lease_seconds="2")
    cluster.start_worker(
        "w1",
        module="scripted_worker",
        extra_env={"PYTHONPATH": str(SUPPORT), "HYPERLLAMA_SCRIPTED_TOKEN_DELAY": "0.02"},
    )
    cluster.start_gateway(scheduler_retry_seconds="1")
    cluster.wait_ready(1, timeout=30)
    return cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = start(tmp_path)
    yield c
    c.stop()


def generate(cluster: LocalCluster, tokens: int = 5, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        f"{cluster.gateway_url}/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": tokens},
        timeout=timeout,
    )


def test_redis_restart_fails_fast_then_recovers(cluster: LocalCluster):
    assert generate(cluster).status_code == 200
    redis_proc = next(p for p in cluster.processes if p.name == "redis")
    port = int(cluster.redis_url.rsplit(":", 1)[1].split("/")[0])
    redis_proc.kill()
    cluster.processes.remove(redis_proc)

    ready = httpx.get(f"{cluster.gateway_url}/ready", timeout=10)
    assert ready.status_code == 503
    # Within a second the scheduler's copy of the registry is stale and must be read from Redis:
    # from then on requests fail at once with 503, none waits for its deadline.
    deadline = time.monotonic() + 15
    while True:
        started = time.monotonic()
        r = generate(cluster)
        assert time.monotonic() - started < 5
        if r.status_code == 503:
            break
        assert r.status_code == 200 and time.monotonic() < deadline
    assert "Redis" in r.json()["error"]["message"]

    # Same port, empty data: workers re-register with their next heartbeat.
    cluster.start_redis(port=port)
    wait_for(lambda: len(cluster.ready_workers()) == 1, "recovery", None, timeout=30)
    r = generate(cluster)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "w1 t0 t1 t2 t3"


@pytest.mark.parametrize("victim", ["worker", "scheduler", "gateway"])
def test_sigterm_drains_in_flight_streams_and_exits_cleanly(cluster: LocalCluster, victim: str):
    proc = next(p for p in cluster.processes if p.name == {"worker": "w1"}.get(victim, victim))
    events: list[str] = []
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 100, "stream": True}

    def stream() -> None:
        with httpx.stream("POST", f"{cluster.gateway_url}/v1/completions", json=body, timeout=60) as r:
            events.extend(line for line in r.iter_lines() if line.startswith("data: "))

    reader = threading.Thread(target=stream)
    reader.start()
    wait_for(lambda: len(cluster.ready_workers()) == 1 and _busy(cluster), "a stream in flight", None, 10)
    os.kill(proc.popen.pid, signal.SIGTERM)
    reader.join(timeout=60)
    assert events[-1] == "data: [DONE]"  # the stream finished normally
    assert sum(1 for e in events if '"finish_reason":"length"' in e) == 1
    assert proc.popen.wait(timeout=30) == 0


def _busy(cluster: LocalCluster) -> bool:
    text = httpx.get(cluster.metrics_urls["gateway"], timeout=5).text
    return "hyperllama_gateway_requests_in_flight 1.0" in text

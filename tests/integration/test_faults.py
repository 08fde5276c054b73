"""Faults injected under load, the way an operator meets them: a worker killed with SIGKILL, the
scheduler killed with SIGKILL, Redis restarted empty. Whatever happens, every request ends with
exactly one terminal marker (a normal finish or one explicit error), none hangs, none is lost
silently, and the cluster serves again within seconds.

Workers are the scripted test double (tests/support/scripted_worker.py) with a delay between tokens,
so streams are in flight and requests queued when the fault strikes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from hyperllama_cli.cluster import LocalCluster, free_port, wait_for
from hyperllama_scheduler import keys

SUPPORT = Path(__file__).resolve().parents[1] / "support"
MODEL = "scripted:1"
TOKENS = 20
TOKEN_DELAY = 0.02
# A request that takes longer than this has hung: a stream is 20 tokens of 20 ms, queueing included.
HANG_SECONDS = 40.0


def scripted_env(**more: str) -> dict[str, str]:
    return {
        "PYTHONPATH": str(SUPPORT),
        "HYPERLLAMA_SCRIPTED_TOKEN_DELAY": str(TOKEN_DELAY),
        "HYPERLLAMA_SCRIPTED_SLOTS": "2",
        **more,
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(gateway_port=free_port(), log_dir=tmp_path)
    c.start_redis()
    c.start_scheduler(worker_lease_seconds="2", request_lease_seconds="3")
    for name in ("w1", "w2"):
        c.start_worker(name, module="scripted_worker", extra_env=scripted_env())
    c.start_gateway(scheduler_retry_seconds="10")
    c.wait_ready(2, timeout=30)
    yield c
    c.stop()


@dataclass
class Outcome:
    """How one streamed request ended, as its client saw it."""

    status: int
    finished: int = 0  # final events with a finish_reason
    errors: int = 0  # error events in the stream (or an error status)
    done_markers: int = 0
    text: str = ""
    seconds: float = 0.0

    @property
    def kind(self) -> str:
        if self.status != 200:
            return f"http_{self.status}"
        if self.finished == 1 and self.errors == 0 and self.done_markers == 1:
            return "ok"
        if self.errors == 1 and self.finished == 0 and self.done_markers == 0:
            return "stream_error"
        return "broken"  # no terminal marker, or more than one: never acceptable


def stream_one(url: str) -> Outcome:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": TOKENS, "stream": True}
    started = time.monotonic()
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=HANG_SECONDS) as r:
            if r.status_code != 200:
                r.read()
                out = Outcome(r.status_code, errors=1)
                assert "error" in r.json(), r.text  # an error in its envelope, never a bare status
            else:
                out = Outcome(200)
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        out.done_markers += 1
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        out.errors += 1
                    elif event["choices"] and event["choices"][0]["finish_reason"]:
                        out.finished += 1
                        out.text += event["choices"][0]["text"]
                    elif event["choices"]:
                        out.text += event["choices"][0]["text"]
    except httpx.TimeoutException:
        out = Outcome(0)  # a hang
    out.seconds = time.monotonic() - started
    return out


class Load:
    """``clients`` threads sending streamed requests back to back until stopped."""

    def __init__(self, url: str, clients: int = 6):
        self.url = url
        self.outcomes: list[tuple[float, Outcome]] = []  # (end time, outcome)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(self._client) for _ in range(clients)]

    def _client(self) -> None:
        while not self._stop.is_set():
            out = stream_one(self.url)
            self.outcomes.append((time.monotonic(), out))

    def stop(self) -> Counter[str]:
        self._stop.set()
        for f in self._futures:
            f.result(timeout=HANG_SECONDS + 10)
        self._pool.shutdown()
        return Counter(o.kind for _, o in self.outcomes)

    def served_after(self, moment: float) -> float:
        """Seconds from ``moment`` to the end of the first request sent after it and served."""
        ok = [t for t, o in self.outcomes if t - o.seconds > moment and o.kind == "ok"]
        return min(ok) - moment if ok else float("inf")


def run_fault(cluster: LocalCluster, fault, settle: float = 1.5) -> tuple[Counter[str], float]:  # type: ignore[no-untyped-def]
    load = Load(cluster.gateway_url)
    time.sleep(settle)  # streams running, requests queued
    struck = time.monotonic()
    fault()
    wait_for(lambda: load.served_after(struck) < float("inf"), "a request served after the fault", None, 30)
    time.sleep(1.0)  # a little more traffic on the recovered cluster
    kinds = load.stop()
    recovery = load.served_after(struck)
    assert kinds["broken"] == 0, kinds  # every stream ended with exactly one terminal marker
    assert kinds["http_0"] == 0, kinds  # no hang
    assert all(o.text.startswith("w") for _, o in load.outcomes if o.kind == "ok")
    print(f"\n{fault.__name__}: {dict(kinds)}, first success {recovery:.2f}s after the fault")
    return kinds, recovery


def test_worker_killed_under_load(cluster: LocalCluster):
    def kill_worker() -> None:
        cluster.processes[[p.name for p in cluster.processes].index("w1")].kill()

    kinds, recovery = run_fault(cluster, kill_worker)
    # Streams that had started on w1 end with an explicit error; the rest are served by w2.
    assert kinds["ok"] > kinds["stream_error"]
    assert recovery < 5


def test_scheduler_killed_under_load(cluster: LocalCluster):
    port = int(cluster.scheduler_address.rsplit(":", 1)[1])

    def kill_scheduler() -> None:
        proc = next(p for p in cluster.processes if p.name == "scheduler")
        proc.kill()
        cluster.processes.remove(proc)
        cluster.start_scheduler(port=port, worker_lease_seconds="2", request_lease_seconds="3")

    kinds, recovery = run_fault(cluster, kill_scheduler)
    # Queued requests and new ones are retried by the gateway with the same id and served.
    assert kinds["ok"] > 0 and recovery < 10


def test_redis_restarted_empty_under_load(cluster: LocalCluster):
    port = int(cluster.redis_url.rsplit(":", 1)[1].split("/")[0])

    def restart_redis() -> None:
        proc = next(p for p in cluster.processes if p.name == "redis")
        proc.kill()
        cluster.processes.remove(proc)
        cluster.start_redis(port=port)

    kinds, recovery = run_fault(cluster, restart_redis)
    assert kinds["ok"] > 0 and recovery < 10


def test_requests_waiting_when_redis_restarts_empty_are_served(cluster: LocalCluster):
    """Queued requests are re-admitted by their waiters, not left until their deadline."""
    rdb = redis.Redis.from_url(cluster.redis_url)
    body = {"model": MODEL, "prompt": "stall", "max_tokens": 2}

    def stall() -> None:
        # The client gives up after a few seconds: its disconnect frees the slot.
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{cluster.gateway_url}/v1/completions", json=body, timeout=6)

    with ThreadPoolExecutor(7) as pool:
        stalls = [pool.submit(stall) for _ in range(4)]  # every slot of both workers
        wait_for(lambda: _slots_in_use(cluster) == 4, "all slots busy", None, 10)
        queued = [pool.submit(stream_one, cluster.gateway_url) for _ in range(3)]
        wait_for(lambda: rdb.zcard(keys.queue(MODEL)) == 3, "three requests queued", None, 10)
        port = int(cluster.redis_url.rsplit(":", 1)[1].split("/")[0])
        proc = next(p for p in cluster.processes if p.name == "redis")
        proc.kill()
        cluster.processes.remove(proc)
        cluster.start_redis(port=port)
        rdb = redis.Redis.from_url(cluster.redis_url)
        # Each waiter renews every second (request_lease_seconds / 3), finds its entry gone and is
        # admitted again. How many wait at once is a race: Redis lost the stalls' slot leases too, so
        # a worker that has heartbeated back looks free and is granted a request, answers busy, and
        # the request waits again. Not re-admitted, they would wait for their 600 s deadline.
        for f in stalls:
            f.result(timeout=30)
        outcomes = [f.result(timeout=HANG_SECONDS) for f in queued]
    assert [o.kind for o in outcomes] == ["ok"] * 3
    assert max(o.seconds for o in outcomes) < 45  # long before the 600 s deadline
    assert rdb.zcard(keys.queue(MODEL)) == 0


def test_a_long_queued_request_is_retried_when_the_scheduler_restarts(cluster: LocalCluster):
    """The gateway's retry window opens when the scheduler goes away, not when the request came."""
    gateway = next(p for p in cluster.processes if p.name == "gateway")
    gateway.stop()
    cluster.processes.remove(gateway)
    cluster.start_gateway(scheduler_retry_seconds="5")
    body = {"model": MODEL, "prompt": "stall", "max_tokens": 2}

    def stall() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{cluster.gateway_url}/v1/completions", json=body, timeout=12)

    with ThreadPoolExecutor(5) as pool:
        for _ in range(4):
            pool.submit(stall)
        wait_for(lambda: _slots_in_use(cluster) == 4, "all slots busy", None, 10)
        queued = pool.submit(stream_one, cluster.gateway_url)
        time.sleep(6)  # queued for longer than the retry window
        port = int(cluster.scheduler_address.rsplit(":", 1)[1])
        proc = next(p for p in cluster.processes if p.name == "scheduler")
        proc.kill()
        cluster.processes.remove(proc)
        cluster.start_scheduler(port=port, worker_lease_seconds="2", request_lease_seconds="3")
        outcome = queued.result(timeout=HANG_SECONDS)
    assert outcome.kind == "ok", outcome
    assert outcome.text.startswith("w")


def test_the_launcher_restarts_a_crashed_worker(cluster: LocalCluster):
    """`make run` starts a crashed process again instead of stopping the cluster."""
    stop = threading.Event()
    supervisor = threading.Thread(target=cluster.supervise, args=(stop.is_set, 0.1))
    supervisor.start()
    try:
        w1 = next(p for p in cluster.processes if p.name == "w1")
        old_pid = w1.popen.pid
        w1.popen.send_signal(signal.SIGSEGV)  # as a worker crashed by a request would
        wait_for(lambda: w1.popen.pid != old_pid and w1.alive(), "w1 started again", None, 10)
        wait_for(lambda: len(cluster.ready_workers()) == 2, "w1 ready again", None, 30)
        assert w1.restarts == 1
        assert all(p.alive() for p in cluster.processes)
        assert stream_one(cluster.gateway_url).kind == "ok"
    finally:
        stop.set()
        supervisor.join()


def _slots_in_use(cluster: LocalCluster) -> int:
    text = httpx.get(cluster.metrics_urls["scheduler"], timeout=5).text
    return sum(
        int(float(line.split()[-1]))
        for line in text.splitlines()
        if line.startswith("hyperllama_scheduler_worker_slots{") and 'state="in_use"' in line
    )

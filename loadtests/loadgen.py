"""A small load generator for OpenAI- and Ollama-compatible servers (streaming).

It follows the methodology of vLLM's serving benchmark: each request streams a fixed number of output
tokens (the server is told to ignore end-of-sequence), and per request we record the time to first
token, every inter-token gap and the end-to-end latency. Load is a closed loop at a fixed concurrency
or an open loop with Poisson arrivals at a fixed rate.

    python loadtests/loadgen.py --url http://127.0.0.1:11434 --api openai --concurrency 8 --requests 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

# An unfinished sentence: raw continuations (Ollama has no ignore_eos) keep going.
PROMPT = "Once upon a time, in a small village by the sea, there lived"


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    gaps: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class RunSummary:
    requests_ok: int
    requests_failed: int
    duration_s: float
    output_tokens: int
    output_tok_per_s: float
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    latency_ms: dict[str, float]
    errors: list[str]


def percentiles(values: list[float], points: tuple[int, ...]) -> dict[str, float]:
    if not values:
        return {f"p{p}": 0.0 for p in points}
    ordered = sorted(values)
    return {
        f"p{p}": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 2) for p in points
    }


class Api:
    """How one API family asks for N tokens and reports them."""

    def __init__(self, kind: str, model: str, max_tokens: int, fixed_length: str):
        self.kind = kind
        self.model = model
        self.max_tokens = max_tokens
        self.fixed_length = fixed_length  # ignore_eos | logit_bias | none

    def request(self) -> tuple[str, dict[str, Any]]:
        if self.kind == "ollama":
            return "/api/generate", {
                "model": self.model,
                "prompt": PROMPT,
                "stream": True,
                "raw": True,
                # Ollama has no ignore_eos: a raw story prompt at temperature 0 keeps going.
                "options": {"num_predict": self.max_tokens, "temperature": 0},
            }
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": PROMPT,
            "stream": True,
            "max_tokens": self.max_tokens,
            "temperature": 0.8,
            "stream_options": {"include_usage": True},
        }
        if self.fixed_length == "ignore_eos":
            body["ignore_eos"] = True
        elif self.fixed_length == "logit_bias":  # servers without ignore_eos: forbid the EOS tokens
            body["logit_bias"] = {"0": -100, "2": -100, "4": -100}
        return "/v1/completions", body

    def parse(self, line: str) -> tuple[int, bool, int | None]:
        """(content events in this line, is this the end, final token count if reported)."""
        if self.kind == "ollama":
            if not line.strip():
                return 0, False, None
            obj = json.loads(line)
            if "error" in obj:
                raise RuntimeError(obj["error"])
            if obj.get("done"):
                return 0, True, obj.get("eval_count")
            return (1 if obj.get("response") else 0), False, None
        if not line.startswith("data: "):
            return 0, False, None
        data = line[6:]
        if data == "[DONE]":
            return 0, True, None
        obj = json.loads(data)
        if "error" in obj:
            raise RuntimeError(json.dumps(obj["error"]))
        usage = obj.get("usage")
        text = "".join(c.get("text") or "" for c in obj.get("choices", []))
        return (1 if text else 0), False, (usage or {}).get("completion_tokens")


async def one_request(client: httpx.AsyncClient, api: Api) -> RequestResult:
    path, body = api.request()
    started = time.perf_counter()
    last = started
    result = RequestResult(ok=False)
    events = 0
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                n, end, count = api.parse(line)
                now = time.perf_counter()
                if n:
                    if events == 0:
                        result.ttft = now - started
                    else:
                        result.gaps.append(now - last)
                    last = now
                    events += n
                if count is not None:
                    result.output_tokens = count
                if end:
                    break
        result.latency = time.perf_counter() - started
        result.output_tokens = result.output_tokens or events
        result.ok = result.output_tokens == api.max_tokens
        if not result.ok:
            result.error = f"expected {api.max_tokens} tokens, got {result.output_tokens}"
    except (httpx.HTTPError, RuntimeError, ValueError) as err:
        result.error = f"{type(err).__name__}: {err}"
    return result


async def run(
    url: str, api: Api, concurrency: int, requests: int, rate: float | None = None, timeout: float = 600
) -> RunSummary:
    """Closed loop with ``concurrency`` clients, or open loop at ``rate`` requests/s when given."""
    limits = httpx.Limits(max_connections=max(concurrency, 1) + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        results: list[RequestResult] = []
        started = time.perf_counter()
        if rate:
            tasks = []
            for _ in range(requests):
                tasks.append(asyncio.create_task(one_request(client, api)))
                await asyncio.sleep(random.expovariate(rate))
            results = list(await asyncio.gather(*tasks))
        else:
            remaining = requests

            async def client_loop() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    results.append(await one_request(client, api))

            await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        duration = time.perf_counter() - started
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    return RunSummary(
        requests_ok=len(ok),
        requests_failed=len(results) - len(ok),
        duration_s=round(duration, 3),
        output_tokens=tokens,
        output_tok_per_s=round(tokens / duration, 2) if duration else 0.0,
        ttft_ms=percentiles([r.ttft for r in ok], (50, 95, 99)),
        itl_ms=percentiles([g for r in ok for g in r.gaps], (50, 95)),
        latency_ms=percentiles([r.latency for r in ok], (50, 95, 99)),
        errors=sorted({r.error for r in results if not r.ok})[:5],
    )


def median_summary(runs: list[RunSummary]) -> RunSummary:
    """The run with the median throughput (so its percentiles belong together)."""
    return sorted(runs, key=lambda r: r.output_tok_per_s)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:11434")
    parser.add_argument("--api", choices=["openai", "ollama"], default="openai")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None, help="open loop: Poisson arrivals per second")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--fixed-length", choices=["ignore_eos", "logit_bias", "none"], default="ignore_eos")
    args = parser.parse_args()
    api = Api(args.api, args.model, args.max_tokens, args.fixed_length)
    summary = asyncio.run(run(args.url, api, args.concurrency, args.requests, args.rate))
    print(json.dumps(asdict(summary), indent=2))


if __name__ == "__main__":
    main()

"""A small load generator for OpenAI- and Ollama-compatible servers (streaming).

It follows the methodology of vLLM's serving benchmark: each request streams a fixed number of output
tokens (the server is told to ignore end-of-sequence), and per request we record the time to first
token, the time of the last token, the token count the server reports and the end-to-end latency.
Load is a closed loop at a fixed concurrency or an open loop with Poisson arrivals at a fixed rate.

Inter-token latency is per token: (last token's time - first token's time) / (completion tokens - 1)
for each request, the token count taken from the usage the stream reports, then percentiles over
requests. A server may put several tokens in one SSE event, so gaps between events are not gaps
between tokens; the per-event gaps are kept as a separate, labelled figure.

`hyperllama bench` runs it against a server (and optionally a second one, for a ratio); loadtests/bench.py
runs it against the cluster and its peers.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx

# An unfinished sentence: raw continuations (Ollama has no ignore_eos) keep going.
PROMPT = "Once upon a time, in a small village by the sea, there lived"

Messages = list[dict[str, str]]


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    latency: float = 0.0
    # Seconds from the request's start to the last event that carried text.
    last_token: float = 0.0
    output_tokens: int = 0
    # SSE events (or NDJSON lines) that carried text.
    events: int = 0
    # The server's usage figures, when it reports them (-1: not reported).
    prompt_tokens: int = -1
    cached_tokens: int = -1
    gaps: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def itl(self) -> float | None:
        return itl_per_token(self.ttft, self.last_token, self.output_tokens)


@dataclass
class RunSummary:
    requests_ok: int
    requests_failed: int
    duration_s: float
    output_tokens: int
    output_tok_per_s: float
    ttft_ms: dict[str, float]
    # Per token, per request: (last token - first token) / (tokens - 1); percentiles over requests.
    itl_ms: dict[str, float]
    # Gaps between consecutive text-carrying events, pooled over requests (not per token).
    itl_per_event_ms: dict[str, float]
    tokens_per_event: float
    latency_ms: dict[str, float]
    errors: list[str]


def itl_per_token(first: float, last: float, tokens: int) -> float | None:
    """Mean gap between tokens of one request; None when it has fewer than two tokens."""
    if tokens < 2:
        return None
    return (last - first) / (tokens - 1)


def percentiles(values: list[float], points: tuple[int, ...]) -> dict[str, float]:
    """Nearest-rank percentiles of seconds, in milliseconds."""
    if not values:
        return {f"p{p}": 0.0 for p in points}
    ordered = sorted(values)
    return {
        f"p{p}": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 2) for p in points
    }


class Event(NamedTuple):
    text: bool  # the event carried output text
    end: bool  # the stream is over
    usage: dict[str, Any] | None  # usage as the server reported it, in OpenAI's field names


class Api:
    """How one API family asks for N tokens and reports them."""

    def __init__(self, kind: str, model: str, max_tokens: int, fixed_length: str):
        self.kind = kind  # openai | ollama
        self.model = model
        self.max_tokens = max_tokens
        self.fixed_length = fixed_length  # ignore_eos | logit_bias | none

    def request(self, messages: Messages | None = None) -> tuple[str, dict[str, Any]]:
        """The path and body of one streaming request: a raw completion, or a chat when ``messages``."""
        if self.kind == "ollama":
            if messages is not None:
                return "/api/chat", {
                    "model": self.model,
                    "messages": messages,
                    "stream": True,
                    "options": {"num_predict": self.max_tokens, "temperature": 0},
                }
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
            "stream": True,
            "max_tokens": self.max_tokens,
            # llama.cpp's own sampling defaults, sent explicitly so that every peer samples alike
            # (left unset, /v1 here means OpenAI's: no top-k, top-p or min-p cut).
            "temperature": 0.8,
            "top_k": 40,
            "top_p": 0.95,
            "min_p": 0.05,
            "stream_options": {"include_usage": True},
        }
        if messages is not None:
            body["messages"] = messages
        else:
            body["prompt"] = PROMPT
        if self.fixed_length == "ignore_eos":
            body["ignore_eos"] = True
        elif self.fixed_length == "logit_bias":  # servers without ignore_eos: forbid the EOS tokens
            body["logit_bias"] = {"0": -100, "2": -100, "4": -100}
        return ("/v1/chat/completions" if messages is not None else "/v1/completions"), body

    def parse(self, line: str) -> Event:
        if self.kind == "ollama":
            if not line.strip():
                return Event(False, False, None)
            obj = json.loads(line)
            if "error" in obj:
                raise RuntimeError(obj["error"])
            text = obj.get("response") or (obj.get("message") or {}).get("content")
            if obj.get("done"):
                counts = {
                    "completion_tokens": obj.get("eval_count"),
                    "prompt_tokens": obj.get("prompt_eval_count"),
                }
                return Event(bool(text), True, counts)
            return Event(bool(text), False, None)
        if not line.startswith("data: "):
            return Event(False, False, None)
        data = line[6:]
        if data == "[DONE]":
            return Event(False, True, None)
        obj = json.loads(data)
        if "error" in obj:
            raise RuntimeError(json.dumps(obj["error"]))
        text = "".join(
            (c.get("text") or (c.get("delta") or {}).get("content") or "") for c in obj.get("choices") or []
        )
        return Event(bool(text), False, obj.get("usage") or None)


def apply_usage(result: RequestResult, usage: dict[str, Any]) -> None:
    if usage.get("completion_tokens") is not None:
        result.output_tokens = int(usage["completion_tokens"])
    if usage.get("prompt_tokens") is not None:
        result.prompt_tokens = int(usage["prompt_tokens"])
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is not None:
        result.cached_tokens = int(cached)


async def one_request(client: httpx.AsyncClient, api: Api, messages: Messages | None = None) -> RequestResult:
    path, body = api.request(messages)
    started = time.perf_counter()
    last = started
    result = RequestResult(ok=False)
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                event = api.parse(line)
                now = time.perf_counter()
                if event.text:
                    if result.events == 0:
                        result.ttft = now - started
                    else:
                        result.gaps.append(now - last)
                    last = now
                    result.last_token = now - started
                    result.events += 1
                if event.usage:
                    apply_usage(result, event.usage)
                if event.end:
                    break
        result.latency = time.perf_counter() - started
        # A server that reports no usage gets one token per text event (true of those that don't).
        result.output_tokens = result.output_tokens or result.events
        result.ok = result.output_tokens == api.max_tokens
        if not result.ok:
            result.error = f"expected {api.max_tokens} tokens, got {result.output_tokens}"
    except (httpx.HTTPError, RuntimeError, ValueError) as err:
        result.error = f"{type(err).__name__}: {err}"
    return result


def summarize(results: list[RequestResult], duration: float) -> RunSummary:
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    events = sum(r.events for r in ok)
    return RunSummary(
        requests_ok=len(ok),
        requests_failed=len(results) - len(ok),
        duration_s=round(duration, 3),
        output_tokens=tokens,
        output_tok_per_s=round(tokens / duration, 2) if duration else 0.0,
        ttft_ms=percentiles([r.ttft for r in ok], (50, 95, 99)),
        itl_ms=percentiles([i for r in ok if (i := r.itl) is not None], (50, 95)),
        itl_per_event_ms=percentiles([g for r in ok for g in r.gaps], (50, 95)),
        tokens_per_event=round(tokens / events, 2) if events else 0.0,
        latency_ms=percentiles([r.latency for r in ok], (50, 95, 99)),
        errors=sorted({r.error for r in results if not r.ok})[:5],
    )


async def run_detailed(
    url: str,
    api: Api,
    concurrency: int,
    requests: int,
    rate: float | None = None,
    timeout: float = 600,
    conversations: list[Messages] | None = None,
) -> tuple[RunSummary, list[RequestResult]]:
    """Closed loop with ``concurrency`` clients, or open loop at ``rate`` requests/s when given.

    With ``conversations`` each request is a chat with the next conversation, in order (``requests``
    is then their number); the results come back in that order.
    """
    if conversations is not None:
        requests = len(conversations)
    plan: list[Messages | None] = list(conversations) if conversations is not None else [None] * requests
    limits = httpx.Limits(max_connections=max(concurrency, 1) + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        results: list[RequestResult | None] = [None] * requests
        started = time.perf_counter()
        if rate:
            tasks = []
            for messages in plan:
                tasks.append(asyncio.create_task(one_request(client, api, messages)))
                await asyncio.sleep(random.expovariate(rate))
            results = list(await asyncio.gather(*tasks))
        else:
            queue = iter(range(requests))

            async def client_loop() -> None:
                for i in queue:  # shared iterator: each client takes the next request when it is free
                    results[i] = await one_request(client, api, plan[i])

            await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        duration = time.perf_counter() - started
    done = [r for r in results if r is not None]
    return summarize(done, duration), done


async def run(
    url: str,
    api: Api,
    concurrency: int,
    requests: int,
    rate: float | None = None,
    timeout: float = 600,
    conversations: list[Messages] | None = None,
) -> RunSummary:
    summary, _ = await run_detailed(url, api, concurrency, requests, rate, timeout, conversations)
    return summary


def median_summary(runs: list[RunSummary]) -> RunSummary:
    """The run with the median throughput (so its percentiles belong together)."""
    return sorted(runs, key=lambda r: r.output_tok_per_s)[len(runs) // 2]

"""A quick run of the load generator against the running cluster (the full benchmark is `make bench`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))

from hyperllama_cli.loadgen import Api, run, run_detailed
from prefix import make_tenants  # noqa: E402

from e2e.conftest import MODEL  # noqa: E402


async def test_closed_loop_openai(base_url: str):
    summary, results = await run_detailed(base_url, Api("openai", MODEL, 12, "ignore_eos"), 2, 4)
    assert summary.requests_ok == 4 and summary.requests_failed == 0
    assert summary.output_tokens == 48
    assert summary.output_tok_per_s > 0 and summary.ttft_ms["p50"] > 0
    assert summary.latency_ms["p50"] >= summary.ttft_ms["p50"]
    # ITL per token comes from the usage the stream reports, whatever the events carried.
    for r in results:
        assert r.output_tokens == 12 and r.prompt_tokens > 0 and 1 <= r.events <= 12
        assert r.itl is not None and r.itl == (r.last_token - r.ttft) / 11
    assert summary.itl_ms["p50"] > 0
    assert summary.tokens_per_event == round(48 / sum(r.events for r in results), 2)


async def test_open_loop_ollama(base_url: str):
    summary = await run(base_url, Api("ollama", MODEL, 8, "none"), concurrency=2, requests=3, rate=20.0)
    assert summary.requests_ok == 3 and summary.requests_failed == 0
    assert summary.output_tokens == 24


async def test_a_repeated_system_prompt_is_reported_as_cached(base_url: str):
    # The prefix benchmark's measurement: one tenant twice in a row on a worker that keeps its slots'
    # KV cache, so the second request's usage reports the system prompt as cached.
    tenant = make_tenants(1, 120, seed=0)[0]
    api = Api("openai", MODEL, 4, "ignore_eos")
    conversations = [tenant.conversation(0), tenant.conversation(1)]
    summary, results = await run_detailed(base_url, api, 1, 0, conversations=conversations)
    assert summary.requests_ok == 2
    first, second = results
    assert first.prompt_tokens > 0 and second.prompt_tokens > 0
    assert 0 < second.cached_tokens < second.prompt_tokens
    assert second.cached_tokens > first.cached_tokens

"""A quick run of the load generator against the running cluster (the full benchmark is `make bench`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))

from loadgen import Api, run  # noqa: E402

from e2e.conftest import MODEL  # noqa: E402


async def test_closed_loop_openai(base_url: str):
    summary = await run(base_url, Api("openai", MODEL, 12, "ignore_eos"), concurrency=2, requests=4)
    assert summary.requests_ok == 4 and summary.requests_failed == 0
    assert summary.output_tokens == 48
    assert summary.output_tok_per_s > 0 and summary.ttft_ms["p50"] > 0
    assert summary.latency_ms["p50"] >= summary.ttft_ms["p50"]


async def test_open_loop_ollama(base_url: str):
    summary = await run(base_url, Api("ollama", MODEL, 8, "none"), concurrency=2, requests=3, rate=20.0)
    assert summary.requests_ok == 3 and summary.requests_failed == 0
    assert summary.output_tokens == 24

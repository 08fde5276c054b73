"""The load generator's and the benchmark's own arithmetic: ITL per token, stream parsing, cost per token,
the shared-prefix mix."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))

import procstat  # noqa: E402
from hyperllama_cli.loadgen import Api, RequestResult, apply_usage, itl_per_token, summarize
from prefix import cache_hit_fraction, make_tenants, measured_plan, warmup_plan  # noqa: E402


def test_itl_per_token_spreads_first_to_last_over_the_gaps():
    assert itl_per_token(0.5, 1.5, 11) == 0.1
    assert itl_per_token(0.5, 0.5, 1) is None
    assert itl_per_token(0.5, 0.5, 0) is None


def streamed(event_sizes: list[int], gap: float, ttft: float = 0.05) -> RequestResult:
    """A request whose events carried ``event_sizes`` tokens, ``gap`` seconds apart."""
    n = len(event_sizes)
    return RequestResult(
        ok=True,
        ttft=ttft,
        last_token=ttft + gap * (n - 1),
        latency=ttft + gap * (n - 1),
        output_tokens=sum(event_sizes),
        events=n,
        gaps=[gap] * (n - 1),
    )


def test_a_server_that_batches_tokens_into_events_gets_a_per_token_itl():
    # The first token alone, then 4 tokens per event 40 ms apart: 10 ms a token.
    summary = summarize([streamed([1] + [4] * 8, 0.04), streamed([1] + [4] * 8, 0.04)], duration=1.0)
    assert summary.itl_ms["p50"] == 10.0
    assert summary.itl_per_event_ms["p50"] == 40.0
    assert summary.tokens_per_event == round(66 / 18, 2)
    assert summary.output_tokens == 66


def test_itl_is_the_median_over_requests_not_over_pooled_gaps():
    # One short fast request and two long slow ones: per request the median is the slow one.
    summary = summarize([streamed([1] * 3, 0.001), streamed([1] * 50, 0.02), streamed([1] * 50, 0.02)], 1.0)
    assert summary.itl_ms["p50"] == 20.0


def test_failed_requests_count_no_tokens():
    bad = RequestResult(ok=False, error="expected 8 tokens, got 3", output_tokens=3)
    summary = summarize([streamed([1] * 8, 0.01), bad], duration=2.0)
    assert (summary.requests_ok, summary.requests_failed, summary.output_tokens) == (1, 1, 8)
    assert summary.output_tok_per_s == 4.0
    assert summary.errors == ["expected 8 tokens, got 3"]


@given(st.lists(st.integers(min_value=1, max_value=16), min_size=2, max_size=64))
def test_itl_per_token_times_the_gaps_is_the_decode_span(sizes: list[int]):
    r = streamed(sizes, 0.01)
    itl = r.itl
    assert itl is not None
    assert abs(itl * (r.output_tokens - 1) - (r.last_token - r.ttft)) < 1e-9


def sse(obj: dict) -> str:
    return "data: " + json.dumps(obj)


def test_openai_stream_events_and_usage():
    api = Api("openai", "m", 4, "ignore_eos")
    text = api.parse(sse({"choices": [{"text": " there", "index": 0}]}))
    delta = api.parse(sse({"choices": [{"delta": {"content": "hi"}, "index": 0}]}))
    role_only = api.parse(sse({"choices": [{"delta": {"role": "assistant", "content": None}, "index": 0}]}))
    usage = {"completion_tokens": 4, "prompt_tokens": 30, "prompt_tokens_details": {"cached_tokens": 24}}
    final = api.parse(sse({"choices": [], "usage": usage}))
    assert text.text and delta.text and not role_only.text
    assert final.usage == usage and not final.text
    assert api.parse("data: [DONE]").end
    assert api.parse(": keep-alive") == (False, False, None)
    result = RequestResult(ok=False)
    apply_usage(result, final.usage)
    assert (result.output_tokens, result.prompt_tokens, result.cached_tokens) == (4, 30, 24)


def test_requests_ask_for_usage_in_the_stream():
    api = Api("openai", "m", 4, "ignore_eos")
    path, body = api.request()
    assert path == "/v1/completions" and body["stream_options"] == {"include_usage": True}
    path, body = api.request([{"role": "user", "content": "hi"}])
    assert path == "/v1/chat/completions" and body["messages"][0]["content"] == "hi" and body["ignore_eos"]


def test_ollama_final_line_carries_the_counts():
    api = Api("ollama", "m", 4, "none")
    assert api.parse(json.dumps({"response": "a", "done": False})).text
    final = api.parse(json.dumps({"done": True, "eval_count": 4, "prompt_eval_count": 9}))
    assert final.end and final.usage == {"completion_tokens": 4, "prompt_tokens": 9}


def test_cost_per_token_divides_each_process():
    costs = {"gateway": procstat.Cost(0.5, 2000), "worker": procstat.Cost(10.0, 100)}
    per = procstat.per_token(costs, 1000)
    assert per == {"gateway": {"cpu_ms": 0.5, "switches": 2.0}, "worker": {"cpu_ms": 10.0, "switches": 0.1}}
    assert procstat.per_token(costs, 0)["worker"]["cpu_ms"] == 10000.0  # no tokens: no division by zero


def test_cost_counts_new_threads_from_zero_and_leaves_out_gone_ones():
    before = procstat.Snapshot(1.0, {(1, 1): 100, (1, 2): 50})
    after = procstat.Snapshot(1.5, {(1, 1): 130, (1, 3): 7})
    assert procstat.cost(before, after) == procstat.Cost(0.5, 37)


def test_thread_switches_reads_both_counters():
    status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n"
    assert procstat.thread_switches(status) == 15


def test_a_process_snapshot_sums_every_threads_switches():
    # Another thread sleeps 100 times (a voluntary switch each) and stays alive: /proc/<pid>/status
    # counts only the main thread, the per-thread sum has the other thread's switches too.
    switched, finish = threading.Event(), threading.Event()

    def sleeper() -> None:
        for _ in range(100):
            finish.wait(0.0002)
        switched.set()
        finish.wait()

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        switched.wait()
        snap = procstat.snapshot(os.getpid())
        main_only = procstat.thread_switches(Path(f"/proc/{os.getpid()}/status").read_text())
    finally:
        finish.set()
        thread.join()
    assert snap.switches[(os.getpid(), thread.native_id)] >= 100
    assert sum(snap.switches.values()) >= main_only + 100
    assert snap.cpu_s > 0


def test_tenants_are_deterministic_distinct_and_long_enough():
    a = make_tenants(6, 120, seed=3)
    b = make_tenants(6, 120, seed=3)
    assert a == b
    assert len({t.system for t in a}) == 6
    assert len({t.system[:40] for t in a}) == 6  # they differ from the start, not only at the end
    assert all(t.system_tokens >= 120 for t in a)
    assert make_tenants(6, 120, seed=4) != a


def test_plans_send_every_tenant_once_then_each_n_times_in_a_seeded_order():
    tenants = make_tenants(4, 40, seed=0)
    warm = warmup_plan(tenants)
    assert [m[0]["content"] for m in warm] == [t.system for t in tenants]
    owners, plan = measured_plan(tenants, 3, seed=7)
    assert len(plan) == 12 and all(owners.count(t) == 3 for t in tenants)
    assert [m[0]["content"] for m in plan] == [t.system for t in owners]
    assert measured_plan(tenants, 3, seed=7)[0] == owners
    assert measured_plan(tenants, 3, seed=8)[0] != owners


def test_cache_hit_fraction_counts_requests_whose_cache_covers_the_system_prompt():
    t = make_tenants(1, 100, seed=0)[0]
    hit = RequestResult(ok=True, cached_tokens=int(0.95 * t.system_tokens) + 1)
    miss = RequestResult(ok=True, cached_tokens=int(0.5 * t.system_tokens))
    failed = RequestResult(ok=False, cached_tokens=t.system_tokens)
    assert cache_hit_fraction([t, t, t], [hit, miss, failed]) == 0.5
    assert cache_hit_fraction([t], [RequestResult(ok=True)]) is None  # the server reports no cache

"""Every service exports Prometheus metrics that reflect the requests it served."""

from __future__ import annotations

import httpx
import openai
import pytest
from hyperllama_cli.cluster import LocalCluster
from prometheus_client.parser import text_string_to_metric_families

from e2e.conftest import MODEL, SLOTS


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url, timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def total(samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def traffic(cluster: LocalCluster, oai: openai.OpenAI) -> None:
    oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    list(oai.completions.create(model=MODEL, prompt="Once upon", max_tokens=5, stream=True))
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="missing:1", messages=[{"role": "user", "content": "Hi"}])


def test_gateway_metrics(cluster: LocalCluster, traffic):
    m = scrape(cluster.metrics_urls["gateway"])
    assert total(m, "hyperllama_gateway_requests_total", endpoint="chat", model=MODEL, outcome="ok") >= 1
    assert total(m, "hyperllama_gateway_requests_total", endpoint="completions", outcome="ok") >= 1
    assert total(m, "hyperllama_gateway_requests_total", model="-", outcome="client_error") >= 1
    assert not any(n.startswith("hyperllama_gateway") and ("model", "missing:1") in ls for n, ls in m)
    assert total(m, "hyperllama_gateway_time_to_first_token_seconds_count", model=MODEL) >= 2
    assert total(m, "hyperllama_gateway_inter_token_latency_seconds_count", model=MODEL) >= 4
    assert total(m, "hyperllama_gateway_output_tokens_total", model=MODEL) >= 10
    assert total(m, "hyperllama_gateway_request_duration_seconds_count", model=MODEL) >= 2


def test_scheduler_metrics(cluster: LocalCluster, traffic):
    m = scrape(cluster.metrics_urls["scheduler"])
    assert total(m, "hyperllama_scheduler_dispatches_total", model=MODEL) >= 2
    assert total(m, "hyperllama_scheduler_queue_wait_seconds_count", model=MODEL) >= 2
    assert total(m, "hyperllama_scheduler_workers_ready", engine="llamacpp") == 1
    assert total(m, "hyperllama_scheduler_worker_slots", state="total") == SLOTS
    assert ("hyperllama_scheduler_queue_depth", frozenset({("model", MODEL)})) in m


def test_worker_metrics(cluster: LocalCluster, traffic):
    m = scrape(cluster.metrics_urls["worker-llamacpp-0"])
    labels = {"model": MODEL, "engine": "llamacpp", "pool": "cpu-0"}
    assert total(m, "hyperllama_worker_slots_total", **labels) == SLOTS
    assert total(m, "hyperllama_worker_model_loaded", **labels) == 1
    assert total(m, "hyperllama_worker_output_tokens_total", **labels) >= 10
    assert total(m, "hyperllama_worker_requests_total", outcome="ok", **labels) >= 2
    assert total(m, "hyperllama_worker_decode_step_seconds_count", **labels) >= 10
    assert total(m, "hyperllama_worker_time_to_first_token_seconds_count", **labels) >= 2


def test_labelled_counters_start_at_zero(cluster: LocalCluster, traffic):
    """Dashboards read 0, not "No data", for events that have not happened yet."""
    sched = scrape(cluster.metrics_urls["scheduler"])
    for name in (
        "hyperllama_scheduler_admissions_total",
        "hyperllama_scheduler_rejections_total",
        "hyperllama_scheduler_redispatches_total",
        "hyperllama_scheduler_deadline_exceeded_total",
    ):
        assert (name, frozenset({("model", MODEL)})) in sched, name
    assert (
        "hyperllama_scheduler_cancellations_total",
        frozenset({("model", MODEL), ("phase", "queued")}),
    ) in sched
    for phase in ("before_first_token", "mid_stream"):
        key = frozenset({("worker", "worker-llamacpp-0"), ("phase", phase)})
        assert ("hyperllama_scheduler_worker_failures_total", key) in sched
    gateway = scrape(cluster.metrics_urls["gateway"])
    for outcome in ("ok", "client_error", "rejected", "cancelled", "failed"):
        key = frozenset({("api", "ollama"), ("endpoint", "embed"), ("model", MODEL), ("outcome", outcome)})
        assert ("hyperllama_gateway_requests_total", key) in gateway, outcome
    worker = scrape(cluster.metrics_urls["worker-llamacpp-0"])
    for outcome in ("ok", "cancelled", "failed", "client_error"):
        assert total(worker, "hyperllama_worker_requests_total", model=MODEL, outcome=outcome) >= 0
        assert any(n == "hyperllama_worker_requests_total" and ("outcome", outcome) in ls for n, ls in worker)

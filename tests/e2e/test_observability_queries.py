"""Every series a Grafana panel or an alert rule reads is exported by the running cluster.

A dashboard that plots nothing is a defect: after real traffic (successes, a client error, a full queue,
clients that leave), each metric a query names must have samples on the gateway, scheduler or worker
endpoint, with every label the query filters or groups by.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import httpx
import pytest
from hyperllama_cli.cluster import LocalCluster
from prometheus_client.parser import text_string_to_metric_families
from support.promql import PROMETHEUS_SERIES, Query, dashboard_queries, rule_queries

from e2e.conftest import MODEL, QUEUE_MAX, SLOTS
from e2e.test_disconnect_and_queue import LONG, open_stream, until

# Failures this healthy cluster cannot be made to produce here (a worker dying, a deadline passing in the
# queue): their metrics must be declared, and get samples the first time it happens.
ONLY_ON_FAILURE = {
    "hyperllama_scheduler_worker_failures_total",
    "hyperllama_scheduler_redispatches_total",
    "hyperllama_scheduler_deadline_exceeded_total",
}
QUERIES = dashboard_queries() + rule_queries()


async def _traffic(base_url: str, scheduler_metrics: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:

        async def scheduler(name: str, **labels: str) -> float:
            return _value((await client.get(scheduler_metrics)).text, name, labels)

        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
        completion = {"model": MODEL, "prompt": "Once", "max_tokens": 6, "stream": True}
        async with client.stream("POST", "/v1/completions", json=completion) as r:
            assert r.status_code == 200
            await r.aread()
        ollama = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}}
        assert (await client.post("/api/generate", json=ollama)).status_code == 200
        missing = {**chat, "model": "missing:1"}
        assert (await client.post("/v1/chat/completions", json=missing)).status_code == 404

        # Fill every slot and the queue, get refused, then leave: rejections and both cancellation phases.
        running = [await open_stream(client, "/v1/completions", LONG) for _ in range(SLOTS)]
        # A queued /v1 stream starts at once (its place arrives as SSE comments).
        waiting = [await open_stream(client, "/v1/completions", LONG) for _ in range(QUEUE_MAX)]
        await until(lambda: _at_least(scheduler("hyperllama_scheduler_queue_depth"), QUEUE_MAX), timeout=30)
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 429
        for r in waiting:
            await r.aclose()
        for r in running:
            await r.aclose()
        # Leave the shared cluster idle for the tests after this one.
        in_use = {"state": "in_use"}
        await until(lambda: _at_most(scheduler("hyperllama_scheduler_worker_slots", **in_use), 0), timeout=30)
        await until(lambda: _at_most(scheduler("hyperllama_scheduler_queue_depth"), 0), timeout=30)


async def _at_least(value, n: float) -> bool:  # type: ignore[no-untyped-def]
    return await value >= n


async def _at_most(value, n: float) -> bool:  # type: ignore[no-untyped-def]
    return await value <= n


def _value(text: str, name: str, labels: dict[str, str]) -> float:
    want = labels.items()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and want <= s.labels.items()
    )


def _exported(urls: list[str]) -> tuple[set[str], dict[str, set[str]]]:
    """(series names each service declares, label names seen on the samples of each series name)."""
    declared: set[str] = set()
    labels: dict[str, set[str]] = defaultdict(set)
    for url in urls:
        for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(
                family.type, [""]
            )
            declared.update(family.name + s for s in suffixes)
            for sample in family.samples:
                labels[sample.name].update(sample.labels)
    return declared, labels


@pytest.fixture(scope="module")
def exported(cluster: LocalCluster) -> tuple[set[str], dict[str, set[str]]]:
    asyncio.run(_traffic(cluster.gateway_url, cluster.metrics_urls["scheduler"]))
    return _exported(list(cluster.metrics_urls.values()))


def test_queries_were_found():
    wheres = {q.where.split(":")[0] for q in QUERIES}
    assert {"overview.json", "workers.json", "model.json", "hyperllama.rules.yml"} <= wheres
    assert len(QUERIES) > 50


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.where)
def test_every_queried_series_is_exported_with_its_labels(query: Query, exported):
    declared, labels = exported
    for metric, needed in query.labels.items():
        if metric in PROMETHEUS_SERIES:
            continue
        assert metric in declared, f"{query.where}: no service exports {metric} ({query.expr})"
        if metric in ONLY_ON_FAILURE and metric not in labels:
            continue
        assert metric in labels, f"{query.where}: {metric} has no samples after real traffic"
        missing = needed - labels[metric]
        assert not missing, f"{query.where}: {metric} has no label {sorted(missing)} ({query.expr})"

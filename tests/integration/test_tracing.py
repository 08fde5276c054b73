"""One trace per request across gateway -> scheduler -> worker, exported over OTLP to a receiver
this test runs itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import pytest
from hyperllama_cli.cluster import LocalCluster, free_port
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

PROMPT = "Tell me about the secret word pineapple-42."


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (the gRPC method name)
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            {
                                "service": service,
                                "name": span.name,
                                "trace": span.trace_id.hex(),
                                "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attrs": {a.key: a.value for a in span.attributes},
                            }
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def traced_cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[LocalCluster, Receiver]]:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    cluster = LocalCluster(
        gateway_port=free_port(), log_dir=Path(tmp_path_factory.mktemp("traced")), env=env,
        # A Redis database of its own (integration 0, e2e 1, engines 2): no other cluster's workers.
        redis_url=redis_url.rsplit("/", 1)[0] + "/3",
    )  # fmt: skip
    try:
        cluster.start_scheduler()
        cluster.start_worker("worker-traced", slots="1")
        cluster.start_gateway()
        cluster.wait_ready(1)
        yield cluster, receiver
    finally:
        cluster.stop()
        server.stop(0)


def wait_for_trace(receiver: Receiver, services: set[str], timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with receiver.lock:
            by_trace: dict[str, list[dict]] = {}
            for s in receiver.spans:
                by_trace.setdefault(s["trace"], []).append(s)
        for spans in by_trace.values():
            if services <= {s["service"] for s in spans} and any(
                s["name"] == "llama.generate" for s in spans
            ):
                return spans
        time.sleep(0.1)
    raise TimeoutError(f"no trace with spans from {services}; got {len(receiver.spans)} spans")


def test_one_trace_across_the_three_services(traced_cluster):
    cluster, receiver = traced_cluster
    r = httpx.post(
        f"{cluster.gateway_url}/v1/chat/completions",
        json={"model": "smollm2:135m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6},
        timeout=60,
    )
    assert r.status_code == 200
    spans = wait_for_trace(receiver, {"gateway", "scheduler", "worker-llamacpp"})

    def chain_up(span: dict) -> list[dict]:
        """The span and its ancestors, as far as they have been exported."""
        with receiver.lock:
            every = {s["id"]: s for s in receiver.spans}
        chain = [span]
        while chain[-1]["parent"] in every:
            chain.append(every[chain[-1]["parent"]])
        return chain

    def rooted(span: dict) -> list[dict]:
        # Each service exports its spans in batches of its own: wait until the whole chain is in.
        deadline = time.monotonic() + 10
        while chain_up(span)[-1]["parent"] and time.monotonic() < deadline:
            time.sleep(0.1)
        return chain_up(span)

    # Walk from the engine's span up to the root: the worker's span, then the gateway's "generate"
    # (tokens flow worker -> gateway), then the gateway's HTTP server span.
    chain = rooted(next(s for s in spans if s["name"] == "llama.generate"))
    services = [s["service"] for s in chain]
    assert services[0] == "worker-llamacpp" and services[-1] == "gateway"
    assert "scheduler" not in services  # no token passes through the scheduler
    assert chain[-1]["parent"] == ""  # the gateway's HTTP server span is the root
    generate = next(s for s in chain if s["service"] == "gateway" and s["name"] == "generate")
    assert generate["attrs"]["gen_ai.request.model"].string_value == "smollm2:135m"
    assert generate["attrs"]["gen_ai.usage.output_tokens"].int_value == 6
    assert generate["attrs"]["gen_ai.usage.input_tokens"].int_value > 10

    # The scheduler's part, placing the request, is in the same trace under the same root.
    acquire = next(s for s in spans if s["service"] == "scheduler" and s["name"] == "acquire")
    assert acquire["attrs"]["hyperllama.queued"].bool_value is False  # an idle worker: no queue
    assert rooted(acquire)[-1]["id"] == chain[-1]["id"]
    # Prompts are user data: not recorded unless enabled.
    for s in spans:
        for value in s["attrs"].values():
            assert "pineapple" not in str(value)

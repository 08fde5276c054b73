"""OpenTelemetry tracing, configured from the standard OTEL_* variables.

Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, or
OTEL_TRACES_EXPORTER names ``otlp`` or ``console``; OTEL_TRACES_EXPORTER=none turns it off. Otherwise
every call below is a no-op: the tracer is OpenTelemetry's no-op tracer and no interceptor is added.
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and the exporter's own OTEL_EXPORTER_OTLP_* settings apply.
Spans propagate as W3C trace context in gRPC metadata and HTTP headers.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

# Heartbeats and health probes would drown the traces that matter.
_NOT_TRACED = filters.negate(
    filters.any_of(filters.service_prefix("hyperllama.scheduler.v1.RegistryService"), filters.health_check())
)


def _exporter() -> SpanExporter | None:
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp" or endpoint:
        if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").startswith("http"):
            return HttpExporter()
        return GrpcExporter()
    return None


class Tracing:
    def __init__(self, service_name: str, record_prompts: bool = False):
        self.record_prompts = record_prompts
        self._provider: TracerProvider | None = None
        exporter = _exporter()
        if exporter is not None:
            os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
            self._provider = TracerProvider(resource=Resource.create())
            self._provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(self._provider)
        self.tracer = trace.get_tracer(f"hyperllama.{service_name}")

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def server_interceptors(self) -> list[Any]:
        return [aio_server_interceptor(filter_=_NOT_TRACED)] if self.enabled else []

    def client_interceptors(self) -> list[Any]:
        return list(aio_client_interceptors(filter_=_NOT_TRACED)) if self.enabled else []

    def shutdown(self) -> None:
        """Flush the spans still buffered."""
        if self._provider is not None:
            self._provider.shutdown()

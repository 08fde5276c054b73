"""The gateway's Prometheus metrics, on a registry of its own (served at /metrics)."""

from __future__ import annotations

from hyperllama_common.errors import (
    Cancelled,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Buckets that fit LLM serving: from a few milliseconds to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1)

KNOWN_ENDPOINTS = {
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/completions": ("openai", "completions"),
    "/v1/responses": ("openai", "responses"),
    "/v1/embeddings": ("openai", "embeddings"),
    "/api/chat": ("ollama", "chat"),
    "/api/generate": ("ollama", "generate"),
    "/api/embed": ("ollama", "embed"),
    "/api/embeddings": ("ollama", "embeddings"),
}


def endpoint_labels(path: str) -> tuple[str, str]:
    """(api family, endpoint) for a generation or embedding route; ("other", "other") otherwise."""
    return KNOWN_ENDPOINTS.get(path, ("other", "other"))


OUTCOMES = ("ok", "client_error", "rejected", "cancelled", "failed")


def outcome_of(err: BaseException) -> str:
    if isinstance(err, (Overloaded, RateLimited)):
        return "rejected"
    if isinstance(err, (InvalidRequest, ModelNotFound, Unauthenticated, PermissionDenied)):
        return "client_error"
    if isinstance(err, Cancelled):
        return "cancelled"
    return "failed"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Model is "-" for client errors: their model name is whatever the client sent (unbounded).
        self.requests = Counter(
            "hyperllama_gateway_requests_total",
            "Requests by API family, endpoint, model and outcome "
            "(ok, client_error, rejected, cancelled, failed)",
            ["api", "endpoint", "model", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            "hyperllama_gateway_request_duration_seconds",
            "End-to-end latency of a request, queue wait included",
            ["api", "endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "hyperllama_gateway_time_to_first_token_seconds",
            "Time from request arrival to the first generated text",
            ["api", "model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "hyperllama_gateway_inter_token_latency_seconds",
            "Time between generated tokens as the client sees them",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "hyperllama_gateway_prompt_tokens_total", "Prompt tokens processed", ["model"], registry=r
        )
        self.output_tokens = Counter(
            "hyperllama_gateway_output_tokens_total", "Tokens generated", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "hyperllama_gateway_requests_in_flight", "Generations being served right now", registry=r
        )
        # Tenants are configuration (tenants.py), so they are bounded label values.
        self.tenant_requests = Counter(
            "hyperllama_gateway_tenant_requests_total",
            "Generation and embedding requests by tenant and outcome",
            ["tenant", "outcome"],
            registry=r,
        )
        self.tenant_tokens = Counter(
            "hyperllama_gateway_tenant_tokens_total",
            "Tokens charged to a tenant (kind: prompt or completion), cancelled streams included",
            ["tenant", "kind"],
            registry=r,
        )
        self.rate_limited = Counter(
            "hyperllama_gateway_rate_limited_total",
            "Requests refused by a tenant's limit (requests, tokens or concurrency)",
            ["tenant", "limit"],
            registry=r,
        )
        self.auth_failures = Counter(
            "hyperllama_gateway_auth_failures_total",
            "Requests refused for their credentials (reason: missing, invalid, forbidden)",
            ["reason"],
            registry=r,
        )
        self.usage_lost = Counter(
            "hyperllama_gateway_usage_lost_total",
            "Finished requests whose usage could not be recorded (Redis unreachable)",
            registry=r,
        )
        for reason in ("missing", "invalid", "forbidden"):
            self.auth_failures.labels(reason)

        # Models a request has been served for: the scheduler vouched for them, so they may be labels;
        # any other name is whatever a client sent and is counted under "-".
        self._served: set[str] = set()
        for api, endpoint in {*KNOWN_ENDPOINTS.values(), ("other", "other")}:
            self._start(api, endpoint, "-")

    def start_tenants(self, names: list[str]) -> None:
        for name in names:
            for outcome in OUTCOMES:
                self.tenant_requests.labels(name, outcome)
            for kind in ("prompt", "completion"):
                self.tenant_tokens.labels(name, kind)
            for limit in ("requests", "tokens", "concurrency"):
                self.rate_limited.labels(name, limit)

    def _start(self, api: str, endpoint: str, model: str) -> None:
        """Create the series of every outcome at 0, so dashboards read 0 rather than "No data"."""
        for outcome in OUTCOMES:
            self.requests.labels(api, endpoint, model, outcome)

    def record(self, path: str, model: str, outcome: str, seconds: float | None = None) -> None:
        api, endpoint = endpoint_labels(path)
        if outcome == "ok" and api != "other" and model not in self._served:
            self._served.add(model)
            for known_api, known_endpoint in KNOWN_ENDPOINTS.values():
                self._start(known_api, known_endpoint, model)
        if api == "other" or model not in self._served:
            model = "-"
        self.requests.labels(api, endpoint, model, outcome).inc()
        if seconds is not None and outcome == "ok":
            self.request_duration.labels(api, endpoint, model).observe(seconds)

"""The metrics every worker exports, whatever its engine (hyperllama_worker_*), on a registry of its own
served on the worker's metrics port. One definition, so dashboards and alerts work for every engine;
the decode-step and batch histograms are filled by engines whose decode loop the worker runs itself."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STEP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
OUTCOMES = ("ok", "cancelled", "failed", "client_error")


class WorkerMetrics:
    """Every series carries the worker's engine and pool, so dashboards can group by them."""

    def __init__(self, engine: str, pool: str) -> None:
        self.engine = engine
        self.pool = pool
        self.registry = r = CollectorRegistry()
        labels = ["model", "engine", "pool"]
        self.model_loaded = Gauge(
            "hyperllama_worker_model_loaded", "1 for each model this worker serves", labels, registry=r
        )
        self.slots_total = Gauge("hyperllama_worker_slots_total", "Sequence slots", labels, registry=r)
        self.slots_in_use = Gauge("hyperllama_worker_slots_in_use", "Slots decoding now", labels, registry=r)
        self.requests = Counter(
            "hyperllama_worker_requests_total",
            "Generations by outcome (ok, cancelled, failed, client_error)",
            [*labels, "outcome"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "hyperllama_worker_prompt_tokens_total", "Prompt tokens read", labels, registry=r
        )
        self.cached_prompt_tokens = Counter(
            "hyperllama_worker_cached_prompt_tokens_total",
            "Prompt tokens whose KV cache was reused from an earlier request",
            labels,
            registry=r,
        )
        self.prefix_copies = Counter(
            "hyperllama_worker_prefix_copies_total",
            "Cached prompt prefixes copied from another slot or the prompt cache instead of prefilled again",
            labels,
            registry=r,
        )
        self.prompt_cache_bytes = Gauge(
            "hyperllama_worker_prompt_cache_bytes",
            "Host memory holding the KV cells of prompts that slots gave up",
            labels,
            registry=r,
        )
        self.output_tokens = Counter(
            "hyperllama_worker_output_tokens_total", "Tokens generated", labels, registry=r
        )
        self.ttft = Histogram(
            "hyperllama_worker_time_to_first_token_seconds",
            "From arrival at the worker to the first sampled token",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.decode_step = Histogram(
            "hyperllama_worker_decode_step_seconds",
            "Duration of one llama_decode step (all running sequences together)",
            labels,
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "hyperllama_worker_batch_tokens",
            "Tokens fed in one decode step",
            labels,
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)


class ModelMetrics:
    """The worker's metrics with the label values of one model already bound."""

    def __init__(self, m: WorkerMetrics, model: str):
        self.registry = m.registry
        values = (model, m.engine, m.pool)
        m.model_loaded.labels(*values).set(1)
        self.slots_total = m.slots_total.labels(*values)
        self.slots_in_use = m.slots_in_use.labels(*values)
        self.prompt_tokens = m.prompt_tokens.labels(*values)
        self.cached_prompt_tokens = m.cached_prompt_tokens.labels(*values)
        self.prefix_copies = m.prefix_copies.labels(*values)
        self.prompt_cache_bytes = m.prompt_cache_bytes.labels(*values)
        self.output_tokens = m.output_tokens.labels(*values)
        self.ttft = m.ttft.labels(*values)
        self.decode_step = m.decode_step.labels(*values)
        self.batch_tokens = m.batch_tokens.labels(*values)
        self._requests = m.requests
        self._values = values
        for outcome in OUTCOMES:  # known up front: start at 0 so dashboards never read "No data"
            m.requests.labels(*values, outcome)

    def request(self, outcome: str) -> None:
        self._requests.labels(*self._values, outcome).inc()

"""The scheduler's Prometheus metrics, on a registry of its own (served on the metrics port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LOAD_OUTCOMES = ("ok", "failed", "no_room")
UNLOAD_REASONS = ("keep_alive", "evicted", "requested")

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.queue_depth = Gauge(
            "hyperllama_scheduler_queue_depth", "Requests waiting in the queue", ["model"], registry=r
        )
        self.queue_oldest_wait = Gauge(
            "hyperllama_scheduler_queue_oldest_wait_seconds",
            "How long the oldest waiting request (whichever replica holds it) has been waiting",
            ["model"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "hyperllama_scheduler_queue_wait_seconds",
            "Time from admission to a slot lease",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.admissions = Counter(
            "hyperllama_scheduler_admissions_total", "Requests admitted to the queue", ["model"], registry=r
        )
        self.rejections = Counter(
            "hyperllama_scheduler_rejections_total", "Requests refused: queue full", ["model"], registry=r
        )
        self.dispatches = Counter(
            "hyperllama_scheduler_dispatches_total",
            "Slot leases granted, by worker",
            ["model", "worker"],
            registry=r,
        )
        self.redispatches = Counter(
            "hyperllama_scheduler_redispatches_total",
            "Requests placed again after their worker failed before the first token",
            ["model"],
            registry=r,
        )
        self.cancellations = Counter(
            "hyperllama_scheduler_cancellations_total",
            "Requests whose caller left while they waited, by phase (queued); a running stream's "
            "cancellation is the gateway's (hyperllama_gateway_requests_total outcome=cancelled)",
            ["model", "phase"],
            registry=r,
        )
        self.deadlines_exceeded = Counter(
            "hyperllama_scheduler_deadline_exceeded_total",
            "Requests whose deadline passed while queued",
            ["model"],
            registry=r,
        )
        self.worker_failures = Counter(
            "hyperllama_scheduler_worker_failures_total",
            "Worker calls that broke or found no worker, as gateways report them, by phase "
            "(before_first_token, mid_stream)",
            ["worker", "phase"],
            registry=r,
        )
        self.redis_errors = Counter(
            "hyperllama_scheduler_redis_errors_total", "Redis operations that failed", registry=r
        )
        self.workers_ready = Gauge(
            "hyperllama_scheduler_workers_ready",
            "Live workers that report ready, by engine and pool",
            ["engine", "pool"],
            registry=r,
        )
        self.worker_slots = Gauge(
            "hyperllama_scheduler_worker_slots",
            "Slots of each live worker as last reported, by state (total, in_use)",
            ["worker", "engine", "pool", "state"],
            registry=r,
        )
        self.loads = Counter(
            "hyperllama_scheduler_model_loads_total",
            "Loads of a model on a worker, by outcome (ok, failed, no_room)",
            ["outcome"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "hyperllama_scheduler_model_load_seconds",
            "From deciding a load to the model serving on its worker (fetching blobs included)",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.unloads = Counter(
            "hyperllama_scheduler_model_unloads_total",
            "Models unloaded from a worker, by reason (keep_alive, evicted, requested)",
            ["reason"],
            registry=r,
        )
        self.unload_seconds = Histogram(
            "hyperllama_scheduler_model_unload_seconds",
            "From asking a worker to unload a copy to its answer, by reason",
            ["reason"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.loaded_models = Gauge(
            "hyperllama_scheduler_loaded_models",
            "Models loaded on each live worker",
            ["worker"],
            registry=r,
        )
        for outcome in LOAD_OUTCOMES:
            self.loads.labels(outcome)
        for reason in UNLOAD_REASONS:
            self.unloads.labels(reason)
            self.unload_seconds.labels(reason)

    def start_model(self, model: str) -> None:
        """Create a model's labelled series at 0, so dashboards read 0 rather than "No data" until
        the first event (labels are only known once a worker reports the model)."""
        for counter in (self.admissions, self.rejections, self.redispatches, self.deadlines_exceeded):
            counter.labels(model)
        self.cancellations.labels(model, "queued")
        self.queue_wait.labels(model)

    def start_worker(self, worker: str, models: list[str]) -> None:
        for phase in ("before_first_token", "mid_stream"):
            self.worker_failures.labels(worker, phase)
        for model in models:
            self.dispatches.labels(model, worker)

"""The store's Prometheus metrics, on a registry of its own (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hyperllama_store.layout import Layout

UPLOAD_OUTCOMES = ("created", "exists", "mismatch", "quota", "failed")
# How a pull or push ended; "cancelled" is a transfer stopped by the store's shutdown or its client leaving.
TRANSFER_OUTCOMES = (
    "success",
    "not_found",
    "invalid",
    "unauthorized",
    "unreachable",
    "mismatch",
    "failed",
    "cancelled",
)
_TRANSFER_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class StoreMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.store_bytes = Gauge("hyperllama_store_bytes", "Bytes taken by the store's blobs", registry=r)
        self.blobs = Gauge("hyperllama_store_blobs", "Blobs in the store", registry=r)
        self.models = Gauge("hyperllama_store_models", "Models (manifests) in the store", registry=r)
        self.uploads = Counter(
            "hyperllama_store_uploads_total",
            "Blob uploads by outcome (created, exists, mismatch, quota, failed)",
            ["outcome"],
            registry=r,
        )
        self.upload_bytes = Counter(
            "hyperllama_store_upload_bytes_total", "Bytes of blobs created by uploads", registry=r
        )
        for outcome in UPLOAD_OUTCOMES:
            self.uploads.labels(outcome)
        self.pulls = Counter(
            "hyperllama_store_pulls_total", "Pulls from registries by outcome", ["outcome"], registry=r
        )
        self.pull_bytes = Counter(
            "hyperllama_store_pull_bytes_total", "Blob bytes downloaded from registries", registry=r
        )
        self.pull_seconds = Histogram(
            "hyperllama_store_pull_seconds", "Time a pull took", buckets=_TRANSFER_BUCKETS, registry=r
        )
        self.pushes = Counter(
            "hyperllama_store_pushes_total", "Pushes to registries by outcome", ["outcome"], registry=r
        )
        self.push_bytes = Counter(
            "hyperllama_store_push_bytes_total", "Blob bytes uploaded to registries", registry=r
        )
        self.push_seconds = Histogram(
            "hyperllama_store_push_seconds", "Time a push took", buckets=_TRANSFER_BUCKETS, registry=r
        )
        for outcome in TRANSFER_OUTCOMES:
            self.pulls.labels(outcome)
            self.pushes.labels(outcome)

    def observe(self, layout: Layout) -> None:
        """Read the store's size from disk (at scrape time: another process may share the folder)."""
        blobs = layout.blob_digests()
        self.store_bytes.set(sum(blobs.values()))
        self.blobs.set(len(blobs))
        self.models.set(len(layout.list_manifests()))

"""The store's Prometheus metrics, on a registry of its own (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from hyperllama_store.layout import Layout

UPLOAD_OUTCOMES = ("created", "exists", "mismatch", "quota", "failed")


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

    def observe(self, layout: Layout) -> None:
        """Read the store's size from disk (at scrape time: another process may share the folder)."""
        blobs = layout.blob_digests()
        self.store_bytes.set(sum(blobs.values()))
        self.blobs.set(len(blobs))
        self.models.set(len(layout.list_manifests()))

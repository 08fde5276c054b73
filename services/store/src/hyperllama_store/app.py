"""The store's FastAPI app; its state comes in from ``main()``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.exceptions import RequestValidationError
from hyperllama_common.errors import HyperLlamaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from hyperllama_store import errors, oci, routes, transfer_routes
from hyperllama_store.bundled import import_bundled
from hyperllama_store.jobs import Jobs
from hyperllama_store.metrics import StoreMetrics
from hyperllama_store.registry import DownloadOptions, Transfers
from hyperllama_store.settings import StoreSettings
from hyperllama_store.store import Store

log = logging.getLogger(__name__)


def create_transfers(settings: StoreSettings, metrics: StoreMetrics) -> Transfers:
    """The process's one registry client: its single-flight table makes concurrent pulls of a model fetch
    each blob once."""
    return Transfers(
        credentials=settings.registry_credentials(),
        download=DownloadOptions(part_size=settings.pull_part_bytes, concurrency=settings.pull_concurrency),
        on_pull_bytes=metrics.pull_bytes.inc,
        on_push_bytes=metrics.push_bytes.inc,
    )


def create_app(settings: StoreSettings, store: Store) -> FastAPI:
    metrics = StoreMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.store = store
        app.state.metrics = metrics
        app.state.transfers = transfers = create_transfers(settings, metrics)
        app.state.jobs = jobs = Jobs()
        try:
            if settings.import_bundled:
                # Before the first request: a fresh store lists the default model from the start.
                await import_bundled(store)
            yield
        finally:
            if len(jobs):
                log.info("stopping %d transfers; their partial downloads stay for a later pull", len(jobs))
            await jobs.aclose()
            await transfers.aclose()

    app = FastAPI(title="HyperLlama model store", lifespan=lifespan)
    app.include_router(routes.router)
    app.include_router(transfer_routes.router)
    app.include_router(oci.router)
    app.add_exception_handler(HyperLlamaError, errors.on_store_error)
    app.add_exception_handler(errors.OCIError, errors.on_oci_error)
    app.add_exception_handler(RequestValidationError, errors.on_validation_error)
    app.add_exception_handler(HTTPException, errors.on_http_error)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        await asyncio.to_thread(metrics.observe, store.layout)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app

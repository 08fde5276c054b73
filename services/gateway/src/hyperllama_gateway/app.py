"""Building the FastAPI application: routers, error handlers, body limit, scheduler and worker clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as redis
from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from hyperllama_common.tracing import Tracing
from hyperllama_common.worker_client import WorkerClients
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hyperllama_gateway import __version__, errors, ops
from hyperllama_gateway.admin import router as admin_router
from hyperllama_gateway.api_keys import ApiKeys
from hyperllama_gateway.auth import Authenticate, Authenticator
from hyperllama_gateway.dispatch import Dispatch
from hyperllama_gateway.edge import RequestEdge
from hyperllama_gateway.metrics import GatewayMetrics
from hyperllama_gateway.ollama.router import router as ollama_router
from hyperllama_gateway.ollama.store_router import router as ollama_store_router
from hyperllama_gateway.openai.router import router as openai_router
from hyperllama_gateway.quotas import Quotas
from hyperllama_gateway.registry_proxy import router as registry_router
from hyperllama_gateway.request_body import BodySizeLimit, JsonBodies, is_blob_upload
from hyperllama_gateway.scheduler_client import SchedulerClient
from hyperllama_gateway.settings import GatewaySettings
from hyperllama_gateway.store_client import StoreClient
from hyperllama_gateway.tenants import Tenants


def create_app(settings: GatewaySettings) -> FastAPI:
    metrics = GatewayMetrics()
    tracing = Tracing("gateway", settings.trace_prompts)
    # Bad auth configuration stops the start here, with the reason, rather than at the first request.
    admin_key = settings.admin_key_value()
    tenants = Tenants.load(settings.tenants_file)
    authenticator = None
    keys = quotas = None
    redis_client = None
    if settings.auth:
        redis_client = redis.Redis.from_url(settings.redis_url.get_secret_value())
        keys = ApiKeys(redis_client)
        quotas = Quotas(redis_client, metrics, settings.request_timeout_seconds)
        authenticator = Authenticator(admin_key, keys, tenants)
        metrics.start_tenants(tenants.names())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.metrics = metrics
        app.state.tenants = tenants
        app.state.keys = keys
        app.state.quotas = quotas
        app.state.scheduler = SchedulerClient(
            settings.scheduler_address,
            settings.control_timeout_seconds,
            settings.scheduler_retry_seconds,
            tracing.client_interceptors(),
        )
        app.state.dispatch = Dispatch(
            app.state.scheduler,
            WorkerClients(tracing.client_interceptors()),
            settings.max_redispatch,
            tracing,
        )
        app.state.store = StoreClient(
            settings.store_url, settings.store_timeout_seconds, settings.store_stream_idle_seconds
        )
        yield
        if quotas is not None:
            await quotas.drain()
        if redis_client is not None:
            await redis_client.aclose()
        await app.state.store.close()
        await app.state.dispatch.close()
        await app.state.scheduler.close()
        tracing.shutdown()

    app = FastAPI(title="HyperLlama", version=__version__, lifespan=lifespan)
    app.include_router(ops.router)
    app.include_router(openai_router)
    app.include_router(ollama_router)
    app.include_router(ollama_store_router)
    app.include_router(registry_router)
    app.include_router(admin_router)
    errors.install(app)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if tracing.enabled:
        # The server span of a streamed response ends when its last byte is sent.
        FastAPIInstrumentor.instrument_app(app, excluded_urls="health,ready,metrics")
    app.add_middleware(JsonBodies)
    # Blob uploads stream to the store, which enforces its own quota; every JSON body is bounded.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, exempt=is_blob_upload)
    app.add_middleware(Authenticate, authenticator=authenticator, metrics=metrics)
    origins = settings.cors_origin_list()
    if origins:
        # Outside authentication: a browser's preflight carries no key. Keys travel in a header,
        # never a cookie, so credentials are never allowed (and so never with "*").
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
            allow_headers=["*"],
        )
    # Outermost: even a refused body gets its X-Request-Id echoed.
    app.add_middleware(RequestEdge)
    return app

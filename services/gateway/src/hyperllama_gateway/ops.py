"""Operational routes: liveness, readiness, the queue, the workers, and the root probes of Ollama clients."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from hyperllama_common.errors import HyperLlamaError

from hyperllama_gateway.deps import Scheduler, TenantDep

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """The gateway process is alive (it says nothing about the rest of the cluster)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(scheduler: Scheduler) -> JSONResponse:
    """200 only when the scheduler answers and at least one worker is ready."""
    try:
        workers = await scheduler.list_workers()
    except HyperLlamaError as err:
        return JSONResponse({"status": "unavailable", "reason": err.message}, status_code=503)
    ready_workers = [w.worker_id for w in workers if w.ready]
    if not ready_workers:
        return JSONResponse({"status": "unavailable", "reason": "no worker is ready"}, status_code=503)
    return JSONResponse({"status": "ready", "workers": ready_workers})


@router.get("/api/queue")
async def queue(scheduler: Scheduler, tenant: TenantDep) -> dict[str, Any]:
    """Per model: requests waiting, the longest wait so far, the estimated wait of a request sent
    now (0: no estimate yet), and the slots of its workers (leased to running streams, total)."""
    return {
        "models": [
            {
                "model": q.model,
                "queued": q.depth,
                "oldest_wait_ms": q.oldest_wait_ms,
                "eta_ms": q.eta_ms,
                "slots_in_use": q.slots_leased,
                "slots_total": q.slots_total,
            }
            for q in await scheduler.queue_status()
            if tenant.allows(q.model)
        ]
    }


@router.get("/api/workers")
async def workers(scheduler: Scheduler) -> dict[str, Any]:
    """The live workers as the scheduler's registry sees them: engine, pool, the models each holds
    or is loading, its slots and its memory (HyperLlama's own route; Ollama has no workers)."""
    return {
        "workers": [
            {
                "worker": w.worker_id,
                "address": w.address,
                "engine": w.engine,
                "pool": w.pool,
                "ready": w.ready,
                "models": [m.name for m in w.models],
                "loading": [m.name for m in w.loading],
                "slots_in_use": w.slots_in_use,
                "slots_total": w.slots_total,
                "memory_used": w.memory_used_bytes,
                "memory_budget": w.memory_budget_bytes,
                "formats": list(w.formats),
                "capabilities": list(w.capabilities),
            }
            for w in sorted(await scheduler.list_workers(), key=lambda w: w.worker_id)
        ]
    }


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> PlainTextResponse:
    return PlainTextResponse("Ollama is running")

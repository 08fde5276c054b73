"""Which worker loads a model no worker serves yet, and which idle models it unloads to make room.

Pure functions over what workers report in their heartbeats: the formats their engine loads, their
memory budget and what their models take of it, and how a new model would be sized there (its KV
cache tokens and fixed overhead). The scheduler never branches on an engine's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyperllama.worker.v1 import worker_pb2


@dataclass(frozen=True)
class CatalogModel:
    """What placement needs to know of a model in the store."""

    name: str
    digest: str
    format: str
    size: int
    kv_bytes_per_token: int
    blobs: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadPlan:
    worker: worker_pb2.WorkerInfo
    evict: tuple[str, ...] = ()


def footprint(model: CatalogModel, worker: worker_pb2.WorkerInfo) -> int:
    """What the model would take of the worker's budget: weights, its slots' KV cache, buffers."""
    return (
        model.size + model.kv_bytes_per_token * worker.kv_tokens_per_model + worker.overhead_bytes_per_model
    )


def can_host(model: CatalogModel, worker: worker_pb2.WorkerInfo) -> bool:
    """The worker's engine loads the model's format and its whole budget could hold it."""
    return (
        model.format in worker.formats
        and worker.kv_tokens_per_model > 0
        and footprint(model, worker) <= worker.memory_budget_bytes
    )


def free_bytes(worker: worker_pb2.WorkerInfo) -> int:
    return worker.memory_budget_bytes - worker.memory_used_bytes


def victims(
    model: CatalogModel,
    worker: worker_pb2.WorkerInfo,
    busy: set[str],
    last_used_ms: dict[str, int],
    now_ms: int,
) -> tuple[str, ...] | None:
    """The idle models to unload so that ``model`` fits, fewest first by eviction order; None if
    even all of them would not make room. Order: longest idle per byte to load again first (a big
    model costs more to reload than a small one idle as long), so it is least recently used first,
    weighted by reload cost. Busy and pinned models are never chosen."""
    needed = footprint(model, worker) - free_bytes(worker)
    # A worker that holds at most max_models (one engine, one model) must also get below that; a model
    # it is loading is never chosen.
    extra = len(worker.models) + len(worker.loading) + 1 - worker.max_models if worker.max_models else 0
    if needed <= 0 and extra <= 0:
        return ()
    idle = [m for m in worker.models if m.name not in busy and not m.pinned]

    def idle_per_byte(m: worker_pb2.ModelInfo) -> float:
        idle_ms = now_ms - last_used_ms.get(m.name, 0)
        return idle_ms / max(1, m.memory_bytes or m.size_bytes)

    chosen: list[str] = []
    for m in sorted(idle, key=idle_per_byte, reverse=True):
        if needed <= 0 and extra <= 0:
            break
        chosen.append(m.name)
        needed -= m.memory_bytes
        extra -= 1
    return tuple(chosen) if needed <= 0 and extra <= 0 else None


def plan_load(
    model: CatalogModel,
    workers: list[worker_pb2.WorkerInfo],
    busy: dict[str, set[str]],
    last_used_ms: dict[str, dict[str, int]],
    now_ms: int,
) -> LoadPlan | None:
    """The best worker to load ``model`` on, and what it must unload first; None if none can now.
    Best: nothing to unload, then its blobs already there (nothing to fetch), then most room."""
    plans = []
    for w in workers:
        if not can_host(model, w) or any(m.name == model.name for m in [*w.models, *w.loading]):
            continue
        evict = victims(model, w, busy.get(w.worker_id, set()), last_used_ms.get(w.worker_id, {}), now_ms)
        if evict is None:
            continue
        cached = bool(model.blobs) and all(b in w.blobs for b in model.blobs)
        plans.append(((len(evict), not cached, -free_bytes(w)), LoadPlan(w, evict)))
    if not plans:
        return None
    return min(plans, key=lambda p: p[0])[1]

"""The worker registry: live workers, their models and slots, leases renewed by heartbeats."""

from __future__ import annotations

import time
from typing import cast

import redis.asyncio as redis
from hyperllama.worker.v1 import worker_pb2

from hyperllama_scheduler import keys
from hyperllama_scheduler.metrics import SchedulerMetrics
from hyperllama_scheduler.queue import redis_errors_as_unavailable

# How stale the in-process copy of the registry may get before it is read from Redis again.
_CACHE_SECONDS = 1.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class WorkerRegistry:
    def __init__(self, client: redis.Redis, lease_seconds: float, metrics: SchedulerMetrics):
        self._redis = client
        self.metrics = metrics
        self.lease_ms = int(lease_seconds * 1000)
        self._workers: dict[str, tuple[worker_pb2.WorkerInfo, int]] = {}  # id -> (info, lease expiry)
        self._read_at = 0.0
        # Workers whose call broke (a crash, a lost connection) or that said their engine is not
        # ready: no new work until their next heartbeat. Shared through Redis (keys.worker_suspect);
        # this copy is refreshed with the registry.
        self._suspect: set[str] = set()

    @redis_errors_as_unavailable
    async def heartbeat(self, info: worker_pb2.WorkerInfo) -> None:
        expires = _now_ms() + self.lease_ms
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.psetex(keys.worker(info.worker_id), self.lease_ms, info.SerializeToString())
            pipe.zadd(keys.WORKERS, {info.worker_id: expires})
            pipe.delete(keys.worker_suspect(info.worker_id), keys.worker_full(info.worker_id))
            await pipe.execute()
        self._workers[info.worker_id] = (info, expires)
        self._suspect.discard(info.worker_id)

    @redis_errors_as_unavailable
    async def deregister(self, worker_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.WORKERS, worker_id)
            pipe.delete(keys.worker(worker_id))
            await pipe.execute()
        self._workers.pop(worker_id, None)

    @redis_errors_as_unavailable
    async def mark_unhealthy(self, worker_id: str) -> None:
        """Only for a broken call (transport failure, crash) or a worker that says it is not ready,
        never for an error about one request."""
        self._suspect.add(worker_id)
        await self._redis.psetex(keys.worker_suspect(worker_id), self.lease_ms, "1")

    @redis_errors_as_unavailable
    async def mark_full(self, worker_id: str) -> None:
        """The worker answered busy: nothing new for it until a slot there is released or its next
        heartbeat says what is free."""
        await self._redis.psetex(keys.worker_full(worker_id), self.lease_ms, "1")

    @redis_errors_as_unavailable
    async def clear_full(self, worker_id: str) -> None:
        await self._redis.delete(keys.worker_full(worker_id))

    @redis_errors_as_unavailable
    async def _refresh(self) -> None:
        now = _now_ms()
        await self._redis.zremrangebyscore(keys.WORKERS, "-inf", now)
        ranked = cast(
            list[tuple[bytes, float]], await self._redis.zrange(keys.WORKERS, 0, -1, withscores=True)
        )
        ids = [member.decode() for member, _ in ranked]
        blobs = await self._redis.mget([keys.worker(i) for i in ids]) if ids else []
        suspect = await self._redis.mget([keys.worker_suspect(i) for i in ids]) if ids else []
        workers: dict[str, tuple[worker_pb2.WorkerInfo, int]] = {}
        for wid, (_, expires), blob in zip(ids, ranked, blobs, strict=True):
            if blob:
                workers[wid] = (worker_pb2.WorkerInfo.FromString(blob), int(expires))
        self._workers = workers
        self._suspect = {wid for wid, flag in zip(ids, suspect, strict=True) if flag}
        self._read_at = time.monotonic()

    async def live(self, fresh: bool = False) -> list[worker_pb2.WorkerInfo]:
        """Workers whose lease holds, that report ready and have not just failed a call."""
        if fresh or time.monotonic() - self._read_at > _CACHE_SECONDS:
            await self._refresh()
        now = _now_ms()
        return [
            info
            for wid, (info, expires) in self._workers.items()
            if expires > now and info.ready and wid not in self._suspect
        ]

    async def live_for(self, model: str) -> list[worker_pb2.WorkerInfo]:
        return [w for w in await self.live() if any(m.name == model for m in w.models)]

    def export(self, live: list[worker_pb2.WorkerInfo]) -> None:
        """Publish the live workers' readiness and slots as gauges."""
        self.metrics.workers_ready.clear()
        self.metrics.worker_slots.clear()
        self.metrics.loaded_models.clear()
        for w in live:
            self.metrics.loaded_models.labels(w.worker_id).set(len(w.models))
            self.metrics.workers_ready.labels(w.engine, w.pool).inc()
            self.metrics.worker_slots.labels(w.worker_id, w.engine, w.pool, "total").set(w.slots_total)
            self.metrics.worker_slots.labels(w.worker_id, w.engine, w.pool, "in_use").set(w.slots_in_use)

    def get(self, worker_id: str) -> worker_pb2.WorkerInfo | None:
        """The worker's last known registration, whether or not it is live now."""
        entry = self._workers.get(worker_id)
        return entry[0] if entry else None

    def models_of(self, worker_id: str) -> list[str]:
        entry = self._workers.get(worker_id)
        return [m.name for m in entry[0].models] if entry else []

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
        # Workers whose call broke (a crash, a lost connection): no new work until their next heartbeat.
        self._suspect: set[str] = set()
        # Workers that answered "busy": their own count of slots is the truth until they report again.
        self._full: set[str] = set()

    @redis_errors_as_unavailable
    async def heartbeat(self, info: worker_pb2.WorkerInfo) -> None:
        expires = _now_ms() + self.lease_ms
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.psetex(keys.worker(info.worker_id), self.lease_ms, info.SerializeToString())
            pipe.zadd(keys.WORKERS, {info.worker_id: expires})
            await pipe.execute()
        self._workers[info.worker_id] = (info, expires)
        self._suspect.discard(info.worker_id)
        self._full.discard(info.worker_id)

    @redis_errors_as_unavailable
    async def deregister(self, worker_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.WORKERS, worker_id)
            pipe.delete(keys.worker(worker_id))
            await pipe.execute()
        self._workers.pop(worker_id, None)

    def mark_unhealthy(self, worker_id: str) -> None:
        """Only for a broken call (transport failure, crash), never for an error a worker answered."""
        self._suspect.add(worker_id)

    def mark_full(self, worker_id: str) -> None:
        """The worker answered busy: give it nothing new until its next heartbeat says what is free."""
        self._full.add(worker_id)

    def is_full(self, worker_id: str) -> bool:
        return worker_id in self._full

    @redis_errors_as_unavailable
    async def _refresh(self) -> None:
        now = _now_ms()
        await self._redis.zremrangebyscore(keys.WORKERS, "-inf", now)
        ranked = cast(
            list[tuple[bytes, float]], await self._redis.zrange(keys.WORKERS, 0, -1, withscores=True)
        )
        ids = [member.decode() for member, _ in ranked]
        blobs = await self._redis.mget([keys.worker(i) for i in ids]) if ids else []
        workers: dict[str, tuple[worker_pb2.WorkerInfo, int]] = {}
        for wid, (_, expires), blob in zip(ids, ranked, blobs, strict=True):
            if blob:
                workers[wid] = (worker_pb2.WorkerInfo.FromString(blob), int(expires))
        self._workers = workers
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
        for w in live:
            self.metrics.workers_ready.labels(w.engine, w.pool).inc()
            self.metrics.worker_slots.labels(w.worker_id, w.engine, w.pool, "total").set(w.slots_total)
            self.metrics.worker_slots.labels(w.worker_id, w.engine, w.pool, "in_use").set(w.slots_in_use)

    def models_of(self, worker_id: str) -> list[str]:
        entry = self._workers.get(worker_id)
        return [m.name for m in entry[0].models] if entry else []

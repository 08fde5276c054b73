"""The request queue in Redis: bounded per model, ordered by priority then arrival, idempotent."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis.asyncio as redis
from hyperllama_common.errors import Overloaded, Unavailable
from redis.exceptions import RedisError

from hyperllama_scheduler import keys
from hyperllama_scheduler.metrics import SchedulerMetrics

T = TypeVar("T")

PRIORITY_MAX = 9
# Score = priority band * 2^40 + arrival counter (the Lua script below uses the same 2^40).
_ARRIVAL_BITS = 2**40
# How long a taken request's marker lives: far longer than a renewal can be in flight.
_TAKEN_MS = 60_000

# Admit atomically: an id already queued keeps its place (idempotent retry); a full queue refuses.
_ADMIT = """
local queued = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('PSETEX', KEYS[3], ARGV[5], '1')
if queued then return 0 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[3])
  return -1
end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) * 2^40 + seq, ARGV[1])
redis.call('PSETEX', KEYS[2], ARGV[4], ARGV[6])
return 1
"""

# Head of the band: the score of the band itself, before every arrival in it. Waiting again, the
# request is no longer taken.
_REQUEUE = """
redis.call('DEL', KEYS[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PSETEX', KEYS[2], ARGV[3], ARGV[5])
redis.call('PSETEX', KEYS[3], ARGV[4], '1')
"""

# Renew the lease; a waiting request whose entry is missing (and was not just taken) is admitted
# again, past the queue bound: it had been admitted once already.
_RENEW = """
if redis.call('EXISTS', KEYS[5]) == 1 then return 2 end
redis.call('PSETEX', KEYS[3], ARGV[4], '1')
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) * 2^40 + seq, ARGV[1])
redis.call('PSETEX', KEYS[2], ARGV[3], ARGV[5])
return 0
"""


def redis_errors_as_unavailable(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """For methods of objects with a ``metrics``: a Redis failure becomes Unavailable, and is counted."""

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return await fn(self, *args, **kwargs)
        except RedisError as err:
            self.metrics.redis_errors.inc()
            raise Unavailable(f"queue store (Redis) unavailable: {err}") from err

    return wrapper


class RequestQueue:
    def __init__(self, client: redis.Redis, max_per_model: int, retry_after: int, metrics: SchedulerMetrics):
        self._redis = client
        self.metrics = metrics
        self._admit = client.register_script(_ADMIT)
        self._requeue = client.register_script(_REQUEUE)
        self._renew = client.register_script(_RENEW)
        self.max_per_model = max_per_model
        self.retry_after = retry_after

    @staticmethod
    def rank(priority: int) -> int:
        """Higher priority sorts first; out-of-range priorities are clamped."""
        return PRIORITY_MAX - max(0, min(PRIORITY_MAX, priority))

    @redis_errors_as_unavailable
    async def admit(
        self, model: str, request_id: str, payload: bytes, priority: int, ttl_ms: int, lease_ms: int
    ) -> bool:
        """Queue the request; False when it was already queued. Raises Overloaded when full."""
        result = await self._admit(
            keys=[
                keys.queue(model),
                keys.request(request_id),
                keys.request_lease(request_id),
                keys.ARRIVAL_SEQ,
            ],
            args=[request_id, self.rank(priority), self.max_per_model, max(1, ttl_ms), lease_ms, payload],
        )
        if int(result) < 0:
            self.metrics.rejections.labels(model).inc()
            raise Overloaded(
                f"the queue for model '{model}' is full ({self.max_per_model} waiting); retry later",
                retry_after=self.retry_after,
            )
        if int(result) == 1:
            self.metrics.admissions.labels(model).inc()
        return int(result) == 1

    @redis_errors_as_unavailable
    async def requeue_first(
        self, model: str, request_id: str, priority: int, payload: bytes, ttl_ms: int, lease_ms: int
    ) -> None:
        """Put a request back at the head of its priority band (its worker failed before starting).

        Its body and lease are written in the same step: a dispatch pass that sees the entry before
        the caller waits again must find the lease alive, or it would drop the entry as abandoned."""
        await self._requeue(
            keys=[
                keys.queue(model),
                keys.request(request_id),
                keys.request_lease(request_id),
                keys.request_taken(request_id),
            ],
            args=[request_id, self.rank(priority) * _ARRIVAL_BITS, max(1, ttl_ms), lease_ms, payload],
        )

    @redis_errors_as_unavailable
    async def renew(
        self, model: str, request_id: str, priority: int, payload: bytes, ttl_ms: int, lease_ms: int
    ) -> bool:
        """Renew a waiting request's lease; False when its entry was gone (Redis restarted empty, or
        lost it) and it was admitted again at the back of its band."""
        result = await self._renew(
            keys=[
                keys.queue(model),
                keys.request(request_id),
                keys.request_lease(request_id),
                keys.ARRIVAL_SEQ,
                keys.request_taken(request_id),
            ],
            args=[request_id, self.rank(priority), max(1, ttl_ms), lease_ms, payload],
        )
        return int(result) != 0

    @redis_errors_as_unavailable
    async def head(self, model: str, count: int) -> list[str]:
        ids = cast(list[bytes], await self._redis.zrange(keys.queue(model), 0, count - 1))
        return [i.decode() for i in ids]

    @redis_errors_as_unavailable
    async def take(self, model: str, request_id: str) -> bool:
        """Remove the request from the queue for dispatch; False if someone else took it.

        A running request cannot be resumed elsewhere, so its stored body and lease go too."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.queue(model), request_id)
            pipe.delete(keys.request(request_id), keys.request_lease(request_id))
            pipe.psetex(keys.request_taken(request_id), _TAKEN_MS, "1")
            removed, *_ = await pipe.execute()
        return bool(removed)

    @redis_errors_as_unavailable
    async def lease_alive(self, request_id: str) -> bool:
        return bool(await self._redis.exists(keys.request_lease(request_id)))

    @redis_errors_as_unavailable
    async def depth(self, model: str) -> int:
        return int(await self._redis.zcard(keys.queue(model)))

    async def forget(self, model: str, request_id: str) -> None:
        """Drop every trace of the request. Best effort: runs on the way out of failures too."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.queue(model), request_id)
                pipe.delete(
                    keys.request(request_id), keys.request_lease(request_id), keys.request_taken(request_id)
                )
                await pipe.execute()
        except RedisError:
            pass  # the request key expires by its own TTL

"""The request queue in Redis: bounded per model, ordered by priority then arrival, idempotent.

A queued request is owned by the Acquire call that waits for it, on whichever scheduler replica
holds that call. The owner renews the request's lease; a call repeated by the caller (its replica
died, its connection broke) takes the request over with a new owner token and keeps its place.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis.asyncio as redis
from hyperllama_common.errors import Overloaded, Unavailable
from redis.exceptions import RedisError

from hyperllama_scheduler import keys
from hyperllama_scheduler.metrics import SchedulerMetrics

T = TypeVar("T")

PRIORITY_MAX = 9

# Keys of the scripts below, in this order: queue, queue_since, request, request_lease, seq, grant.
# ARGV of _ADMIT and _RENEW (RequestQueue._args): request id, priority rank, the bound, the request
# lease's ms, needs, owner token, now (unix ms), head ('1' or '0'), time to live (ms).
# Score = priority band * 2^40 + arrival counter; the head of a band is its score alone.

# Admit atomically. A request already granted gets its grant; one already queued keeps its place
# (the caller's retry) under the new owner; a full queue refuses, except a request coming back
# after its worker failed, which goes to the head of its band: it had been admitted once.
_ADMIT = """
local granted = redis.call('GET', KEYS[6])
if granted then return {2, granted} end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('PSETEX', KEYS[4], ARGV[4], ARGV[6])
  return {0}
end
local score
if ARGV[8] == '1' then
  score = tonumber(ARGV[2]) * 2^40
else
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return {-1} end
  score = tonumber(ARGV[2]) * 2^40 + redis.call('INCR', KEYS[5])
end
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[7], ARGV[1])
redis.call('PSETEX', KEYS[3], ARGV[9], ARGV[5])
redis.call('PSETEX', KEYS[4], ARGV[4], ARGV[6])
return {1}
"""

# The owner's periodic renewal. Answers: {1, rank, depth} still waiting; {0, rank, depth} its entry
# was missing (Redis restarted empty or lost it) and it was admitted again at the back of its band;
# {2} granted meanwhile; {3} another call has taken the request over.
_RENEW = """
if redis.call('EXISTS', KEYS[6]) == 1 then return {2} end
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[6] then return {3} end
redis.call('PSETEX', KEYS[4], ARGV[4], ARGV[6])
local status = 1
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  status = 0
  redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) * 2^40 + redis.call('INCR', KEYS[5]), ARGV[1])
  redis.call('ZADD', KEYS[2], 'NX', ARGV[7], ARGV[1])
  redis.call('PSETEX', KEYS[3], ARGV[9], ARGV[5])
end
return {status, redis.call('ZRANK', KEYS[1], ARGV[1]), redis.call('ZCARD', KEYS[1])}
"""

# Drop a waiting request, unless another call owns it now (ARGV[2] = this call's owner token; an
# empty token drops it only if nobody owns it: a caller that is gone). Returns the grant a dispatch
# pass made that never reached the caller, for the caller to give back.
_FORGET = """
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[2] then return {0} end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
local granted = redis.call('GET', KEYS[6])
if granted then return {1, granted} end
return {1}
"""

ADMITTED, REJOINED, GRANTED, SUPERSEDED = 1, 0, 2, 3


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


def _keys(model: str, request_id: str) -> list[str]:
    return [
        keys.queue(model),
        keys.queue_since(model),
        keys.request(request_id),
        keys.request_lease(request_id),
        keys.ARRIVAL_SEQ,
        keys.grant(request_id),
    ]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Entry:
    """A waiting request as its owner sees it."""

    status: int  # ADMITTED, REJOINED, GRANTED or SUPERSEDED
    position: int = 0
    depth: int = 0
    grant: bytes = b""


@dataclass(frozen=True)
class Admission:
    """A request that is now queued (``grant`` empty), or that had been granted a slot already."""

    grant: bytes = b""


class RequestQueue:
    def __init__(self, client: redis.Redis, max_per_model: int, retry_after: int, metrics: SchedulerMetrics):
        self._redis = client
        self.metrics = metrics
        self._admit = client.register_script(_ADMIT)
        self._renew = client.register_script(_RENEW)
        self._forget = client.register_script(_FORGET)
        self.max_per_model = max_per_model
        self.retry_after = retry_after

    @staticmethod
    def rank(priority: int) -> int:
        """Higher priority sorts first; out-of-range priorities are clamped."""
        return PRIORITY_MAX - max(0, min(PRIORITY_MAX, priority))

    def _args(
        self, request_id: str, priority: int, needs: bytes, owner: str, ttl_ms: int, lease_ms: int,
        head: bool = False,
    ) -> list[str | int | bytes]:  # fmt: skip
        """ARGV of _ADMIT and _RENEW, in their order."""
        return [
            request_id,
            self.rank(priority),
            self.max_per_model,
            lease_ms,
            needs,
            owner,
            _now_ms(),
            "1" if head else "0",
            max(1, ttl_ms),
        ]

    @redis_errors_as_unavailable
    async def admit(
        self,
        model: str,
        request_id: str,
        needs: bytes,
        priority: int,
        *,
        owner: str,
        ttl_ms: int,
        lease_ms: int,
        head: bool = False,
    ) -> Admission:
        """Queue the request (``head``: at the head of its band, past the bound). Raises Overloaded
        when the queue is full."""
        result = await self._admit(
            keys=_keys(model, request_id),
            args=self._args(request_id, priority, needs, owner, ttl_ms, lease_ms, head),
        )
        status = int(result[0])
        if status < 0:
            self.metrics.rejections.labels(model).inc()
            raise Overloaded(
                f"the queue for model '{model}' is full ({self.max_per_model} waiting); retry later",
                retry_after=self.retry_after,
            )
        if status == 1:
            self.metrics.admissions.labels(model).inc()
        return Admission(grant=result[1] if status == GRANTED else b"")

    @redis_errors_as_unavailable
    async def renew(
        self,
        model: str,
        request_id: str,
        needs: bytes,
        priority: int,
        *,
        owner: str,
        ttl_ms: int,
        lease_ms: int,
    ) -> Entry:
        """Renew a waiting request's lease and learn its place (or that it was granted, or taken over)."""
        result = await self._renew(
            keys=_keys(model, request_id),
            args=self._args(request_id, priority, needs, owner, ttl_ms, lease_ms),
        )
        status = int(result[0])
        if status in (ADMITTED, REJOINED):
            return Entry(status, int(result[1]), int(result[2]))
        return Entry(status)

    @redis_errors_as_unavailable
    async def grant_of(self, request_id: str) -> bytes:
        return cast(bytes, await self._redis.get(keys.grant(request_id))) or b""

    @redis_errors_as_unavailable
    async def needs_of(self, request_id: str) -> bytes:
        """What a waiting request was stored with ("" if it is not waiting)."""
        return cast(bytes, await self._redis.get(keys.request(request_id))) or b""

    @redis_errors_as_unavailable
    async def head(self, model: str, count: int) -> list[str]:
        ids = cast(list[bytes], await self._redis.zrange(keys.queue(model), 0, count - 1))
        return [i.decode() for i in ids]

    @redis_errors_as_unavailable
    async def waiting(
        self, model: str, request_ids: list[str]
    ) -> list[tuple[bytes | None, bool, float | None]]:
        """For each request: what it needs (None if gone), whether its owner's lease holds, and when
        it was admitted (unix ms)."""
        if not request_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.mget([keys.request(r) for r in request_ids])
            pipe.mget([keys.request_lease(r) for r in request_ids])
            pipe.zmscore(keys.queue_since(model), request_ids)
            needs, leases, since = await pipe.execute()
        return [
            (cast(bytes | None, n), lease is not None, s)
            for n, lease, s in zip(needs, leases, since, strict=True)
        ]

    @redis_errors_as_unavailable
    async def depth(self, model: str) -> int:
        return int(await self._redis.zcard(keys.queue(model)))

    @redis_errors_as_unavailable
    async def oldest_wait_ms(self, model: str) -> int:
        oldest = cast(
            list[tuple[bytes, float]],
            await self._redis.zrange(keys.queue_since(model), 0, 0, withscores=True),
        )
        return max(0, _now_ms() - int(oldest[0][1])) if oldest else 0

    @redis_errors_as_unavailable
    async def forget(self, model: str, request_id: str, owner: str) -> bytes:
        """Drop every trace of a waiting request this call owns (``owner`` "": one whose caller is
        gone). Returns a grant made for it that never reached its caller: the caller gives it back."""
        result = await self._forget(keys=_keys(model, request_id), args=[request_id, owner])
        return result[1] if len(result) > 1 else b""

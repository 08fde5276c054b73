"""The request queue in Redis: bounded per model, ordered by priority, then fair share across
tenants, then arrival; idempotent.

A queued request is owned by the Acquire call that waits for it, on whichever scheduler replica
holds that call. The owner renews the request's lease; a call repeated by the caller (its replica
died, its connection broke) takes the request over with a new owner token and keeps its place.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis.asyncio as redis
from hyperllama_common.errors import InvalidRequest, Overloaded, Unavailable
from redis.exceptions import RedisError

from hyperllama_scheduler import keys
from hyperllama_scheduler.metrics import SchedulerMetrics

T = TypeVar("T")

PRIORITY_MAX = 9

# Fair share within a priority band: start-time fair queuing (SFQ). A request of tenant t gets the
# start tag S = max(F_t, V) and moves the tenant's finish tag on, F_t = S + cost / weight; the band is
# served in order of S, so a tenant that floods the queue pushes only its own requests back.
# The cost is 1 per request: the scheduler does not tokenize (the worker does, after placement), so
# it cannot know a prompt's tokens here, and a completion's length is unknown until it ends
# (max_tokens is only a bound). Tags are integers: one request at weight 1 costs COST_UNIT, so a
# weight anywhere in WEIGHT_RANGE still moves a tag on by at least 1.
COST_UNIT = 1000
WEIGHT_RANGE = (0.001, 1000.0)
# Tenant names come from the gateway's configuration; the scheduler still checks their shape, as
# they become values in Redis (hash fields, never key names).
TENANT_MAX = 64
TENANT_CHARS = re.compile(r"[A-Za-z0-9._-]*")

# Keys of _ADMIT and _RENEW, in this order: queue, queue_since, request, request_lease, grant, and the
# band's fair-share state (keys.fair_share); _FORGET takes the first five.
# ARGV of _ADMIT and _RENEW (RequestQueue._args): request id, priority rank, the bound, the request
# lease's ms, needs, owner token, now (unix ms), head ('1' or '0'), time to live (ms), tenant, cost
# (COST_UNIT / weight).
# Score = priority band * 2^40 + start tag; the head of a band is its score alone (tags start at 1).
#
# The virtual time V, the start tag of the band's next request in line, is found at admission, the
# only moment it is used: the smallest start tag waiting in the band (the dispatch pass takes the
# band's head first; requests sent back to the head, at tag 0, do not count), never less than the V
# stored at the last admission (a request that placement passes over for a while keeps its own tag,
# and does not take V back with it). A band that nobody waits in is idle: its state is dropped and
# every tenant starts even again at 1 (SFQ only balances tenants that wait; this also keeps tags far
# from 2^40). So the grant, in leases.py, needs no part in it. With one tenant, S = F_t: arrival
# order, as before.
_START_TAG = """
local function start_tag()
  local lo = tonumber(ARGV[2]) * 2^40
  local hi = lo + 2^40 - 1
  local v = 1
  if redis.call('ZCOUNT', KEYS[1], lo, hi) == 0 then
    redis.call('DEL', KEYS[6])
  else
    v = tonumber(redis.call('HGET', KEYS[6], 'v') or '1')
    local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. lo, hi, 'WITHSCORES', 'LIMIT', 0, 1)
    if first[2] then v = math.max(v, tonumber(first[2]) - lo) end
  end
  local tenant = 't:' .. ARGV[10]
  local s = math.max(v, tonumber(redis.call('HGET', KEYS[6], tenant) or '0'))
  redis.call('HSET', KEYS[6], 'v', v, tenant, s + tonumber(ARGV[11]))
  if redis.call('PTTL', KEYS[6]) < tonumber(ARGV[9]) then redis.call('PEXPIRE', KEYS[6], ARGV[9]) end
  return lo + s
end
"""

# Admit atomically. A request already granted gets its grant; one already queued keeps its place
# (the caller's retry) under the new owner; a full queue refuses, except a request coming back
# after its worker failed, which goes to the head of its band: it had been admitted once.
_ADMIT = (
    _START_TAG
    + """
local granted = redis.call('GET', KEYS[5])
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
  score = start_tag()
end
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[7], ARGV[1])
redis.call('PSETEX', KEYS[3], ARGV[9], ARGV[5])
redis.call('PSETEX', KEYS[4], ARGV[4], ARGV[6])
return {1}
"""
)

# The owner's periodic renewal. Answers: {1, rank, depth} still waiting; {0, rank, depth} its entry
# was missing (Redis restarted empty or lost it) and it was admitted again, with a fresh start tag as
# a new request would get; {2} granted meanwhile; {3} another call has taken the request over.
_RENEW = (
    _START_TAG
    + """
if redis.call('EXISTS', KEYS[5]) == 1 then return {2} end
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[6] then return {3} end
redis.call('PSETEX', KEYS[4], ARGV[4], ARGV[6])
local status = 1
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  status = 0
  redis.call('ZADD', KEYS[1], start_tag(), ARGV[1])
  redis.call('ZADD', KEYS[2], 'NX', ARGV[7], ARGV[1])
  redis.call('PSETEX', KEYS[3], ARGV[9], ARGV[5])
end
return {status, redis.call('ZRANK', KEYS[1], ARGV[1]), redis.call('ZCARD', KEYS[1])}
"""
)

# Drop a waiting request, unless another call owns it now (ARGV[2] = this call's owner token; an
# empty token drops it only if nobody owns it: a caller that is gone). Returns the grant a dispatch
# pass made that never reached the caller, for the caller to give back.
_FORGET = """
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[2] then return {0} end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
local granted = redis.call('GET', KEYS[5])
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


def _keys(model: str, request_id: str, band: int | None = None) -> list[str]:
    """The scripts' keys; ``band``: with the band's fair-share state (_ADMIT, _RENEW)."""
    out = [
        keys.queue(model),
        keys.queue_since(model),
        keys.request(request_id),
        keys.request_lease(request_id),
        keys.grant(request_id),
    ]
    return out if band is None else [*out, keys.fair_share(model, band)]


def check_tenant(tenant: str) -> None:
    """Tenant names are the gateway's configuration; one of another shape is a caller's mistake."""
    if len(tenant) > TENANT_MAX or not TENANT_CHARS.fullmatch(tenant):
        raise InvalidRequest(
            f"tenant must be at most {TENANT_MAX} characters of A-Z, a-z, 0-9, '.', '_' and '-'",
            param="tenant",
        )


def cost(weight: float) -> int:
    """What one request moves its tenant's finish tag on by (weight <= 0, or not a number: 1)."""
    if not math.isfinite(weight) or weight <= 0:
        weight = 1.0
    low, high = WEIGHT_RANGE
    return max(1, round(COST_UNIT / min(high, max(low, weight))))


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
        tenant: str, weight: float, head: bool = False,
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
            tenant,
            cost(weight),
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
        tenant: str = "",
        weight: float = 1.0,
        head: bool = False,
    ) -> Admission:
        """Queue the request (``head``: at the head of its band, past the bound), charged to
        ``tenant`` (its share of the band: ``weight``). Raises Overloaded when the queue is full."""
        result = await self._admit(
            keys=_keys(model, request_id, self.rank(priority)),
            args=self._args(request_id, priority, needs, owner, ttl_ms, lease_ms, tenant, weight, head),
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
        tenant: str = "",
        weight: float = 1.0,
    ) -> Entry:
        """Renew a waiting request's lease and learn its place (or that it was granted, or taken over)."""
        result = await self._renew(
            keys=_keys(model, request_id, self.rank(priority)),
            args=self._args(request_id, priority, needs, owner, ttl_ms, lease_ms, tenant, weight),
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

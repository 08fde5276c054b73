"""Slot leases in Redis: which worker slots are held by running streams, shared by every replica.

A lease is a member of ``keys.leases(worker, model)`` scored by its expiry; the gateway that holds
it renews it while the stream runs and releases it when the stream ends, and one whose gateway died
lapses by itself. A worker's capacity for a model is the model's own slots when the worker has slots
per model, else the worker's slots shared by all its models that have none of their own. Granting
checks that capacity and, for a queued request, takes it from the queue, in one atomic step: two
replicas can never hand out the same slot or the same request twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import cast

import redis.asyncio as redis
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2

from hyperllama_scheduler import keys, placement
from hyperllama_scheduler.metrics import SchedulerMetrics
from hyperllama_scheduler.queue import redis_errors_as_unavailable

# Prompt-prefix hashes kept per worker and model: far more than its slots can cache, so a tenant's
# affinity to a worker outlives a few other tenants' visits; old ones go first.
PREFIXES_KEPT = 4096
PREFIXES_TTL_MS = 3_600_000

# KEYS: 1 queue, 2 queue_since, 3 request, 4 request_lease, 5 grant, 6 worker_full, 7 worker_suspect,
#       8 prefixes, 9 the lease set to add to, 10 unloading, 11 expiries, 12 last used,
#       13 keep_alives, 14.. every lease set counted against the capacity
# ARGV: 1 request id, 2 now ms, 3 lease expiry ms, 4 capacity, 5 lease (protobuf), 6 lease ttl ms,
#       7 "queued" (take it from the queue) or "now" (only if nobody waits), 8 channel,
#       9 the copy's member in expiries, 10 model, 11 the request's keep_alive ms (-1 = forever),
#       12 when the request arrived (ms), 13.. prefix hashes
# Answers: 1 granted; 2 granted before (the existing lease is returned); 0 the request is no longer
# queued (another replica granted it, or it left); -1 no free slot; -2 the worker is marked full or
# suspect, or the model is being unloaded there; -3 somebody is waiting (fast path only).
_GRANT = """
local existing = redis.call('GET', KEYS[5])
if existing then
  if ARGV[7] == 'queued' and redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('DEL', KEYS[3], KEYS[4])
    redis.call('PUBLISH', ARGV[8], ARGV[1])
  end
  return {2, existing}
end
if redis.call('EXISTS', KEYS[6]) == 1 or redis.call('EXISTS', KEYS[7]) == 1
   or redis.call('EXISTS', KEYS[10]) == 1 then return {-2} end
if ARGV[7] == 'now' and redis.call('ZCARD', KEYS[1]) > 0 then return {-3} end
local used = 0
for i = 14, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[2])
  used = used + redis.call('ZCARD', KEYS[i])
end
if used >= tonumber(ARGV[4]) then return {-1} end
if ARGV[7] == 'queued' then
  if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return {0} end
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3], KEYS[4])
end
redis.call('ZADD', KEYS[9], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[9], ARGV[6] * 2)
redis.call('PSETEX', KEYS[5], ARGV[6], ARGV[5])
-- The last request to arrive sets the copy's keep_alive (as in Ollama): not one that arrived before
-- an explicit load or unload. The expiry counts from now for ps while it runs, and again from the
-- stream's end.
local set = redis.call('HGET', KEYS[13], ARGV[9])
local keep = tonumber(ARGV[11])
if set and tonumber(string.match(set, ':(.*)')) > tonumber(ARGV[12]) then
  keep = tonumber(string.match(set, '^([^:]*)'))
else
  redis.call('HSET', KEYS[13], ARGV[9], ARGV[11] .. ':' .. ARGV[12])
end
if keep < 0 then
  redis.call('ZREM', KEYS[11], ARGV[9])
else
  redis.call('ZADD', KEYS[11], tonumber(ARGV[2]) + keep, ARGV[9])
end
redis.call('ZADD', KEYS[12], ARGV[2], ARGV[10])
if #ARGV >= 13 then
  for i = 13, #ARGV do redis.call('ZADD', KEYS[8], ARGV[2], ARGV[i]) end
  redis.call('ZREMRANGEBYRANK', KEYS[8], 0, -(PREFIXES_KEPT + 1))
  redis.call('PEXPIRE', KEYS[8], PREFIXES_TTL_MS)
end
if ARGV[7] == 'queued' then redis.call('PUBLISH', ARGV[8], ARGV[1]) end
return {1}
""".replace("PREFIXES_KEPT", str(PREFIXES_KEPT)).replace("PREFIXES_TTL_MS", str(PREFIXES_TTL_MS))

# KEYS: each worker's prefix set. ARGV: the prompt's block hashes, in order. Per worker: how many
# leading blocks it was sent, and how many blocks it was sent after the last of those (its rank from
# the newest), which tells whether that prefix has likely been pushed out of the worker's cache since.
_PREFIX_MATCHES = """
local out = {}
for i = 1, #KEYS do
  local depth = 0
  while depth < #ARGV and redis.call('ZSCORE', KEYS[i], ARGV[depth + 1]) do depth = depth + 1 end
  local newer = 0
  if depth > 0 then newer = redis.call('ZREVRANK', KEYS[i], ARGV[depth]) end
  out[i] = {depth, newer}
end
return out
"""

# KEYS: lease set, grant. ARGV: lease id, new expiry, ttl, now. 0 when the lease had lapsed (even if
# no grant has swept it out of the set yet: its slot may be counted as free already).
_RENEW = """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) <= tonumber(ARGV[4]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3] * 2)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: stats. ARGV: duration ms. An exponentially weighted mean of how long streams run.
_OBSERVE = """
local mean = tonumber(redis.call('HGET', KEYS[1], 'mean_ms') or ARGV[1])
redis.call('HSET', KEYS[1], 'mean_ms', math.floor(mean * 0.8 + tonumber(ARGV[1]) * 0.2))
redis.call('PEXPIRE', KEYS[1], 86400000)
"""

# KEYS: 1 the copy's lease set, 2 its unloading flag, 3 expiries, 4 the model's queue. ARGV: now ms,
# flag ttl ms, member. Marks an idle copy as being unloaded (1), so no slot of it is granted
# meanwhile; 0 if streams use it or requests wait for the model (its keep_alive starts again when
# they are served), -1 if another replica is unloading it already.
_RETIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) > 0 or redis.call('ZCARD', KEYS[4]) > 0 then
  redis.call('ZREM', KEYS[3], ARGV[3])
  return 0
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return -1 end
redis.call('ZREM', KEYS[3], ARGV[3])
return 1
"""

# KEYS: keep_alives, expiries. ARGV: member, now ms, keep_alive ms to use if the copy has none.
# A copy's streams ended: its expiry counts from now by the keep_alive its last request set.
_EXPIRE_FROM_NOW = """
local set = redis.call('HGET', KEYS[1], ARGV[1])
local keep = tonumber(set and string.match(set, '^([^:]*)') or ARGV[3])
if keep < 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + keep, ARGV[1])
end
"""

GRANTED, GRANTED_BEFORE, GONE, NO_SLOT, MARKED, SOMEONE_WAITS = 1, 2, 0, -1, -2, -3


def _now_ms() -> int:
    return int(time.time() * 1000)


def copy_member(worker_id: str, model: str) -> str:
    """A loaded copy's member in keys.EXPIRIES."""
    return json.dumps([worker_id, model])


def parse_member(member: bytes | str) -> tuple[str, str]:
    worker_id, model = json.loads(member)
    return str(worker_id), str(model)


def shared_models(worker: worker_pb2.WorkerInfo) -> list[str]:
    return [m.name for m in worker.models if m.slots_total <= 0]


def cache_tokens(worker: worker_pb2.WorkerInfo, model: str) -> int:
    """Prompt tokens ``worker`` can keep cached for ``model`` (0: it does not say)."""
    return next((m.prefix_cache_tokens for m in worker.models if m.name == model), 0)


def capacity(worker: worker_pb2.WorkerInfo, model: str) -> tuple[int, list[str]]:
    """The slots ``model`` may hold on ``worker``, and the lease sets that count against them."""
    own = next((m.slots_total for m in worker.models if m.name == model), 0)
    if own > 0:
        return own, [keys.leases(worker.worker_id, model)]
    return worker.slots_total, [keys.leases(worker.worker_id, m) for m in shared_models(worker)]


@dataclass(frozen=True)
class Outcome:
    code: int
    lease: scheduler_pb2.Lease | None = None


class SlotLeases:
    def __init__(self, client: redis.Redis, ttl_seconds: float, metrics: SchedulerMetrics):
        self._redis = client
        self.metrics = metrics
        self.ttl_ms = int(ttl_seconds * 1000)
        self._grant = client.register_script(_GRANT)
        self._renew = client.register_script(_RENEW)
        self._observe = client.register_script(_OBSERVE)
        self._prefix_matches = client.register_script(_PREFIX_MATCHES)
        self._retire = client.register_script(_RETIRE)
        self._expire_from_now = client.register_script(_EXPIRE_FROM_NOW)

    @redis_errors_as_unavailable
    async def grant(
        self,
        worker: worker_pb2.WorkerInfo,
        model: str,
        request_id: str,
        prefixes: list[str],
        *,
        queued: bool,
        keep_alive_ms: int | None = None,
        copy_keep_alive_ms: int = -1,
        arrived_ms: int = 0,
    ) -> Outcome:
        """A lease on ``worker`` for the request: taken from the queue (``queued``), or at once
        only if nobody waits for the model. ``keep_alive_ms``: as the request gave it (it travels
        with the lease); ``copy_keep_alive_ms``: what it means for this copy (-1 = forever)."""
        lease = scheduler_pb2.Lease(
            lease_id=request_id,
            worker_id=worker.worker_id,
            address=worker.address,
            model=model,
            ttl_ms=self.ttl_ms,
            keep_alive_ms=keep_alive_ms,
        )
        cap, counted = capacity(worker, model)
        now = _now_ms()
        result = await self._grant(
            keys=[
                keys.queue(model),
                keys.queue_since(model),
                keys.request(request_id),
                keys.request_lease(request_id),
                keys.grant(request_id),
                keys.worker_full(worker.worker_id),
                keys.worker_suspect(worker.worker_id),
                keys.prefixes(worker.worker_id, model),
                keys.leases(worker.worker_id, model),
                keys.unloading(worker.worker_id, model),
                keys.EXPIRIES,
                keys.last_used(worker.worker_id),
                keys.KEEP_ALIVES,
                *counted,
            ],
            args=[
                request_id,
                now,
                now + self.ttl_ms,
                cap,
                lease.SerializeToString(),
                self.ttl_ms,
                "queued" if queued else "now",
                keys.GRANTS_CHANNEL,
                copy_member(worker.worker_id, model),
                model,
                copy_keep_alive_ms,
                arrived_ms or now,
                *prefixes,
            ],
        )
        code = int(result[0])
        if code == GRANTED:
            return Outcome(code, lease)
        if code == GRANTED_BEFORE:
            return Outcome(code, scheduler_pb2.Lease.FromString(result[1]))
        return Outcome(code)

    @redis_errors_as_unavailable
    async def in_use(self, workers: list[worker_pb2.WorkerInfo], model: str) -> dict[str, int]:
        """Leases held per worker against ``model``'s capacity (lapsed ones not counted)."""
        now = _now_ms()
        plan = [(w.worker_id, capacity(w, model)[1]) for w in workers]
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, counted in plan:
                for key in counted:
                    pipe.zcount(key, now, "+inf")
            counts = iter(await pipe.execute())
        return {wid: sum(int(next(counts)) for _ in counted) for wid, counted in plan}

    @redis_errors_as_unavailable
    async def prefix_matches(
        self, workers: list[worker_pb2.WorkerInfo], model: str, prefixes: list[str]
    ) -> dict[str, int]:
        """Per worker, how many leading blocks of the prompt were sent there and are likely still in
        its cache (placement.still_cached)."""
        if not prefixes or not workers:
            return {w.worker_id: 0 for w in workers}
        found = await self._prefix_matches(
            keys=[keys.prefixes(w.worker_id, model) for w in workers], args=prefixes
        )
        return {
            w.worker_id: depth if placement.still_cached(newer, cache_tokens(w, model)) else 0
            for w, (depth, newer) in zip(workers, found, strict=True)
        }

    @redis_errors_as_unavailable
    async def renew(self, leases: list[scheduler_pb2.Lease]) -> list[str]:
        """Push every lease's expiry out by the TTL; returns the ids of those that had lapsed."""
        now = _now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                await self._renew(
                    keys=[keys.leases(lease.worker_id, lease.model), keys.grant(lease.lease_id)],
                    args=[lease.lease_id, now + self.ttl_ms, self.ttl_ms, now],
                    client=pipe,
                )
            results = await pipe.execute()
        return [lease.lease_id for lease, ok in zip(leases, results, strict=True) if not int(ok)]

    @redis_errors_as_unavailable
    async def release(
        self,
        lease: scheduler_pb2.Lease,
        duration_ms: int = 0,
        freed: bool = False,
        keep_alive_ms: int = -1,
    ) -> int:
        """Give the slot back, in one round trip; returns how many requests wait for the model (a
        dispatch pass is worth running only then). ``freed``: the worker served the stream, so a
        "busy" it answered before is over (a slot there is free now). The copy's keep_alive (set
        by its last request, else ``keep_alive_ms``) counts from now."""
        now = _now_ms()
        member = copy_member(lease.worker_id, lease.model)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.leases(lease.worker_id, lease.model), lease.lease_id)
            pipe.delete(keys.grant(lease.lease_id))
            await self._expire_from_now(
                keys=[keys.KEEP_ALIVES, keys.EXPIRIES], args=[member, now, keep_alive_ms], client=pipe
            )
            pipe.zadd(keys.last_used(lease.worker_id), {lease.model: now})
            pipe.pexpire(keys.last_used(lease.worker_id), 86_400_000)
            if freed:
                pipe.delete(keys.worker_full(lease.worker_id))
            if duration_ms > 0:
                await self._observe(keys=[keys.model_stats(lease.model)], args=[duration_ms], client=pipe)
            pipe.zcard(keys.queue(lease.model))
            *_, waiting = await pipe.execute()
        return int(waiting)

    @redis_errors_as_unavailable
    async def retire(self, worker_id: str, model: str, flag_ms: int) -> int:
        """Mark an idle copy as being unloaded (see _RETIRE for the answers)."""
        return int(
            await self._retire(
                keys=[
                    keys.leases(worker_id, model),
                    keys.unloading(worker_id, model),
                    keys.EXPIRIES,
                    keys.queue(model),
                ],
                args=[_now_ms(), flag_ms, copy_member(worker_id, model)],
            )
        )

    @redis_errors_as_unavailable
    async def retired(self, worker_id: str, model: str) -> None:
        await self._redis.delete(keys.unloading(worker_id, model))

    @redis_errors_as_unavailable
    async def set_keep_alive(
        self, worker_id: str, model: str, keep_alive_ms: int, *, unless_set: bool = False
    ) -> None:
        """Give a copy a keep_alive from now (-1 = forever), as a request with no prompt does; a
        request that arrived before yields to it. ``unless_set``: only a default for a copy just
        loaded: one set meanwhile (an unload asked for while it loaded) stays, and any request
        granted later overrides it."""
        member = copy_member(worker_id, model)
        # What, and since when (requests that arrived before then yield to it).
        value = f"{keep_alive_ms}:{0 if unless_set else _now_ms()}"
        async with self._redis.pipeline(transaction=True) as pipe:
            if unless_set:
                pipe.hsetnx(keys.KEEP_ALIVES, member, value)
            else:
                pipe.hset(keys.KEEP_ALIVES, member, value)
            if keep_alive_ms < 0 and not unless_set:
                pipe.zrem(keys.EXPIRIES, member)
            elif keep_alive_ms >= 0:
                pipe.zadd(keys.EXPIRIES, {member: _now_ms() + keep_alive_ms}, nx=unless_set)
            await pipe.execute()

    @redis_errors_as_unavailable
    async def retry_expiry(self, worker_id: str, model: str, at_ms: int) -> None:
        """Look at the copy again at ``at_ms`` (its unload failed)."""
        await self._redis.zadd(keys.EXPIRIES, {copy_member(worker_id, model): at_ms})

    @redis_errors_as_unavailable
    async def expiries(self) -> dict[tuple[str, str], int]:
        """Every copy's keep_alive expiry (unix ms)."""
        entries = cast(
            list[tuple[bytes, float]], await self._redis.zrange(keys.EXPIRIES, 0, -1, withscores=True)
        )
        return {parse_member(m): int(score) for m, score in entries}

    @redis_errors_as_unavailable
    async def due(self, limit: int = 32) -> list[tuple[str, str]]:
        """Copies whose keep_alive ran out."""
        members = cast(
            list[bytes], await self._redis.zrangebyscore(keys.EXPIRIES, "-inf", _now_ms(), start=0, num=limit)
        )
        return [parse_member(m) for m in members]

    @redis_errors_as_unavailable
    async def forget_copy(self, worker_id: str, model: str, keep_alive: bool = True) -> None:
        """No expiry for the copy; with ``keep_alive``, nor its keep_alive (it is gone)."""
        member = copy_member(worker_id, model)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.EXPIRIES, member)
            if keep_alive:
                pipe.hdel(keys.KEEP_ALIVES, member)
            await pipe.execute()

    @redis_errors_as_unavailable
    async def prune_keep_alives(self, live_workers: set[str]) -> None:
        """Drop the keep_alives of copies on workers no longer registered."""
        members = cast(list[bytes], await self._redis.hkeys(keys.KEEP_ALIVES))
        gone = [m for m in members if parse_member(m)[0] not in live_workers]
        if gone:
            await self._redis.hdel(keys.KEEP_ALIVES, *gone)

    @redis_errors_as_unavailable
    async def last_used(self, worker_id: str) -> dict[str, int]:
        entries = cast(
            list[tuple[bytes, float]],
            await self._redis.zrange(keys.last_used(worker_id), 0, -1, withscores=True),
        )
        return {m.decode(): int(score) for m, score in entries}

    @redis_errors_as_unavailable
    async def mean_duration_ms(self, model: str) -> int:
        value = await self._redis.hget(keys.model_stats(model), "mean_ms")
        return int(cast(bytes, value)) if value else 0

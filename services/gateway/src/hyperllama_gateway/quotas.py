"""Per-tenant limits and usage, in Redis so that every gateway replica enforces the same ones.

Requests and tokens per minute use a sliding window estimated from two fixed one-minute counters
(the previous minute weighted by how much of it still lies in the window): one key per minute, no
list of timestamps to grow. Tokens are only known once a request ends, so a request is admitted
while the tenant's window is under its token limit and charged what it really used when it ends
(a cancelled stream included, for what it produced). Concurrency is a sorted set of running
requests scored by when they lapse, so a gateway that dies cannot hold a tenant's slot for ever.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import cast

import redis.asyncio as redis
from hyperllama_common.errors import RateLimited, Unavailable
from redis.exceptions import RedisError

from hyperllama_gateway import redis_keys
from hyperllama_gateway.metrics import GatewayMetrics
from hyperllama_gateway.tenants import Tenant

log = logging.getLogger(__name__)

MINUTE_MS = 60_000

# KEYS: requests this minute, requests last minute, tokens this minute, tokens last minute, in flight,
# usage. ARGV: now (ms), elapsed in this minute (ms), rpm, tpm, max concurrent, request id, lapse (ms).
# Answers {0} admitted, or {1 = requests, 2 = tokens, 3 = concurrency, ms until worth retrying}.
_ADMIT = """
local now, elapsed = tonumber(ARGV[1]), tonumber(ARGV[2])
local weight = (60000 - elapsed) / 60000
local function window(current, previous)
  return tonumber(redis.call('GET', current) or '0') + tonumber(redis.call('GET', previous) or '0') * weight
end
local rpm, tpm, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if rpm > 0 and window(KEYS[1], KEYS[2]) + 1 > rpm then
  redis.call('HINCRBY', KEYS[6], 'rejected', 1)
  return {1, 60000 - elapsed}
end
if tpm > 0 and window(KEYS[3], KEYS[4]) >= tpm then
  redis.call('HINCRBY', KEYS[6], 'rejected', 1)
  return {2, 60000 - elapsed}
end
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if redis.call('ZCARD', KEYS[5]) >= cap then
    redis.call('HINCRBY', KEYS[6], 'rejected', 1)
    return {3, 1000}
  end
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[7]), ARGV[6])
  redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[7]))
end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 2 * 60000)
return {0}
"""

_WHICH = {1: ("requests", "requests per minute"), 2: ("tokens", "tokens per minute"),
          3: ("concurrency", "concurrent requests")}  # fmt: skip
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cancelled", "rejected")


def _now() -> tuple[int, int, int]:
    """(now ms, this minute's number, ms elapsed in it)."""
    now = int(time.time() * 1000)
    return now, now // MINUTE_MS, now % MINUTE_MS


@dataclass
class Ticket:
    """An admitted request, until it is finished (once)."""

    tenant: str
    request_id: str
    done: bool = False


class Quotas:
    def __init__(self, client: redis.Redis, metrics: GatewayMetrics, lapse_seconds: float):
        self._redis = client
        self._admit = client.register_script(_ADMIT)
        self.metrics = metrics
        # How long a running request holds its concurrency slot if its gateway never says it ended.
        self._lapse_ms = int(lapse_seconds * 1000)
        self._pending: set[asyncio.Future[None]] = set()

    async def admit(self, tenant: Tenant, request_id: str) -> Ticket:
        """Admit one request of ``tenant`` or raise RateLimited (429 with Retry-After)."""
        now, minute, elapsed = _now()
        name = tenant.name
        try:
            result = await self._admit(
                keys=[
                    redis_keys.minute_requests(name, minute),
                    redis_keys.minute_requests(name, minute - 1),
                    redis_keys.minute_tokens(name, minute),
                    redis_keys.minute_tokens(name, minute - 1),
                    redis_keys.in_flight(name),
                    redis_keys.usage(name),
                ],
                args=[
                    now,
                    elapsed,
                    tenant.requests_per_minute,
                    tenant.tokens_per_minute,
                    tenant.max_concurrent,
                    request_id,
                    self._lapse_ms,
                ],  # fmt: skip
            )
        except RedisError as err:
            raise Unavailable(f"limits store (Redis) unavailable: {err}") from err
        if int(result[0]) != 0:
            limit, what = _WHICH[int(result[0])]
            self.metrics.rate_limited.labels(name, limit).inc()
            self.metrics.tenant_requests.labels(name, "rejected").inc()
            retry = max(1, math.ceil(int(result[1]) / 1000))
            raise RateLimited(
                f"rate limit reached for tenant '{name}': {what}; retry in {retry}s",
                retry_after=retry,
            )
        return Ticket(name, request_id)

    def finish_soon(self, ticket: Ticket, prompt_tokens: int, completion_tokens: int, outcome: str) -> None:
        """Charge what the request used and free its concurrency slot, once, in the background (kept
        referenced until done). Never raises: the response is out already, and a lost charge must not
        turn a served request into an error."""
        if ticket.done:
            return
        ticket.done = True
        task = asyncio.ensure_future(self._write(ticket, prompt_tokens, completion_tokens, outcome))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for the charges still being written (at shutdown)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=5)

    async def _write(self, ticket: Ticket, prompt_tokens: int, completion_tokens: int, outcome: str) -> None:
        _, minute, _ = _now()
        tokens = prompt_tokens + completion_tokens
        name = ticket.tenant
        self.metrics.tenant_requests.labels(name, outcome).inc()
        self.metrics.tenant_tokens.labels(name, "prompt").inc(prompt_tokens)
        self.metrics.tenant_tokens.labels(name, "completion").inc(completion_tokens)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(redis_keys.in_flight(name), ticket.request_id)
                if tokens:
                    pipe.incrby(redis_keys.minute_tokens(name, minute), tokens)
                    pipe.pexpire(redis_keys.minute_tokens(name, minute), 2 * MINUTE_MS)
                usage = redis_keys.usage(name)
                pipe.hincrby(usage, "requests", 1)
                pipe.hincrby(usage, "prompt_tokens", prompt_tokens)
                pipe.hincrby(usage, "completion_tokens", completion_tokens)
                if outcome == "cancelled":
                    pipe.hincrby(usage, "cancelled", 1)
                await pipe.execute()
        except RedisError as err:
            self.metrics.usage_lost.inc()
            log.warning("usage of tenant %s not recorded: %s", name, err)

    async def usage(self, tenants: list[str]) -> dict[str, dict[str, int]]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in tenants:
                    pipe.hgetall(redis_keys.usage(name))
                rows = cast(list[dict[bytes, bytes]], await pipe.execute())
        except RedisError as err:
            raise Unavailable(f"usage store (Redis) unavailable: {err}") from err
        return {
            name: {f: int(row.get(f.encode(), 0)) for f in USAGE_FIELDS}
            for name, row in zip(tenants, rows, strict=True)
        }

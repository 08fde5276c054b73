"""Matching queued requests to free worker slots, across every scheduler replica.

All of it lives in Redis: the queue, what each waiting request needs, the slot leases and the grants.
A dispatch pass for a model, run by any replica, walks the head of the model's queue in order and
grants each request it can place a lease on the best worker (placement.choose), whichever replica
holds the request's Acquire call; the grant is published on keys.GRANTS_CHANNEL and the replica that
holds the call hands it over. Passes run on admissions, releases and heartbeats, and on every
waiter's periodic renewal, so a missed wake-up (a replica that died mid-pass) costs at most a tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as redis
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama_common.errors import (
    Cancelled,
    DeadlineExceeded,
    HyperLlamaError,
    Unavailable,
)
from redis.exceptions import RedisError

from hyperllama_scheduler import keys, placement
from hyperllama_scheduler.leases import GONE, GRANTED, GRANTED_BEFORE, SOMEONE_WAITS, SlotLeases, capacity
from hyperllama_scheduler.queue import GRANTED as QUEUE_GRANTED
from hyperllama_scheduler.queue import SUPERSEDED, RequestQueue
from hyperllama_scheduler.registry import WorkerRegistry
from hyperllama_scheduler.routing import Requirements

if TYPE_CHECKING:
    from hyperllama_scheduler.loader import ModelLoader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Needs:
    """What a waiting request needs of a worker, stored with it in the queue for any replica to read;
    ``model`` is the name it was queued under (name:tag)."""

    model: str
    requirements: Requirements
    prefixes: tuple[str, ...] = ()
    keep_alive_ms: int | None = None  # the request's keep_alive; None = the cluster's default

    def encode(self) -> bytes:
        r = self.requirements
        return json.dumps(
            {
                "model": self.model,
                "capabilities": list(r.capabilities),
                "engine": r.engine,
                "prefixes": list(self.prefixes),
                "keep_alive_ms": self.keep_alive_ms,
            }
        ).encode()

    @staticmethod
    def decode(raw: bytes) -> Needs:
        d = json.loads(raw)
        return Needs(
            d["model"],
            Requirements(tuple(d["capabilities"]), d["engine"]),
            tuple(d["prefixes"]),
            d.get("keep_alive_ms"),
        )


class Dispatcher:
    def __init__(
        self,
        client: redis.Redis,
        queue: RequestQueue,
        registry: WorkerRegistry,
        leases: SlotLeases,
        request_lease_seconds: float,
        prefix_aware: bool = True,
        prefix_patience_seconds: float = 2.0,
        tick_seconds: float = 1.0,
        replica_after_seconds: float = 0.0,
    ):
        self._redis = client
        self.queue = queue
        self.registry = registry
        self.leases = leases
        self.prefix_aware = prefix_aware
        self.prefix_patience = prefix_patience_seconds
        self.request_lease_ms = int(request_lease_seconds * 1000)
        self.tick = min(tick_seconds, request_lease_seconds / 3)
        self.replica_after_ms = int(replica_after_seconds * 1000)
        # Set once the loader exists (it wakes passes, passes ask it for loads).
        self.loader: ModelLoader | None = None
        self._granted: dict[str, asyncio.Event] = {}  # request id -> set when its grant is published
        self._passing: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- placing one request -------------------------------------------------------------------

    async def _place(self, model: str, request_id: str, needs: Needs, queued: bool,
                     in_use: dict[str, int] | None = None,
                     waited: float = 0.0, arrived_ms: int = 0) -> scheduler_pb2.Lease | None:  # fmt: skip
        """Try to lease a slot for the request on the best worker that has one; None if none has,
        or if its prefix's home is full and it has waited less than the patience for it."""
        workers = [w for w in await self.registry.live_for(model) if needs.requirements.accepts(w)]
        if not workers:
            return None
        prefixes = list(needs.prefixes) if self.prefix_aware else []
        cap = {w.worker_id: capacity(w, model)[0] for w in workers}
        if in_use is not None:
            used = in_use
        elif len(workers) == 1:
            used = {}  # nothing to choose between: the grant itself checks the slots
        else:
            used = await self.leases.in_use(workers, model)
        free = {w.worker_id: cap[w.worker_id] - used.get(w.worker_id, 0) for w in workers}
        candidates = [w for w in workers if free[w.worker_id] > 0]
        matches = (
            await self.leases.prefix_matches(workers, model, prefixes)
            if prefixes and len(workers) > 1
            else {}
        )
        home = placement.home(workers, matches, len(prefixes))
        patient = home is not None and waited < self.prefix_patience

        def wait_for_home() -> bool:
            # Its home will have a slot soon; elsewhere it would prefill from scratch.
            return patient and not any(placement.home([w], matches, len(prefixes)) for w in candidates)

        if wait_for_home():
            return None
        while candidates:
            worker = placement.choose(candidates, free, cap, matches, len(prefixes))
            keep = (
                self.loader.keep_alive_for(
                    needs.keep_alive_ms, self.loader.is_pinned(worker.worker_id, model)
                )
                if self.loader is not None
                else -1
            )
            outcome = await self.leases.grant(
                worker,
                model,
                request_id,
                prefixes,
                queued=queued,
                keep_alive_ms=needs.keep_alive_ms,
                copy_keep_alive_ms=keep,
                arrived_ms=arrived_ms,
            )
            if outcome.code in (GRANTED, GRANTED_BEFORE):
                log.debug(
                    "%s on %s: %d of %d prefix blocks sent there before, free slots %s, waited %.2f s",
                    request_id, worker.worker_id, matches.get(worker.worker_id, 0), len(prefixes),
                    free, waited,
                )  # fmt: skip
                if in_use is not None:
                    in_use[worker.worker_id] = in_use.get(worker.worker_id, 0) + 1
                return outcome.lease
            if outcome.code in (GONE, SOMEONE_WAITS):  # granted by another pass, or it must queue
                return None
            # No slot after all (another replica leased it), or the worker is marked full/suspect.
            candidates.remove(worker)
            if in_use is not None:
                in_use[worker.worker_id] = cap[worker.worker_id]
            if wait_for_home():
                return None  # as above: the home's last slot went to another request meanwhile
        return None

    async def grant_now(self, model: str, request_id: str, needs: Needs) -> scheduler_pb2.Lease | None:
        """A lease at once when nobody waits for the model and a worker has a free slot (the request
        then never touches the queue), or the lease granted to this request before. None: queue it."""
        return await self._place(model, request_id, needs, queued=False)

    # ---- waiting ---------------------------------------------------------------------------------

    async def wait(
        self,
        model: str,
        request_id: str,
        needs: Needs,
        priority: int,
        owner: str,
        deadline: float,
        *,
        tenant: str = "",
        weight: float = 1.0,
    ) -> AsyncIterator[scheduler_pb2.QueuePosition | scheduler_pb2.Lease]:
        """Until the request (already admitted under ``owner``, charged to ``tenant``) is granted a
        lease: its place in the queue whenever it changes, then the lease. Raises DeadlineExceeded at
        the deadline, and Cancelled when a newer call for the same request took it over."""
        event = self._granted[request_id] = asyncio.Event()
        encoded = needs.encode()
        last: tuple[int, int] | None = None
        try:
            self.wake(model)
            while True:
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise DeadlineExceeded(f"request {request_id} waited in the queue past its deadline")
                try:
                    entry = await self.queue.renew(
                        model, request_id, encoded, priority, owner=owner,
                        ttl_ms=int(remaining * 1000), lease_ms=self.request_lease_ms,
                        tenant=tenant, weight=weight,
                    )  # fmt: skip
                except Unavailable as err:
                    # Redis is away: keep waiting (the deadline still holds); the next renewal
                    # admits the request again if Redis came back without it.
                    log.warning("cannot renew %s: %s", request_id, err.message)
                    entry = None
                if entry is not None and entry.status != QUEUE_GRANTED and self.loader is not None:
                    failure = await self.loader.error(model)
                    if failure:
                        raise failure
                if entry is not None:
                    if entry.status == SUPERSEDED:
                        raise Cancelled("replaced by a newer call with the same request id")
                    if entry.status == QUEUE_GRANTED:
                        grant = await self.queue.grant_of(request_id)
                        if grant:
                            yield scheduler_pb2.Lease.FromString(grant)
                            return
                    elif (entry.position, entry.depth) != last:
                        last = (entry.position, entry.depth)
                        yield scheduler_pb2.QueuePosition(position=entry.position, depth=entry.depth)
                    self.wake(model)
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), min(remaining, self.tick))
                except TimeoutError:
                    pass
        finally:
            self._granted.pop(request_id, None)

    async def listen(self) -> None:
        """Hand grants published by any replica to the waiters held here; reconnects forever."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.GRANTS_CHANNEL)
                # Grants published while unsubscribed are found by the waiters' next renewal; check now.
                for pending in self._granted.values():
                    pending.set()
                async for message in pubsub.listen():
                    granted = self._granted.get(message["data"].decode())
                    if granted is not None:
                        granted.set()
            except (RedisError, OSError) as err:
                log.warning("grant notifications interrupted: %s", err)
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()

    # ---- dispatch passes -------------------------------------------------------------------------

    def wake(self, model: str) -> None:
        """Run a dispatch pass for the model soon; coalesces with one already running here."""
        if model in self._passing:
            self._again.add(model)
            return
        self._passing.add(model)
        task = asyncio.get_running_loop().create_task(self._pass_loop(model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pass_loop(self, model: str) -> None:
        try:
            while True:
                self._again.discard(model)
                await self._dispatch_pass(model)
                if model not in self._again:
                    return
        except HyperLlamaError as err:
            log.warning("dispatch for %s failed: %s", model, err.message)
        finally:
            self._passing.discard(model)

    async def _dispatch_pass(self, model: str) -> None:
        workers = await self.registry.live_for(model)
        if not workers:
            if self.loader is not None and await self.queue.depth(model):
                await self.loader.ensure(model)  # in the store, not loaded: load it somewhere
            return
        in_use = await self.leases.in_use(workers, model)
        total_free = sum(max(0, capacity(w, model)[0] - in_use.get(w.worker_id, 0)) for w in workers)
        if total_free <= 0:
            # Every slot busy and requests waiting long (not for a load: a copy serves): one more copy.
            if self.loader is not None and self.replica_after_ms > 0:
                if await self.queue.oldest_wait_ms(model) >= self.replica_after_ms:
                    await self.loader.ensure(model, extra=True)
            return
        ids = await self.queue.head(model, max(16, total_free * 4))
        now_ms = time.time() * 1000
        for request_id, (raw, alive, since_ms) in zip(ids, await self.queue.waiting(model, ids), strict=True):
            if total_free <= 0:
                return
            if not alive:
                # Its caller is gone (no replica renews it): drop it, and give back a grant it never got.
                stale = await self.queue.forget(model, request_id, owner="")
                if stale:
                    await self.leases.release(scheduler_pb2.Lease.FromString(stale))
                continue
            if raw is None:
                continue
            waited = (now_ms - since_ms) / 1000 if since_ms else 0.0
            if await self._place(
                model, request_id, Needs.decode(raw), queued=True, in_use=in_use, waited=waited,
                arrived_ms=int(since_ms or 0),
            ):  # fmt: skip
                total_free -= 1

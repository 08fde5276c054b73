"""Matching queued requests to free worker slots.

Each scheduler process owns the requests whose callers are connected to it (their waiters). A dispatch
pass for a model walks the head of the model's Redis queue in order and hands each waiting request a
slot on the live worker with the most free slots. Passes are triggered by admissions, released slots
and heartbeats, and by every waiter's periodic lease renewal, so a missed wake-up only costs a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import DeadlineExceeded, HyperLlamaError, Unavailable

from hyperllama_scheduler.queue import RequestQueue
from hyperllama_scheduler.registry import WorkerRegistry

log = logging.getLogger(__name__)


Accepts = Callable[[worker_pb2.WorkerInfo], bool]


Renew = Callable[[], Awaitable[None]]
K = TypeVar("K")


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


@dataclass(frozen=True)
class Slot:
    worker_id: str
    address: str
    model: str


class Dispatcher:
    def __init__(self, queue: RequestQueue, registry: WorkerRegistry, lease_seconds: float):
        self.queue = queue
        self.registry = registry
        self.lease_ms = int(lease_seconds * 1000)
        self._renew_every = lease_seconds / 3
        # Slots this scheduler has handed out, per (worker, model) and per worker.
        self.inflight: Counter[tuple[str, str]] = Counter()
        self.inflight_by_worker: Counter[str] = Counter()
        self._waiters: dict[str, asyncio.Future[Slot]] = {}
        # Which workers each waiting request may run on (capabilities, engine pin).
        self._accepts: dict[str, Accepts] = {}
        self._waiting_since: dict[str, tuple[str, float]] = {}  # request id -> (model, monotonic time)
        self._passing: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def free_slots(self, worker: worker_pb2.WorkerInfo, model: str) -> int:
        """Slots of ``worker`` free for ``model``: its own slots when the worker has slots per model
        (a two-model worker must not take twice one model's share), else the worker's shared ones."""
        if self.registry.is_full(worker.worker_id):
            return 0
        own = next((m.slots_total for m in worker.models if m.name == model), 0)
        if own > 0:
            return own - self.inflight[(worker.worker_id, model)]
        return worker.slots_total - self.inflight_by_worker[worker.worker_id]

    def _reserve(self, worker: worker_pb2.WorkerInfo, model: str) -> Slot:
        self.inflight[(worker.worker_id, model)] += 1
        self.inflight_by_worker[worker.worker_id] += 1
        return Slot(worker.worker_id, worker.address, model)

    async def reserve_now(self, model: str, accepts: Accepts) -> Slot | None:
        """A slot at once when nobody is waiting for the model and a worker the request ``accepts``
        has one free; the request then never touches the queue. None means: queue it."""
        workers = [w for w in await self.registry.live_for(model) if accepts(w)]
        if any(m == model for m, _ in self._waiting_since.values()):
            return None  # keep arrival order: those already waiting go first
        free = [(self.free_slots(w, model), w) for w in workers]
        if not free:
            return None
        n, worker = max(free, key=lambda f: f[0])
        if n <= 0:
            return None
        return self._reserve(worker, model)

    async def wait_for_slot(
        self, model: str, request_id: str, deadline: float, accepts: Accepts, renew: Renew
    ) -> Slot:
        """Wait until the dispatcher hands this queued request a slot on a worker it ``accepts``,
        or the deadline passes. ``renew`` keeps the request's lease (and its queue entry) alive."""
        fut: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = fut
        self._accepts[request_id] = accepts
        self._waiting_since[request_id] = (model, time.monotonic())
        got_slot = False
        try:
            self.wake(model)
            while True:
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise DeadlineExceeded(f"request {request_id} waited in the queue past its deadline")
                try:
                    slot = await asyncio.wait_for(asyncio.shield(fut), min(remaining, self._renew_every))
                    got_slot = True
                    return slot
                except TimeoutError:
                    try:
                        await renew()
                    except Unavailable as err:
                        # Redis is away: keep waiting (the deadline still holds); the next renewal
                        # admits the request again if Redis came back without it.
                        log.warning("cannot renew %s: %s", request_id, err.message)
                    self.wake(model)
        finally:
            self._waiters.pop(request_id, None)
            self._waiting_since.pop(request_id, None)
            self._accepts.pop(request_id, None)
            if not got_slot and fut.done() and not fut.cancelled():
                self.release(fut.result())  # reserved for us just as we gave up
            fut.cancel()

    def oldest_wait(self) -> dict[str, float]:
        """Per model, how long the oldest request waiting here has waited (seconds)."""
        now = time.monotonic()
        oldest: dict[str, float] = {}
        for model, since in self._waiting_since.values():
            oldest[model] = max(oldest.get(model, 0.0), now - since)
        return oldest

    def release(self, slot: Slot) -> None:
        _decrement(self.inflight, (slot.worker_id, slot.model))
        _decrement(self.inflight_by_worker, slot.worker_id)
        for model in {slot.model, *self.registry.models_of(slot.worker_id)}:
            self.wake(model)

    def wake(self, model: str) -> None:
        """Run a dispatch pass for the model soon; coalesces with one already running."""
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
        free = {w.worker_id: (w, self.free_slots(w, model)) for w in await self.registry.live_for(model)}
        total_free = sum(n for _, n in free.values() if n > 0)
        if total_free <= 0:
            return
        for request_id in await self.queue.head(model, max(16, total_free * 4)):
            if total_free <= 0:
                return
            fut = self._waiters.get(request_id)
            if fut is None:
                # Another scheduler's caller, or a caller that is gone (its lease lapsed).
                if not await self.queue.lease_alive(request_id):
                    await self.queue.forget(model, request_id)
                continue
            accepts = self._accepts[request_id]
            candidates = [w for w, (info, n) in free.items() if n > 0 and accepts(info)]
            if not candidates:
                continue  # its workers are busy; requests behind it may still fit elsewhere
            if fut.done() or not await self.queue.take(model, request_id):
                continue
            if fut.done():  # the caller left while we took it; its own clean-up forgets it
                continue
            worker_id = max(candidates, key=lambda w: free[w][1])
            info, n = free[worker_id]
            free[worker_id] = (info, n - 1)
            total_free -= 1
            fut.set_result(self._reserve(info, model))

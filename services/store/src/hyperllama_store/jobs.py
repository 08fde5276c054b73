"""Pulls and pushes as tasks of their own, apart from the HTTP request that asked for them.

A pull goes on when its client leaves: the blobs it shares with other pulls keep downloading for them, and the
model lands in the store for the next caller. A push has nobody else to serve, so its client leaving stops it.
Progress reaches the reader through a queue that keeps only the newest progress object per status, so a slow
or absent reader never makes it grow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from hyperllama_common.errors import HyperLlamaError, InvalidRequest, ModelNotFound, Unavailable

from hyperllama_store.registry import DigestMismatch, RegistryUnauthorized

log = logging.getLogger(__name__)

Event = dict[str, Any]
# Statuses sent before a transfer has talked to its registry; errors up to the first other status are still
# answered with their own HTTP status.
PREAMBLE = frozenset({"pulling manifest", "retrieving manifest", "couldn't retrieve manifest"})


def outcome(err: BaseException | None) -> str:
    """The metrics label of how a transfer ended."""
    if err is None:
        return "success"
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    if isinstance(err, DigestMismatch):
        return "mismatch"
    if isinstance(err, RegistryUnauthorized):
        return "unauthorized"
    if isinstance(err, ModelNotFound):
        return "not_found"
    if isinstance(err, InvalidRequest):
        return "invalid"
    if isinstance(err, Unavailable):
        return "unreachable"
    return "failed"


class Job:
    """One transfer running in its own task; ``next()`` hands its events to one reader."""

    def __init__(self, events: AsyncIterator[Event], *, detach: bool, done: Callable[[Job], None]):
        self.detach = detach
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._reading = True
        self.error: BaseException | None = None
        self.finished = False
        self._done = done
        self.task = asyncio.create_task(self._run(events), name="store transfer")

    async def _run(self, events: AsyncIterator[Event]) -> None:
        try:
            async for event in events:
                if self._reading:
                    self._put(event)
        except BaseException as err:
            self.error = err
            if not isinstance(err, asyncio.CancelledError | HyperLlamaError):
                log.exception("transfer failed")
            if not isinstance(err, Exception):
                raise
        finally:
            self.finished = True
            self._ready.set()
            self._done(self)

    def _put(self, event: Event) -> None:
        last = self._queue[-1] if self._queue else None
        if last is not None and "digest" in event and last.get("status") == event.get("status"):
            self._queue[-1] = event  # a newer count of the same blob replaces the unread one
        else:
            self._queue.append(event)
        self._ready.set()

    async def next(self) -> Event | None:
        """The next event; None once the transfer succeeded; raises the error it ended with."""
        while not self._queue:
            if self.finished:
                if self.error is None:
                    return None
                if isinstance(self.error, asyncio.CancelledError):
                    raise Unavailable("the transfer was stopped: the model store is shutting down")
                raise self.error
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    async def head(self) -> list[Event]:
        """The events up to the first past the preamble: an error before that raises here, before any output
        is sent."""
        events = []
        while (event := await self.next()) is not None:
            events.append(event)
            if event.get("status") not in PREAMBLE:
                break
        return events

    def leave(self) -> None:
        """The reader is gone: a detached job goes on unread, any other stops."""
        self._reading = False
        self._queue.clear()
        if not self.detach and not self.task.done():
            self.task.cancel()


class Jobs:
    """The running transfers, held so none is garbage-collected mid-flight, and stopped at shutdown."""

    def __init__(self) -> None:
        self._running: set[Job] = set()

    def start(
        self,
        events: AsyncIterator[Event],
        *,
        detach: bool,
        on_end: Callable[[str, float], None] | None = None,
    ) -> Job:
        started = time.monotonic()

        def done(job: Job) -> None:
            self._running.discard(job)
            if on_end is not None:
                on_end(outcome(job.error), time.monotonic() - started)

        job = Job(events, detach=detach, done=done)
        self._running.add(job)
        return job

    def __len__(self) -> int:
        return len(self._running)

    @property
    def running(self) -> tuple[Job, ...]:
        return tuple(self._running)

    async def aclose(self) -> None:
        """Stop every transfer; a download records its partial state first, so a later pull resumes it."""
        tasks = [job.task for job in self._running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

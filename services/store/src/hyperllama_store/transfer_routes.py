"""Pull and push under /store, in Ollama's /api/pull and /api/push forms: NDJSON progress, or the last
object with ``stream: false``. Errors up to the first contact with the registry keep their HTTP status;
after that one ``{"error": "..."}`` line ends the stream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse, StreamingResponse
from hyperllama_common.errors import HyperLlamaError, InvalidRequest
from pydantic import BaseModel, ConfigDict

from hyperllama_store.deps import JobsDep, MetricsDep, StoreDep, TransfersDep
from hyperllama_store.jobs import Event, Job, Jobs
from hyperllama_store.metrics import StoreMetrics
from hyperllama_store.registry import Transfers
from hyperllama_store.store import Store

log = logging.getLogger(__name__)

router = APIRouter(prefix="/store")


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    name: str | None = None  # Ollama's older field, read when ``model`` is absent
    insecure: bool = False
    stream: bool | None = None

    @property
    def target(self) -> str:
        target = self.model or self.name
        if not target:
            raise InvalidRequest("model is required", param="model")
        return target


@dataclass
class Transfer:
    """What a pull or push route needs, from the app's state."""

    store: Store
    transfers: Transfers
    jobs: Jobs
    metrics: StoreMetrics

    def pull(self, name: str, *, insecure: bool) -> Job:
        """Start a pull (a bad name or plain http without insecure raises here). It outlives its reader."""
        events = self.transfers.pull(name, self.store.layout, insecure=insecure, lock=self.store.lock)

        def ended(outcome: str, seconds: float) -> None:
            self.metrics.pulls.labels(outcome).inc()
            self.metrics.pull_seconds.observe(seconds)

        return self.jobs.start(events, detach=True, on_end=ended)

    def push(self, name: str, *, insecure: bool) -> Job:
        events = self.transfers.push(name, self.store.layout, insecure=insecure)

        def ended(outcome: str, seconds: float) -> None:
            self.metrics.pushes.labels(outcome).inc()
            self.metrics.push_seconds.observe(seconds)

        return self.jobs.start(events, detach=False, on_end=ended)


async def started(job: Job) -> AsyncIterator[Event]:
    """``job``'s events, after waiting for its first contact with the registry: an error up to then raises
    here, before anything is sent. The returned iterator leaves the job when it is closed."""
    try:
        head = await job.head()
    except BaseException:
        job.leave()
        raise
    return _follow(job, head)


async def _follow(job: Job, head: list[Event]) -> AsyncIterator[Event]:
    try:
        for event in head:
            yield event
        while (event := await job.next()) is not None:
            yield event
    finally:
        job.leave()


async def ndjson(events: AsyncIterator[Event], what: str) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield json.dumps(event).encode() + b"\n"
    except HyperLlamaError as err:
        yield json.dumps({"error": err.message}).encode() + b"\n"
    except Exception as err:
        # The status line is gone; one error line ends the stream instead.
        log.exception("%s failed", what)
        yield json.dumps({"error": f"{what} failed: {type(err).__name__}: {err}"}).encode() + b"\n"
    finally:
        await _close(events)


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def respond(events: AsyncIterator[Event], stream: bool | None, what: str) -> Response:
    """NDJSON, or with ``stream: false`` the last object (an error keeps its status)."""
    if stream is False:
        last: Event = {}
        try:
            async for event in events:
                last = event
        finally:
            await _close(events)
        return JSONResponse(last)
    return StreamingResponse(ndjson(events, what), media_type="application/x-ndjson")


def _transfer(store: StoreDep, transfers: TransfersDep, jobs: JobsDep, metrics: MetricsDep) -> Transfer:
    return Transfer(store, transfers, jobs, metrics)


TransferDep = Annotated[Transfer, Depends(_transfer)]


@router.post("/pull")
async def pull(body: TransferRequest, transfer: TransferDep) -> Response:
    job = transfer.pull(body.target, insecure=body.insecure)
    return await respond(await started(job), body.stream, "pull")


@router.post("/push")
async def push(body: TransferRequest, transfer: TransferDep) -> Response:
    job = transfer.push(body.target, insecure=body.insecure)
    return await respond(await started(job), body.stream, "push")

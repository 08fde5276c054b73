"""Blob downloads: ranged parts fetched in parallel into the blob's partial file, resumable, verified.

The partial file (``layout.partial_path(digest)``) has the blob's full size from the start and every part
writes at its own offset. Beside it, ``<partial>.json`` records how many bytes of each part are on disk; it is
written only after the data it counts has been synced, so after a crash or a restart the download goes on
from what the record says (at worst fetching again what came after the last record). The blob gets its final
name only after its sha256 over the whole file matched; a mismatch deletes the partial data.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from hyperllama_common.errors import quote

from .client import RegistryClient
from .errors import DigestMismatch, RegistryError, RegistryUnreachable
from .manifest import Layer

log = logging.getLogger(__name__)

_STATE_VERSION = 1


class BlobStore(Protocol):
    """What a download needs of the store's layout."""

    def blob_path(self, digest: str) -> Path: ...
    def partial_path(self, digest: str) -> Path: ...
    def has_blob(self, digest: str) -> bool: ...


@dataclass(frozen=True)
class DownloadOptions:
    part_size: int = 64 * 1024 * 1024
    concurrency: int = 8  # parts in flight per blob
    attempts: int = 6  # per part, counted from the last attempt that made progress
    backoff: float = 0.5
    checkpoint_bytes: int = 32 * 1024 * 1024  # data synced and its record written at least this often
    progress_interval: float = 0.1  # seconds between progress events of one blob


@dataclass
class _Part:
    offset: int
    size: int
    done: int = 0


class _ShortRead(Exception):
    pass


def state_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class BlobDownload:
    """One blob into one store. ``completed`` counts the bytes on disk, for progress."""

    def __init__(
        self,
        store: BlobStore,
        layer: Layer,
        options: DownloadOptions,
        on_bytes: Callable[[int], None] | None = None,
    ):
        self.store = store
        self.on_bytes = on_bytes
        self.digest = layer.digest
        self.total = layer.size
        self.options = options
        self.partial = store.partial_path(self.digest)
        self.state = state_path(self.partial)
        self.completed = 0
        self.parts: list[_Part] = []
        self._fd = -1
        self._unsynced = 0
        self._lock = threading.Lock()
        # What an earlier run left, so the first progress event of a resumed pull already shows it.
        self.completed = sum(p.done for p in self._load_state() or ())

    async def run(self, client: RegistryClient) -> None:
        if self.store.has_blob(self.digest):
            self.completed = self.total
            return
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        try:
            pending = [p for p in self.parts if p.done < p.size]
            if pending:
                limit = asyncio.Semaphore(max(1, self.options.concurrency))
                async with asyncio.TaskGroup() as group:
                    for part in pending:
                        group.create_task(self._fetch_part(client, part, limit))
        except BaseException:
            self._checkpoint()
            os.close(self._fd)
            raise
        os.fsync(self._fd)
        os.close(self._fd)
        await self._verify_and_publish()

    def _open(self) -> None:
        self.parts = self._load_state() or self._plan()
        self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size != self.total:
            os.ftruncate(self._fd, self.total)
        self.completed = sum(p.done for p in self.parts)
        if self.completed:
            log.info("resuming %s at %d of %d bytes", self.digest, self.completed, self.total)

    def _plan(self) -> list[_Part]:
        # A part record from an earlier run would not match a fresh plan: drop both.
        with contextlib.suppress(FileNotFoundError):
            self.state.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()
        size = max(1, self.options.part_size)
        return [_Part(offset, min(size, self.total - offset)) for offset in range(0, self.total, size)]

    def _load_state(self) -> list[_Part] | None:
        try:
            doc = json.loads(self.state.read_text())
            if doc.get("version") != _STATE_VERSION or doc.get("digest") != self.digest:
                return None
            if doc.get("size") != self.total or self.partial.stat().st_size != self.total:
                return None
            parts = [_Part(int(o), int(s), int(d)) for o, s, d in doc["parts"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        expected = 0
        for part in parts:
            if part.offset != expected or part.size <= 0 or not 0 <= part.done <= part.size:
                return None
            expected += part.size
        return parts if expected == self.total else None

    def _checkpoint(self) -> None:
        """Sync the data, then record it: the record never counts bytes that are not on disk."""
        if self._fd < 0:
            return
        # Counted before the sync: parts may write on (from the event loop) while this runs in a thread.
        parts = [[p.offset, p.size, p.done] for p in self.parts]
        self._unsynced = 0
        with self._lock:
            try:
                os.fsync(self._fd)
            except OSError:
                return  # closed under a checkpoint still running in its thread: the last record stands
            doc = {"version": _STATE_VERSION, "digest": self.digest, "size": self.total, "parts": parts}
            tmp = self.state.with_name(self.state.name + ".tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.state)

    async def _fetch_part(self, client: RegistryClient, part: _Part, limit: asyncio.Semaphore) -> None:
        async with limit:
            failures = 0
            while part.done < part.size:
                before = part.done
                try:
                    await self._fetch_range(client, part)
                except (httpx.TransportError, _ShortRead) as err:
                    failures = 0 if part.done > before else failures + 1
                    if failures >= self.options.attempts:
                        raise RegistryUnreachable(
                            f"downloading {self.digest[:19]}: {type(err).__name__}: {quote(str(err), 200)}"
                        ) from err
                    log.info(
                        "download of %s at %d: %s, retrying", self.digest[:19], part.offset + part.done, err
                    )
                    await asyncio.sleep(min(8.0, self.options.backoff * 2 ** max(0, failures - 1)))
            await asyncio.to_thread(self._checkpoint)

    async def _fetch_range(self, client: RegistryClient, part: _Part) -> None:
        start = part.offset + part.done
        end = part.offset + part.size - 1
        headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        resp = await client.request("GET", client.url("blobs", self.digest), headers=headers, stream=True)
        before = part.done
        try:
            if resp.status_code == 206:
                skip = 0
                if not resp.headers.get("content-range", "").startswith(f"bytes {start}-"):
                    raise RegistryError(f"registry answered a wrong range for {self.digest[:19]}")
            elif resp.status_code == 200:
                skip = start  # the server ignored Range and sends the whole blob
            else:
                raise RegistryError(f"registry answered {resp.status_code} for blob {self.digest[:19]}")
            async for chunk in resp.aiter_raw():
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                chunk = chunk[: part.size - part.done]
                os.pwrite(self._fd, chunk, part.offset + part.done)
                part.done += len(chunk)
                self.completed += len(chunk)
                self._unsynced += len(chunk)
                if part.done == part.size:
                    break
                if self._unsynced >= self.options.checkpoint_bytes:
                    await asyncio.to_thread(self._checkpoint)
        finally:
            await resp.aclose()
            if self.on_bytes is not None and part.done > before:
                self.on_bytes(part.done - before)
        if part.done < part.size:
            raise _ShortRead(f"connection ended after {part.done} of {part.size} bytes of a part")

    async def _verify_and_publish(self) -> None:
        actual = await asyncio.to_thread(_hash_file, self.partial)
        if actual != self.digest:
            self.discard()
            self.completed = 0
            raise DigestMismatch(
                f"digest mismatch, file must be downloaded again: want {self.digest}, got {actual}"
            )
        target = self.store.blob_path(self.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.partial, target)
        with contextlib.suppress(FileNotFoundError):
            self.state.unlink()

    def discard(self) -> None:
        for path in (self.partial, self.state):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@dataclass
class _Flight:
    download: BlobDownload
    task: asyncio.Task[None]
    waiters: int = 0


class Downloads:
    """Single flight: one download per blob file at a time in this process, however many pulls want it. Each
    caller follows its progress; when the last one leaves, the download stops (its partial state stays)."""

    def __init__(self, options: DownloadOptions | None = None, on_bytes: Callable[[int], None] | None = None):
        self.options = options or DownloadOptions()
        self.on_bytes = on_bytes  # told the bytes each response brought, for metrics
        self._flights: dict[Path, _Flight] = {}
        self.started = 0  # downloads started (not joined): for metrics and tests

    async def follow(
        self, store: BlobStore, client: RegistryClient, layer: Layer
    ) -> AsyncIterator[tuple[int, int]]:
        """(completed, total) as the blob arrives; ends when it is in the store, raises if it failed."""
        key = store.blob_path(layer.digest)
        flight = self._flights.get(key)
        if flight is None and store.has_blob(layer.digest):
            yield layer.size, layer.size  # already in the store, as Ollama reports a cache hit
            return
        while flight is not None and not flight.task.done() and flight.task.cancelling():
            # Its last follower left: let it record its state before a new download takes the file over.
            await asyncio.wait({flight.task})
            flight = self._flights.get(key)
        if flight is None or flight.task.done():
            download = BlobDownload(store, layer, self.options, self.on_bytes)
            task = asyncio.create_task(download.run(client), name=f"download {layer.digest[:19]}")
            flight = self._flights[key] = _Flight(download, task)
            self.started += 1
            task.add_done_callback(functools.partial(self._finished, key, flight))
        elif flight.download.total != layer.size:
            raise RegistryError(f"blob {layer.digest[:19]} has two sizes in two manifests")
        flight.waiters += 1
        try:
            yield flight.download.completed, flight.download.total
            last = flight.download.completed
            while True:
                done, _ = await asyncio.wait({flight.task}, timeout=self.options.progress_interval)
                if done:
                    if flight.task.cancelled():
                        raise RegistryError(f"download of {layer.digest[:19]} was stopped")
                    flight.task.result()
                    yield flight.download.total, flight.download.total
                    return
                if flight.download.completed != last:
                    last = flight.download.completed
                    yield last, flight.download.total
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()

    async def aclose(self) -> None:
        """Stop every download; each records what it has on disk, so a later pull resumes it."""
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, key: Path, flight: _Flight, _task: asyncio.Task[None]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved here so an error nobody waits for is not reported as lost

"""Pull: a model's manifest and blobs from a registry into the store, with Ollama's progress objects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Protocol

from ..names import ModelName
from .client import RegistryClient
from .download import Downloads
from .errors import ManifestNotFound, RegistryError
from .manifest import ACCEPT, Manifest, parse_manifest

log = logging.getLogger(__name__)


class PullLayout(Protocol):
    def blob_path(self, digest: str) -> Path: ...
    def partial_path(self, digest: str) -> Path: ...
    def has_blob(self, digest: str) -> bool: ...
    def read_manifest(self, name: ModelName) -> bytes | None: ...
    def write_manifest(self, name: ModelName, data: bytes) -> None: ...
    def remove_unused_blobs(self, candidates: Iterable[str] | None = None) -> list[str]: ...


def progress(status: str, digest: str = "", total: int = 0, completed: int = 0) -> dict[str, object]:
    """One progress object as Ollama writes it: empty and zero fields left out."""
    event: dict[str, object] = {"status": status}
    if digest:
        event["digest"] = digest
    if total:
        event["total"] = total
    if completed:
        event["completed"] = completed
    return event


async def fetch_manifest(client: RegistryClient, tag: str) -> Manifest:
    resp = await client.request("GET", client.url("manifests", tag), headers={"Accept": ACCEPT}, allow=(404,))
    if resp.status_code == 404:
        raise ManifestNotFound("pull model manifest: file does not exist")
    return parse_manifest(resp.content, resp.headers.get("content-type", ""))


def _digests(data: bytes | None, name: ModelName) -> set[str]:
    if data is None:
        return set()
    try:
        return {layer.digest for layer in parse_manifest(data).blobs}
    except RegistryError:
        log.warning("pulling %s over an unreadable manifest", name)
        return set()


async def pull_model(
    name: ModelName,
    layout: PullLayout,
    client: RegistryClient,
    downloads: Downloads,
    lock: asyncio.Lock | None = None,
) -> AsyncIterator[dict[str, object]]:
    """``lock`` is the store's manifest lock: held while the manifest is written and unused blobs swept, so
    a delete running beside the pull cannot take a blob the new manifest names."""
    previous = _digests(layout.read_manifest(name), name)
    yield progress("pulling manifest")
    manifest = await fetch_manifest(client, name.tag)
    for layer in manifest.blobs:
        status = f"pulling {layer.digest[7:19]}"
        async for completed, total in downloads.follow(layout, client, layer):
            yield progress(status, layer.digest, total, completed)
    # Each blob was checked against its digest before it got its name in the store.
    yield progress("verifying sha256 digest")
    yield progress("writing manifest")
    unused = previous - {layer.digest for layer in manifest.blobs}
    async with lock or contextlib.nullcontext():
        missing = [layer.digest for layer in manifest.blobs if not layout.has_blob(layer.digest)]
        if missing:
            raise RegistryError(f"blob {missing[0][:19]} went missing before the manifest was written")
        layout.write_manifest(name, manifest.data)
        # Only what the old manifest used: a blob another pull fetched but has not named yet stays.
        removed = layout.remove_unused_blobs(unused) if unused else []
    if unused:
        yield progress("removing unused layers")
        log.info("pull of %s removed %d unused blobs", name, len(removed))
    yield progress("success")

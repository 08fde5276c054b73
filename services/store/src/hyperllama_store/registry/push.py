"""Push: a model's blobs and manifest from the store to a registry, with Ollama's progress objects."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from hyperllama_common.errors import ModelNotFound, quote

from ..names import ModelName
from .client import RegistryClient
from .errors import RegistryError, RegistryUnreachable
from .manifest import Layer, parse_manifest
from .pull import progress

log = logging.getLogger(__name__)

_READ_SIZE = 1024 * 1024


class PushLayout(Protocol):
    def blob_path(self, digest: str) -> Path: ...
    def read_manifest(self, name: ModelName) -> bytes | None: ...


@dataclass(frozen=True)
class UploadOptions:
    chunk_size: int = 64 * 1024 * 1024  # blobs above this go up in PATCH chunks of this size
    attempts: int = 3  # whole-blob attempts: an upload session that failed is started again
    progress_interval: float = 0.1


class _Counter:
    def __init__(self) -> None:
        self.sent = 0


def _reader(path: Path, start: int, length: int, counter: _Counter) -> Callable[[], AsyncIterator[bytes]]:
    def body() -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            with path.open("rb") as f:
                f.seek(start)
                left = length
                while left > 0:
                    chunk = f.read(min(_READ_SIZE, left))
                    if not chunk:
                        raise RegistryError(f"blob file {path.name} is shorter than its manifest says")
                    left -= len(chunk)
                    counter.sent += len(chunk)
                    yield chunk

        return chunks()

    return body


def _location(client: RegistryClient, resp: httpx.Response, base: httpx.URL) -> httpx.URL:
    location = resp.headers.get("location")
    if not location:
        raise RegistryError(f"registry {client.base.host} started an upload without a Location")
    return base.join(location)


async def _upload(
    client: RegistryClient, path: Path, layer: Layer, options: UploadOptions, counter: _Counter
) -> None:
    start_url = client.url("blobs", "uploads/")
    resp = await client.request("POST", start_url, headers={"Content-Length": "0"})
    if resp.status_code == 201:
        counter.sent = layer.size  # mounted: the registry has it already
        return
    url = _location(client, resp, start_url)
    offset = 0
    if layer.size > options.chunk_size:
        while offset < layer.size:
            length = min(options.chunk_size, layer.size - offset)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + length - 1}",
                "Content-Length": str(length),
            }
            resp = await client.request(
                "PATCH", url, headers=headers, content=_reader(path, offset, length, counter), retry=False
            )
            url = _location(client, resp, url)
            offset += length
    length = layer.size - offset
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
    resp = await client.request(
        "PUT",
        url.copy_merge_params({"digest": layer.digest}),
        headers=headers,
        content=_reader(path, offset, length, counter),
        retry=False,
    )
    if resp.status_code != 201:
        raise RegistryError(f"registry {client.base.host} answered {resp.status_code} to a finished upload")


async def push_blob(
    client: RegistryClient,
    path: Path,
    layer: Layer,
    options: UploadOptions,
    on_bytes: Callable[[int], None] | None = None,
) -> AsyncIterator[tuple[int, int]]:
    """(completed, total) while ``layer`` goes up; one event when the registry already has it."""
    resp = await client.request("HEAD", client.url("blobs", layer.digest), allow=(404,))
    if resp.status_code != 404:
        yield layer.size, layer.size
        return
    if not path.is_file():
        raise ModelNotFound(f"blob {layer.digest} of the model is missing from the store")
    for attempt in range(options.attempts):
        counter = _Counter()
        task = asyncio.create_task(_upload(client, path, layer, options, counter))
        try:
            last = -1
            while True:
                done, _ = await asyncio.wait({task}, timeout=options.progress_interval)
                if done:
                    break
                if counter.sent != last:
                    last = counter.sent
                    yield min(last, layer.size), layer.size
        finally:
            if not task.done():
                task.cancel()
        try:
            task.result()
        except (httpx.TransportError, RegistryUnreachable) as err:
            if attempt == options.attempts - 1:
                raise RegistryUnreachable(
                    f"registry {client.base.host} unreachable while pushing {layer.digest[:19]}: "
                    f"{quote(str(err), 200)}"
                ) from err
            log.info("push of %s failed (%s), starting it again", layer.digest[:19], err)
            await asyncio.sleep(0.5 * 2**attempt)
            continue
        if on_bytes is not None:
            on_bytes(counter.sent)
        yield layer.size, layer.size
        return


async def push_model(
    name: ModelName,
    layout: PushLayout,
    client: RegistryClient,
    options: UploadOptions,
    on_bytes: Callable[[int], None] | None = None,
) -> AsyncIterator[dict[str, object]]:
    yield progress("retrieving manifest")
    data = layout.read_manifest(name)
    if data is None:
        yield progress("couldn't retrieve manifest")
        raise ModelNotFound(f"model '{quote(name.display)}' not found")
    manifest = parse_manifest(data)
    for layer in manifest.blobs:
        status = f"pushing {layer.digest[7:19]}"
        async for completed, total in push_blob(
            client, layout.blob_path(layer.digest), layer, options, on_bytes
        ):
            yield progress(status, layer.digest, total, completed)
    yield progress("pushing manifest")
    await client.request(
        "PUT",
        client.url("manifests", name.tag),
        headers={"Content-Type": manifest.media_type},
        content=manifest.data,
    )
    yield progress("success")

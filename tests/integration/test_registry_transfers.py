"""Pull and push against a real OCI registry (Debian's docker-registry) on loopback, seeded by our own push.

Faults come from test doubles in front of it (tests/support/registry.py): a forwarder that cuts, stalls,
corrupts or redirects blob responses and counts what it served, and a token service."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hyperllama_store.layout import Layout
from hyperllama_store.manifest import MEDIA_MODEL, MEDIA_TEMPLATE, Layer, Manifest
from hyperllama_store.names import ModelName
from hyperllama_store.registry import (
    Credential,
    DigestMismatch,
    DownloadOptions,
    ManifestNotFound,
    RegistryUnauthorized,
    RegistryUnreachable,
    RetryPolicy,
    Transfers,
    UploadOptions,
)
from support.registry import (
    RegistryProxyDouble,
    RegistryServer,
    TokenServerDouble,
    bcrypt_htpasswd,
    free_port,
    require_registry,
)

PART = 1024 * 1024
FAST_RETRY = RetryPolicy(attempts=3, backoff=0.01)


def options(**overrides: object) -> DownloadOptions:
    values: dict[str, object] = {
        "part_size": PART,
        "concurrency": 4,
        "backoff": 0.01,
        "progress_interval": 0.01,
        "checkpoint_bytes": 256 * 1024,
    }
    values.update(overrides)
    return DownloadOptions(**values)  # type: ignore[arg-type]


def transfers(**kwargs: object) -> Transfers:
    kwargs.setdefault("download", options())
    kwargs.setdefault("upload", UploadOptions(chunk_size=2 * PART, progress_interval=0.01))
    kwargs.setdefault("retry", FAST_RETRY)
    return Transfers(**kwargs)  # type: ignore[arg-type]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def seed(layout: Layout, name: str, blobs: list[tuple[str, bytes]]) -> bytes:
    """A model in ``layout``: the given (media type, data) layers and a small config; its manifest bytes."""
    layers = []
    for media_type, data in [*blobs, ("config", b'{"model_format":"gguf","model_family":"test"}')]:
        digest = digest_of(data)
        layout.blob_path(digest).write_bytes(data)
        layers.append(
            Layer(
                "application/vnd.docker.container.image.v1+json" if media_type == "config" else media_type,
                digest,
                len(data),
            )
        )
    manifest = Manifest(config=layers[-1], layers=tuple(layers[:-1])).encode()
    layout.write_manifest(ModelName.parse(name), manifest)
    return manifest


async def collect(events: AsyncIterator[dict[str, object]]) -> list[dict[str, object]]:
    return [event async for event in events]


def statuses(events: list[dict[str, object]]) -> list[str]:
    """The statuses in order, each run of one status once."""
    result: list[str] = []
    for event in events:
        if not result or result[-1] != event["status"]:
            result.append(str(event["status"]))
    return result


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    require_registry()
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model_blobs() -> list[tuple[str, bytes]]:
    rng = __import__("random").Random(7)
    weights = rng.randbytes(3 * PART + 12345)  # above the chunk size: pushed in PATCH chunks
    return [(MEDIA_MODEL, weights), (MEDIA_TEMPLATE, b"{{ .Prompt }}")]


@pytest.fixture
async def proxy(registry: RegistryServer) -> AsyncIterator[RegistryProxyDouble]:
    double = RegistryProxyDouble(registry.url)
    await double.start()
    yield double
    double.release.set()
    await double.aclose()


async def push_seeded(
    registry: RegistryServer, tmp_path: Path, blobs: list[tuple[str, bytes]], name: str
) -> bytes:
    source = Layout(tmp_path / "source")
    manifest = seed(source, f"{registry.host}/{name}", blobs)
    client = transfers()
    try:
        await collect(client.push(f"{registry.host}/{name}", source, insecure=True))
    finally:
        await client.aclose()
    return manifest


async def test_push_then_pull_gives_the_same_blobs_and_manifest(registry, model_blobs, tmp_path):
    name = f"{registry.host}/library/roundtrip:q4"
    source = Layout(tmp_path / "source")
    manifest = seed(source, name, model_blobs)
    client = transfers()
    try:
        pushed = await collect(client.push(name, source, insecure=True))
        digests = [digest_of(data) for _, data in model_blobs] + [
            digest_of(b'{"model_format":"gguf","model_family":"test"}')
        ]
        assert statuses(pushed) == [
            "retrieving manifest",
            *[f"pushing {d[7:19]}" for d in digests],
            "pushing manifest",
            "success",
        ]
        again = await collect(client.push(name, source, insecure=True))
        skipped = [e for e in again if "digest" in e]
        assert len(skipped) == len(digests)
        assert [e["completed"] for e in skipped] == [e["total"] for e in skipped]

        target = Layout(tmp_path / "target")
        pulled = await collect(client.pull(name, target, insecure=True))
    finally:
        await client.aclose()

    assert statuses(pulled) == [
        "pulling manifest",
        *[f"pulling {d[7:19]}" for d in digests],
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    for digest, (_, data) in zip(digests, [*model_blobs, ("", b"")], strict=False):
        events = [e for e in pulled if e.get("digest") == digest]
        assert events and all(e["total"] == len(data) or not data for e in events)
        assert events[-1].get("completed") == events[-1]["total"]
        assert hashlib.sha256(target.blob_path(digest).read_bytes()).hexdigest() == digest[7:]
    assert target.read_manifest(ModelName.parse(name)) == manifest
    assert not list(target.blobs.glob("*partial*"))


async def test_pull_resumes_a_cut_blob_without_fetching_it_again(registry, proxy, model_blobs, tmp_path):
    await push_seeded(registry, tmp_path, model_blobs, "library/cut:1")
    weights = digest_of(model_blobs[0][1])
    proxy.cut_after = 5000  # inside whichever part is served first, the short last one included
    target = Layout(tmp_path / "target")
    client = transfers()
    try:
        events = await collect(client.pull(f"{proxy.host}/library/cut:1", target, insecure=True))
    finally:
        await client.aclose()
    assert events[-1] == {"status": "success"}
    assert target.blob_path(weights).read_bytes() == model_blobs[0][1]
    # Every byte was served once: the retry asked only for what had not arrived.
    assert proxy.blob_bytes[weights] == len(model_blobs[0][1])
    assert proxy.blob_gets[weights] == 4 + 1  # four parts, one of them twice


async def test_pull_resumes_after_a_restart(registry, proxy, model_blobs, tmp_path):
    await push_seeded(registry, tmp_path, model_blobs, "library/restart:1")
    weights, size = digest_of(model_blobs[0][1]), len(model_blobs[0][1])
    name = f"{proxy.host}/library/restart:1"
    stop_at = PART + 4321
    proxy.stall_after = stop_at
    root = tmp_path / "store"
    first = transfers(download=options(part_size=8 * PART, concurrency=1))
    pull = first.pull(name, Layout(root), insecure=True)
    async for event in pull:
        if event.get("digest") == weights and event.get("completed") == stop_at:
            break
    await pull.aclose()  # the pull's client goes away mid-blob,
    await first.aclose()  # then the process: the download records what it has on disk
    proxy.release.set()
    assert not Layout(root).has_blob(weights)

    second = transfers(download=options(part_size=8 * PART, concurrency=1))
    try:
        events = await collect(second.pull(name, Layout(root), insecure=True))
    finally:
        await second.aclose()
    assert events[-1] == {"status": "success"}
    resumed = [e for e in events if e.get("digest") == weights]
    assert resumed[0]["completed"] == stop_at
    assert f"bytes={stop_at}-{size - 1}" in proxy.ranges
    assert proxy.blob_bytes[weights] == size
    assert Layout(root).blob_path(weights).read_bytes() == model_blobs[0][1]


async def test_two_concurrent_pulls_fetch_each_blob_once(registry, proxy, model_blobs, tmp_path):
    await push_seeded(registry, tmp_path, model_blobs, "library/twice:1")
    weights = digest_of(model_blobs[0][1])
    proxy.stall_after = 5000  # holds the first blob part served until both pulls wait on the blob
    target = Layout(tmp_path / "target")
    client = transfers()
    name = f"{proxy.host}/library/twice:1"
    waiting: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]

    async def run(i: int) -> list[dict[str, object]]:
        events = []
        async for event in client.pull(name, target, insecure=True):
            events.append(event)
            if event.get("digest") == weights:
                waiting[i].set()
        return events

    try:
        tasks = [asyncio.create_task(run(0)), asyncio.create_task(run(1))]
        await asyncio.wait_for(asyncio.gather(waiting[0].wait(), waiting[1].wait(), proxy.stalled.wait()), 20)
        proxy.release.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        await client.aclose()
    for events in results:
        assert events[-1] == {"status": "success"}
        assert [e for e in events if e.get("digest") == weights][-1]["completed"] == len(model_blobs[0][1])
    assert client.downloads.started == len(model_blobs) + 1
    assert proxy.blob_gets[weights] == 4 + 1  # four parts, the stalled one asked again from where it stopped
    assert proxy.blob_bytes[weights] == len(model_blobs[0][1])
    for _, data in model_blobs:
        assert proxy.blob_gets[digest_of(data)] >= 1
    assert sum(proxy.blob_bytes.values()) == sum(len(d) for _, d in model_blobs) + len(
        b'{"model_format":"gguf","model_family":"test"}'
    )


async def test_a_corrupt_blob_is_an_error_and_never_stored(registry, proxy, model_blobs, tmp_path):
    await push_seeded(registry, tmp_path, model_blobs, "library/corrupt:1")
    proxy.corrupt = True
    target = Layout(tmp_path / "target")
    client = transfers()
    events: list[dict[str, object]] = []
    try:
        with pytest.raises(DigestMismatch, match="digest mismatch"):
            async for event in client.pull(f"{proxy.host}/library/corrupt:1", target, insecure=True):
                events.append(event)
    finally:
        await client.aclose()
    assert events[0] == {"status": "pulling manifest"}
    assert target.blob_digests() == {}
    assert os.listdir(target.blobs) == []  # no partial data, no resume record
    assert target.read_manifest(ModelName.parse(f"{proxy.host}/library/corrupt:1")) is None


async def test_a_missing_model_is_not_found(registry, tmp_path):
    client = transfers()
    events: list[dict[str, object]] = []
    try:
        with pytest.raises(ManifestNotFound, match="pull model manifest: file does not exist") as info:
            async for event in client.pull(
                f"{registry.host}/library/nothing:here", Layout(tmp_path), insecure=True
            ):
                events.append(event)
    finally:
        await client.aclose()
    assert info.value.http_status == 404
    assert events == [{"status": "pulling manifest"}]


async def test_an_unreachable_registry_is_a_clear_error(tmp_path):
    client = transfers(retry=RetryPolicy(attempts=2, backoff=0.01))
    try:
        with pytest.raises(RegistryUnreachable, match="unreachable"):
            await collect(
                client.pull(f"127.0.0.1:{free_port()}/library/x:1", Layout(tmp_path), insecure=True)
            )
    finally:
        await client.aclose()


async def test_pull_replacing_a_model_removes_its_unused_layers(registry, tmp_path):
    name = "library/replaced:1"
    await push_seeded(registry, tmp_path / "v1", [(MEDIA_MODEL, b"old weights")], name)
    target = Layout(tmp_path / "target")
    client = transfers()
    try:
        await collect(client.pull(f"{registry.host}/{name}", target, insecure=True))
        assert target.has_blob(digest_of(b"old weights"))
        await push_seeded(registry, tmp_path / "v2", [(MEDIA_MODEL, b"new weights")], name)
        events = await collect(client.pull(f"{registry.host}/{name}", target, insecure=True))
    finally:
        await client.aclose()
    assert statuses(events)[-3:] == ["writing manifest", "removing unused layers", "success"]
    assert not target.has_blob(digest_of(b"old weights"))
    assert target.has_blob(digest_of(b"new weights"))


async def test_bearer_challenge_and_no_credentials_on_a_redirect(registry, model_blobs, tmp_path):
    """The registry (a forwarder double demanding a bearer token) challenges; the token service double wants
    the configured basic credentials; blobs are redirected to another origin, which must not see the token."""
    await push_seeded(registry, tmp_path, model_blobs[1:], "library/bearer:1")
    tokens = TokenServerDouble("tok-123", field="access_token", user="alice", password="s3cret")
    storage = RegistryProxyDouble(registry.url)
    front = RegistryProxyDouble(registry.url)
    for double in (tokens, storage, front):
        await double.start()
    front.bearer = "tok-123"
    front.challenge = (
        f'Bearer realm="{tokens.url}/token",service="test-registry",scope="repository:library/bearer:pull"'
    )
    front.redirect_blobs_to = storage.url
    client = transfers(credentials={front.host: Credential(username="alice", password="s3cret")})
    try:
        events = await collect(
            client.pull(f"{front.host}/library/bearer:1", Layout(tmp_path / "t"), insecure=True)
        )
    finally:
        await client.aclose()
        for double in (tokens, storage, front):
            await double.aclose()
    assert events[-1] == {"status": "success"}
    assert tokens.requests[0]["query"] == {
        "service": "test-registry",
        "scope": "repository:library/bearer:pull",
    }
    assert "Bearer tok-123" in front.authorizations
    assert storage.blob_gets and set(storage.authorizations) == {None}


@pytest.fixture
def htpasswd_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    require_registry()
    line = bcrypt_htpasswd("bob", "hunter2")
    if line is None:
        pytest.skip("no bcrypt hash available to write an htpasswd file")
    server = RegistryServer(tmp_path / "registry", htpasswd=line).start()
    yield server
    server.stop()


async def test_basic_auth_against_an_htpasswd_registry(htpasswd_registry, tmp_path):
    host = htpasswd_registry.host
    name = f"{host}/library/private:1"
    source = Layout(tmp_path / "source")
    seed(source, name, [(MEDIA_MODEL, b"private weights")])
    anonymous = transfers()
    wrong = transfers(credentials={host: Credential(username="bob", password="wrong")})
    right = transfers(credentials={host: Credential(username="bob", password="hunter2")})
    try:
        with pytest.raises(RegistryUnauthorized):
            await collect(anonymous.push(name, source, insecure=True))
        with pytest.raises(RegistryUnauthorized) as info:
            await collect(wrong.push(name, source, insecure=True))
        assert "wrong" not in str(info.value) and "wrong" not in repr(wrong)
        assert (await collect(right.push(name, source, insecure=True)))[-1] == {"status": "success"}
        target = Layout(tmp_path / "target")
        assert (await collect(right.pull(name, target, insecure=True)))[-1] == {"status": "success"}
        with pytest.raises(RegistryUnauthorized):
            await collect(anonymous.pull(name, Layout(tmp_path / "other"), insecure=True))
    finally:
        for client in (anonymous, wrong, right):
            await client.aclose()
    assert target.has_blob(digest_of(b"private weights"))

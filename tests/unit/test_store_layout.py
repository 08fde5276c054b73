"""Ollama's on-disk layout: manifest writes, listing, the blob sweep, and paths that stay in the store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hyperllama_store.layout import Layout
from hyperllama_store.manifest import CONFIG_MEDIA_TYPE, MEDIA_MODEL, Layer, Manifest
from hyperllama_store.names import InvalidName, ModelName


def _blob(layout: Layout, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layout.blob_path(digest).write_bytes(data)
    return digest


def _manifest(layout: Layout, *payloads: bytes) -> bytes:
    config = _blob(layout, b'{"model_format":"gguf"}\n')
    layers = tuple(Layer(MEDIA_MODEL, _blob(layout, p), len(p)) for p in payloads)
    return Manifest(Layer(CONFIG_MEDIA_TYPE, config, 23), layers).encode()


def test_paths_follow_ollamas_layout(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    name = ModelName.parse("hf.co/user/repo:Q4_K_M")
    assert layout.manifest_path(name) == tmp_path.resolve() / "manifests/hf.co/user/repo/Q4_K_M"
    digest = "sha256:" + "0" * 64
    assert layout.blob_path(digest) == tmp_path.resolve() / f"blobs/sha256-{'0' * 64}"
    assert layout.partial_path("sha256-" + "0" * 64).name == f"sha256-{'0' * 64}-partial"


def test_write_manifest_is_atomic_and_replaces(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    name = ModelName.parse("ns/model:tag")
    layout.write_manifest(name, b"first")
    layout.write_manifest(name, b"second")
    assert layout.read_manifest(name) == b"second"
    # Nothing but the manifest itself: the temporary file was renamed, not left behind.
    assert os.listdir(layout.manifest_path(name).parent) == ["tag"]
    assert oct(layout.manifest_path(name).stat().st_mode & 0o777) == "0o644"


def test_names_that_differ_in_case_share_a_manifest(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.write_manifest(ModelName.parse("Team/Model:Tag"), b"x")
    assert layout.read_manifest(ModelName.parse("team/model:tag")) == b"x"
    layout.write_manifest(ModelName.parse("TEAM/MODEL:TAG"), b"y")
    assert [str(n) for n, _ in layout.list_manifests()] == ["registry.ollama.ai/Team/Model:Tag"]
    assert layout.read_manifest(ModelName.parse("team/model:tag")) == b"y"


def test_delete_manifest_removes_empty_folders(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    one, two = ModelName.parse("ns/a:1"), ModelName.parse("ns/b:1")
    layout.write_manifest(one, b"1")
    layout.write_manifest(two, b"2")
    assert layout.delete_manifest(one) is True
    assert layout.delete_manifest(one) is False
    assert not (layout.manifests / "registry.ollama.ai/ns/a").exists()
    assert (layout.manifests / "registry.ollama.ai/ns/b/1").is_file()
    layout.delete_manifest(two)
    assert os.listdir(layout.manifests) == []


def test_list_skips_temporary_and_invalid_entries(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.write_manifest(ModelName.parse("good:1"), b"{}")
    folder = layout.manifests / "registry.ollama.ai/library/good"
    (folder / ".1-abc").write_bytes(b"half written")
    bad = layout.manifests / "registry.ollama.ai/library/-bad"
    bad.mkdir()
    (bad / "1").write_bytes(b"{}")
    assert [n.display for n, _ in layout.list_manifests()] == ["good:1"]


def test_sweep_removes_only_unreferenced_blobs(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    kept = _manifest(layout, b"shared", b"only-a")
    layout.write_manifest(ModelName.parse("a:1"), kept)
    orphan = _blob(layout, b"orphan")
    uploaded = _blob(layout, b"uploaded for a create")
    partial = layout.partial_path("sha256:" + "1" * 64)
    partial.write_bytes(b"resumable download")
    # With candidates only those are considered: an upload waiting for its create survives.
    assert layout.remove_unused_blobs([orphan]) == [orphan]
    assert layout.has_blob(uploaded)
    assert layout.remove_unused_blobs() == [uploaded]
    assert partial.exists()
    assert layout.referenced_digests() == Manifest.decode(kept).digests
    assert all(layout.has_blob(d) for d in Manifest.decode(kept).digests)


def test_a_symlink_out_of_the_store_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    layout = Layout(tmp_path / "store")
    (layout.manifests / "evil.example").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidName):
        layout.write_manifest(ModelName.parse("evil.example/ns/model:tag"), b"x")
    assert list(outside.iterdir()) == []
    (layout.blobs / f"sha256-{'2' * 64}").symlink_to(outside / "secret")
    with pytest.raises(InvalidName):
        layout.blob_path("sha256:" + "2" * 64)

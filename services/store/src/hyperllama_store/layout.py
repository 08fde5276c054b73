"""Ollama's on-disk layout under one root: ``manifests/<host>/<namespace>/<model>/<tag>`` and
``blobs/sha256-<hex>``. A root that is an existing ``~/.ollama/models`` works as it is.

Every path handed out is resolved and checked to lie under the root, so neither a crafted name nor a
symlink planted in the tree can make the store read or write elsewhere.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hyperllama_common.errors import InvalidRequest

from hyperllama_store.manifest import Manifest
from hyperllama_store.names import InvalidName, ModelName, parse_digest

log = logging.getLogger(__name__)

_BLOB_FILE = re.compile(r"sha256-([0-9a-f]{64})")


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise InvalidName(f"path {path.name!r} leaves the model store")
        return resolved

    # Blobs

    def blob_path(self, digest: str) -> Path:
        hexdigest = parse_digest(digest).removeprefix("sha256:")
        return self._inside(self.blobs / f"sha256-{hexdigest}")

    def partial_path(self, digest: str) -> Path:
        hexdigest = parse_digest(digest).removeprefix("sha256:")
        return self._inside(self.blobs / f"sha256-{hexdigest}-partial")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_digests(self) -> dict[str, int]:
        """Every complete blob and its size."""
        found = {}
        with os.scandir(self.blobs) as entries:
            for entry in entries:
                match = _BLOB_FILE.fullmatch(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    found["sha256:" + match.group(1)] = entry.stat(follow_symlinks=False).st_size
        return found

    def temp_file(self, prefix: str) -> tuple[int, Path]:
        """A new file in the blobs folder (same file system, so a rename puts it in place atomically).
        Its name never matches a blob's, so no reader or sweep mistakes it for one."""
        fd, name = tempfile.mkstemp(prefix=f".{prefix}-", dir=self.blobs)
        return fd, Path(name)

    # Manifests

    def manifest_path(self, name: ModelName) -> Path:
        """Where ``name``'s manifest lives. Names compare without case as in Ollama, so an existing folder
        or file whose name differs only in case is the one used."""
        path = self.manifests
        for part in name.parts:
            path = path / _existing_case(path, part)
        return self._inside(path)

    def read_manifest(self, name: ModelName) -> bytes | None:
        path = self.manifest_path(name)
        try:
            return path.read_bytes() if path.is_file() else None
        except FileNotFoundError:
            return None

    def write_manifest(self, name: ModelName, data: bytes) -> None:
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._inside(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete_manifest(self, name: ModelName) -> bool:
        path = self.manifest_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Empty model/namespace/host folders go too, as Ollama leaves none behind.
        parent = path.parent
        while parent != self.manifests and parent.is_relative_to(self.manifests):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    def list_manifests(self) -> list[tuple[ModelName, Path]]:
        found = []
        for path in sorted(self.manifests.glob("*/*/*/*")):
            if path.name.startswith(".") or not path.is_file():
                continue
            rel = path.relative_to(self.manifests).parts
            try:
                name = ModelName(*rel)
                self._inside(path)
            except InvalidRequest:
                log.warning("skipping manifest with an invalid name: %s", path)
                continue
            found.append((name, path))
        return found

    def load_manifest(self, path: Path) -> Manifest | None:
        try:
            return Manifest.decode(path.read_bytes())
        except (OSError, InvalidRequest) as err:
            log.warning("skipping unreadable manifest %s: %s", path, err)
            return None

    def referenced_digests(self) -> set[str]:
        digests: set[str] = set()
        for _, path in self.list_manifests():
            manifest = self.load_manifest(path)
            if manifest is not None:
                digests |= manifest.digests
        return digests

    def remove_unused_blobs(self, candidates: Iterable[str] | None = None) -> list[str]:
        """Delete blobs no manifest references: all of them, or only those among ``candidates`` (what a
        deleted model used), which leaves alone a blob uploaded for a create that has not happened yet."""
        used = self.referenced_digests()
        pool = self.blob_digests().keys() if candidates is None else {parse_digest(d) for d in candidates}
        removed = []
        for digest in sorted(set(pool) - used):
            try:
                self.blob_path(digest).unlink()
            except FileNotFoundError:
                continue
            removed.append(digest)
        return removed


def _existing_case(folder: Path, part: str) -> str:
    if (folder / part).exists() or not folder.is_dir():
        return part
    lowered = part.lower()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower() == lowered:
                    return entry.name
    except OSError:
        pass
    return part

"""Streaming blob ingest: bytes go to a temporary file while they are hashed, and only a file whose sha256
matches its digest is renamed into place. A blob is never held in memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from hyperllama_common.errors import InvalidRequest

from hyperllama_store.layout import Layout
from hyperllama_store.manifest import digest_of
from hyperllama_store.names import parse_digest


class QuotaExceeded(InvalidRequest):
    """The store would grow past its quota (a 413)."""

    http_status = 413
    code = "quota_exceeded"


class DigestMismatch(InvalidRequest):
    code = "digest_mismatch"


@dataclass(frozen=True)
class Ingested:
    digest: str
    size: int
    created: bool


class BlobWriter:
    """Writes blobs into a layout under an optional quota (0: none)."""

    def __init__(self, layout: Layout, quota_bytes: int = 0) -> None:
        self.layout = layout
        self.quota_bytes = quota_bytes

    def used_bytes(self) -> int:
        return sum(self.layout.blob_digests().values())

    def _room(self) -> int | None:
        return None if not self.quota_bytes else self.quota_bytes - self.used_bytes()

    async def ingest(
        self, digest: str, chunks: AsyncIterable[bytes], expected_size: int | None = None
    ) -> Ingested:
        """Store the stream as blob ``digest``. An existing blob is kept and the stream left unread."""
        digest = parse_digest(digest)
        target = self.layout.blob_path(digest)
        if target.is_file():
            return Ingested(digest, target.stat().st_size, created=False)
        room = self._room()
        if room is not None and expected_size is not None and expected_size > room:
            raise QuotaExceeded(f"blob of {expected_size} bytes exceeds the store quota ({room} bytes free)")
        fd, tmp = self.layout.temp_file("upload")
        hasher = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if room is not None and size > room:
                        raise QuotaExceeded(f"blob exceeds the store quota ({room} bytes free)")
                    hasher.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise DigestMismatch(f"digest mismatch, expected {digest!r}, got {actual!r}", param="digest")
            _place(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Ingested(digest, size, created=True)

    def write_small(self, data: bytes) -> Ingested:
        """A blob built in memory (config, template, system, params, license, messages: a few KiB)."""
        digest = digest_of(data)
        target = self.layout.blob_path(digest)
        if target.is_file():
            return Ingested(digest, len(data), created=False)
        room = self._room()
        if room is not None and len(data) > room:
            raise QuotaExceeded(f"blob of {len(data)} bytes exceeds the store quota ({room} bytes free)")
        fd, tmp = self.layout.temp_file("small")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            _place(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Ingested(digest, len(data), created=True)


def _place(tmp: Path, target: Path) -> None:
    # Ollama's blobs are world-readable; mkstemp makes files 0600.
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)

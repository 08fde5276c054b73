"""Streaming blob ingest: digest check, quota, and nothing left behind on failure."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hyperllama_store.blobs import BlobWriter, DigestMismatch, QuotaExceeded
from hyperllama_store.layout import Layout

DATA = os.urandom(3 * 65536 + 17)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


async def _chunks(data: bytes, size: int = 65536, seen: list[int] | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if seen is not None:
            seen.append(start)
        yield data[start : start + size]


def _files(layout: Layout) -> list[str]:
    return sorted(os.listdir(layout.blobs))


async def test_ingest_streams_into_place(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    writer = BlobWriter(layout)
    result = await writer.ingest(DIGEST, _chunks(DATA), len(DATA))
    assert (result.digest, result.size, result.created) == (DIGEST, len(DATA), True)
    assert layout.blob_path(DIGEST).read_bytes() == DATA
    assert _files(layout) == [f"sha256-{DIGEST[7:]}"]
    # A second upload of the same blob is not read at all.
    seen: list[int] = []
    again = await writer.ingest(DIGEST.replace(":", "-"), _chunks(DATA, seen=seen))
    assert again.created is False and seen == []


async def test_a_mismatch_deletes_the_upload(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    wrong = "sha256:" + "f" * 64
    with pytest.raises(DigestMismatch) as raised:
        await BlobWriter(layout).ingest(wrong, _chunks(DATA))
    assert raised.value.http_status == 400
    assert DIGEST in raised.value.message
    assert _files(layout) == []


async def test_quota_refuses_before_reading_when_the_size_is_known(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    seen: list[int] = []
    with pytest.raises(QuotaExceeded) as raised:
        writer = BlobWriter(layout, quota_bytes=len(DATA) - 1)
        await writer.ingest(DIGEST, _chunks(DATA, seen=seen), len(DATA))
    assert raised.value.http_status == 413
    assert seen == []
    assert _files(layout) == []


async def test_quota_stops_a_stream_of_unknown_length(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    writer = BlobWriter(layout, quota_bytes=len(DATA) + 100)
    small = writer.write_small(b"x" * 200)
    seen: list[int] = []
    with pytest.raises(QuotaExceeded):
        await writer.ingest(DIGEST, _chunks(DATA, seen=seen))
    # It stopped at the chunk that crossed the quota, not at the end of the stream.
    assert len(seen) < len(range(0, len(DATA), 65536))
    assert _files(layout) == [f"sha256-{small.digest[7:]}"]
    assert writer.used_bytes() == 200


def test_write_small_is_content_addressed(tmp_path: Path) -> None:
    writer = BlobWriter(Layout(tmp_path))
    first = writer.write_small(b"template text")
    second = writer.write_small(b"template text")
    assert first.digest == "sha256:" + hashlib.sha256(b"template text").hexdigest()
    assert (first.created, second.created) == (True, False)

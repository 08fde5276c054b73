"""Transfers as background jobs: progress coalescing, errors, a reader leaving, and registry credentials from
the store's settings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hyperllama_common.errors import ModelNotFound
from hyperllama_store.jobs import Jobs, outcome
from hyperllama_store.registry import DigestMismatch, RegistryUnreachable
from hyperllama_store.settings import StoreSettings


async def _events(gate: asyncio.Event, fail: Exception | None = None) -> AsyncIterator[dict]:
    yield {"status": "pulling manifest"}
    for done in (1, 2, 3):
        yield {"status": "pulling abc", "digest": "sha256:abc", "total": 3, "completed": done}
    await gate.wait()
    if fail is not None:
        raise fail
    yield {"status": "success"}


async def test_unread_progress_of_one_blob_is_coalesced() -> None:
    gate = asyncio.Event()
    ended: list[str] = []
    job = Jobs().start(_events(gate), detach=True, on_end=lambda o, s: ended.append(o))
    # The job ran up to the gate before its reader woke: three counts of one blob, one unread object.
    head = await job.head()
    assert head == [
        {"status": "pulling manifest"},
        {"status": "pulling abc", "digest": "sha256:abc", "total": 3, "completed": 3},
    ]
    gate.set()
    assert await job.next() == {"status": "success"}
    assert await job.next() is None
    assert ended == ["success"]


async def test_an_error_before_progress_raises_from_head() -> None:
    async def missing() -> AsyncIterator[dict]:
        yield {"status": "pulling manifest"}
        raise ModelNotFound("pull model manifest: file does not exist")

    ended: list[str] = []
    job = Jobs().start(missing(), detach=True, on_end=lambda o, s: ended.append(o))
    with pytest.raises(ModelNotFound):
        await job.head()
    assert ended == ["not_found"]


async def test_a_detached_job_outlives_its_reader_and_another_stops() -> None:
    jobs = Jobs()
    gate = asyncio.Event()
    pull = jobs.start(_events(gate), detach=True)
    push = jobs.start(_events(asyncio.Event()), detach=False)
    await pull.head()
    await push.head()
    pull.leave()
    push.leave()
    gate.set()
    await asyncio.gather(pull.task, push.task, return_exceptions=True)
    assert pull.error is None and pull.finished
    assert push.task.cancelled()
    assert len(jobs) == 0


def test_outcomes() -> None:
    assert outcome(None) == "success"
    assert outcome(DigestMismatch("x")) == "mismatch"
    assert outcome(RegistryUnreachable("x")) == "unreachable"
    assert outcome(asyncio.CancelledError()) == "cancelled"
    assert outcome(RuntimeError()) == "failed"


def test_registry_credentials_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "auth.json"
    secret_file.write_text(json.dumps({"a.example": {"username": "u", "password": "file-secret"}}))
    inline = json.dumps({"B.example:5000": {"token": "tok-secret"}})
    monkeypatch.setenv("HYPERLLAMA_STORE_REGISTRY_AUTH", inline)
    monkeypatch.setenv("HYPERLLAMA_STORE_REGISTRY_AUTH_FILE", str(secret_file))
    settings = StoreSettings()
    creds = settings.registry_credentials()
    assert creds["a.example"].password == "file-secret"
    assert creds["b.example:5000"].token == "tok-secret"
    shown = repr(settings) + repr(creds)
    assert "tok-secret" not in shown and "file-secret" not in shown


def test_unreadable_credentials_name_no_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not valid JSON") as err:
        StoreSettings(registry_auth="{oops secret").registry_credentials()
    assert "secret" not in str(err.value)
    with pytest.raises(ValueError, match="cannot read registry credentials"):
        StoreSettings(registry_auth_file=tmp_path / "none.json").registry_credentials()

"""The model list both APIs answer: every model in the store, merged with the models workers serve that the
store does not hold (a vLLM worker's Hugging Face model), as /api/tags items."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama_common.errors import HyperLlamaError

from hyperllama_gateway.names import name_key
from hyperllama_gateway.ollama.service import ps_entry, tag_entry
from hyperllama_gateway.scheduler_client import SchedulerClient
from hyperllama_gateway.store_client import StoreClient

log = logging.getLogger(__name__)

PS_STORE_WAIT_SECONDS = 2.0


def merged_tags(stored: list[dict[str, Any]], served: list[scheduler_pb2.ModelEntry]) -> list[dict[str, Any]]:
    """/api/tags items: every stored model, then the served models the store does not hold."""
    keys = ("name", "model", "modified_at", "size", "digest", "details")
    models = [{key: entry.get(key) for key in keys} for entry in stored]
    known = {name_key(str(m["name"])) for m in models}
    for entry in served:
        if name_key(entry.info.name) not in known:
            known.add(name_key(entry.info.name))
            models.append(tag_entry(entry.info))
    return models


async def _stored(store: StoreClient) -> list[dict[str, Any]]:
    try:
        return await store.list_models()
    except HyperLlamaError as err:
        log.warning("model store unavailable; listing the served models only: %s", err.message)
        return []


async def all_models(scheduler: SchedulerClient, store: StoreClient) -> list[dict[str, Any]]:
    stored, served = await asyncio.gather(_stored(store), scheduler.list_models())
    return merged_tags(stored, served)


def modified_unix(tag: dict[str, Any]) -> int:
    try:
        return int(datetime.fromisoformat(str(tag.get("modified_at"))).timestamp())
    except ValueError:
        return int(datetime.now(UTC).timestamp())


async def running_models(scheduler: SchedulerClient, store: StoreClient) -> list[dict[str, Any]]:
    """/api/ps items: every model loaded or loading somewhere. A model the store holds carries the
    store's manifest digest, as /api/tags lists it (a worker that loaded it from its own configuration
    knows only its file's digest), so `ps` and `list` show one ID for it."""
    listing = asyncio.ensure_future(_stored(store))
    try:
        served = await scheduler.list_models()
        # A slow or busy store must not hold ps up: past a moment, the workers' digests stand.
        stored = await asyncio.wait_for(listing, PS_STORE_WAIT_SECONDS)
    except TimeoutError:
        stored = []
    finally:
        listing.cancel()  # done already, or no longer wanted
    digests = {name_key(str(m.get("name"))): m.get("digest") for m in stored}
    running = []
    for entry in served:
        if not (entry.worker_ids or entry.placements):
            continue
        item = ps_entry(entry)
        item["digest"] = digests.get(name_key(entry.info.name)) or item["digest"]
        running.append(item)
    return running

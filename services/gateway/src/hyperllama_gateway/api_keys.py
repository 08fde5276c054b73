"""API keys in Redis, shared by every gateway replica.

A key is 256 random bits, shown once when it is made. Redis holds only its SHA-256 (a key that
random needs no slow hash: it cannot be guessed from its digest), so a Redis dump leaks no key.
Lookups go by digest: how long one takes can tell only about a digest, which reveals nothing of a key.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from typing import cast

import redis.asyncio as redis
from hyperllama_common.errors import InvalidRequest, ModelNotFound, Unavailable, quote
from redis.exceptions import RedisError

from hyperllama_gateway import redis_keys

KEY_PREFIX = "hl-"
# Keys are made by an operator, one per user or application; more is a runaway script.
MAX_KEYS = 10_000
MAX_KEY_NAME_CHARS = 128
# Longer than any key this module makes; anything longer is not worth hashing.
MAX_PRESENTED_CHARS = 256


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    id: str
    tenant: str
    name: str
    created_at: int  # unix seconds
    # The key's first characters, so an operator can tell keys apart without seeing them.
    hint: str
    digest: str

    def public(self) -> dict[str, object]:
        return {"id": self.id, "tenant": self.tenant, "name": self.name, "created_at": self.created_at,
                "hint": self.hint}  # fmt: skip


class ApiKeys:
    def __init__(self, client: redis.Redis):
        self._redis = client

    async def create(self, tenant: str, name: str) -> tuple[str, KeyRecord]:
        """A new key of ``tenant`` (which the caller has checked exists): the key itself, once."""
        if len(name) > MAX_KEY_NAME_CHARS:
            raise InvalidRequest(f"name is at most {MAX_KEY_NAME_CHARS} characters", param="name")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id=uuid.uuid4().hex[:16],
            tenant=tenant,
            name=name,
            created_at=int(time.time()),
            hint=key[: len(KEY_PREFIX) + 4] + "...",
            digest=digest_of(key),
        )
        try:
            if await self._redis.hlen(redis_keys.API_KEYS) >= MAX_KEYS:
                raise InvalidRequest(f"at most {MAX_KEYS} keys; revoke unused ones first")
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(redis_keys.API_KEYS, record.id, json.dumps(asdict(record)))
                pipe.set(redis_keys.api_key(record.digest), json.dumps({"id": record.id, "tenant": tenant}))
                await pipe.execute()
        except RedisError as err:
            raise Unavailable(f"key store (Redis) unavailable: {err}") from err
        return key, record

    async def list(self) -> list[KeyRecord]:
        try:
            raw = cast(dict[bytes, bytes], await self._redis.hgetall(redis_keys.API_KEYS))
        except RedisError as err:
            raise Unavailable(f"key store (Redis) unavailable: {err}") from err
        records = [KeyRecord(**json.loads(v)) for v in raw.values()]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    async def revoke(self, key_id: str) -> KeyRecord:
        try:
            raw = cast(bytes | None, await self._redis.hget(redis_keys.API_KEYS, key_id[:64]))
            if raw is None:
                missing = ModelNotFound(f"no key with id '{quote(key_id, 64)}'")
                missing.code = None
                raise missing
            record = KeyRecord(**json.loads(raw))
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(redis_keys.api_key(record.digest))
                pipe.hdel(redis_keys.API_KEYS, record.id)
                await pipe.execute()
        except RedisError as err:
            raise Unavailable(f"key store (Redis) unavailable: {err}") from err
        return record

    async def tenant_of(self, key: str) -> str | None:
        """The tenant of a valid key, None for any other string."""
        if not key.startswith(KEY_PREFIX) or len(key) > MAX_PRESENTED_CHARS:
            return None
        digest = digest_of(key)
        try:
            raw = cast(bytes | None, await self._redis.get(redis_keys.api_key(digest)))
        except RedisError as err:
            raise Unavailable(f"key store (Redis) unavailable: {err}") from err
        if raw is None:
            return None
        return str(json.loads(raw)["tenant"])

"""The admin API (/admin, the admin key only; auth.Authenticate checks it): API keys and tenants."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from hyperllama_common.errors import InvalidRequest, quote
from pydantic import BaseModel, ConfigDict, Field

from hyperllama_gateway.api_keys import MAX_KEY_NAME_CHARS, ApiKeys
from hyperllama_gateway.quotas import Quotas
from hyperllama_gateway.tenants import ADMIN_TENANT, DEFAULT_TENANT, Tenants

router = APIRouter(prefix="/admin")


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(default=DEFAULT_TENANT, max_length=64)
    name: str = Field(default="", max_length=MAX_KEY_NAME_CHARS)


def _parts(request: Request) -> tuple[ApiKeys, Quotas, Tenants]:
    keys, quotas, tenants = request.app.state.keys, request.app.state.quotas, request.app.state.tenants
    if keys is None or quotas is None:
        raise InvalidRequest("the admin API works only with auth on (HYPERLLAMA_AUTH=on)")
    return keys, quotas, tenants


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, request: Request) -> JSONResponse:
    """A new key for a configured tenant. The key is in this answer and nowhere else, ever."""
    keys, _, tenants = _parts(request)
    if body.tenant == ADMIN_TENANT or tenants.get(body.tenant) is None:
        known = ", ".join(n for n in tenants.names() if n != ADMIN_TENANT)
        raise InvalidRequest(f"no tenant '{quote(body.tenant, 64)}' (configured: {known})", param="tenant")
    key, record = await keys.create(body.tenant, body.name)
    return JSONResponse({**record.public(), "key": key}, status_code=201)


@router.get("/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    keys, _, _ = _parts(request)
    return {"keys": [r.public() for r in await keys.list()]}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    """Revoked at once on every gateway: keys are looked up on every request."""
    keys, _, _ = _parts(request)
    record = await keys.revoke(key_id)
    return {**record.public(), "revoked": True}


@router.get("/tenants")
async def list_tenants(request: Request) -> dict[str, Any]:
    """Every tenant with its limits and its usage (tokens, requests, cancelled and refused ones)."""
    _, quotas, tenants = _parts(request)
    names = tenants.names()
    usage = await quotas.usage(names)
    rows = []
    for name in names:
        tenant = tenants.get(name)
        assert tenant is not None
        row = asdict(tenant)
        row["models"] = list(tenant.models)
        rows.append({**row, "usage": usage[name]})
    return {"tenants": rows}

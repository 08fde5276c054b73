"""Every Redis key the gateway uses, in one place (the scheduler's are in hyperllama_scheduler.keys;
both share the ``hl:`` prefix and never a key).

Tenant names in keys come from the gateway's configuration (tenants.py), never from a request; an
API key appears only as its SHA-256.
"""

PREFIX = "hl"

# Hash: key id -> JSON record of every API key (tenant, name, created, hint, its hash), for listing
# and revoking by id.
API_KEYS = f"{PREFIX}:auth:keys"


# The record of the key whose SHA-256 is ``digest`` (JSON: id, tenant), read on every request.
def api_key(digest: str) -> str:
    return f"{PREFIX}:auth:key:{digest}"


# Requests (or tokens) a tenant started in one minute (unix ms // 60000); expire after two minutes.
def minute_requests(tenant: str, minute: int) -> str:
    return f"{PREFIX}:quota:{tenant}:req:{minute}"


def minute_tokens(tenant: str, minute: int) -> str:
    return f"{PREFIX}:quota:{tenant}:tok:{minute}"


# Sorted set of a tenant's running request ids scored by when their lease lapses (unix ms): a
# gateway that dies mid-request cannot hold a concurrency slot past the request's deadline.
def in_flight(tenant: str) -> str:
    return f"{PREFIX}:quota:{tenant}:inflight"


# Hash of a tenant's usage since the counters began: requests, prompt_tokens, completion_tokens,
# cancelled, rejected.
def usage(tenant: str) -> str:
    return f"{PREFIX}:usage:{tenant}"

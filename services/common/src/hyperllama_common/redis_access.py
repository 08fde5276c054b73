"""How a service reaches Redis with credentials: ``redis://user:password@host:port/db`` (an ACL user),
``redis://:password@host/db`` (requirepass), ``rediss://`` for TLS; redis-py's ``from_url`` reads them
all. The URL is a secret: logs show it through redact_url, and refused credentials stop the service
with a message that says so rather than leaving it to retry what can never work.

Imported only by the services that use Redis (the workers' images carry no redis-py).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as redis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError,
    NoPermissionError,
    ResponseError,
    TimeoutError,
)

_SECRET_QUERY_KEYS = {"password"}


def redact_url(url: str) -> str:
    """``url`` with its password (in the userinfo or a ``password=`` parameter) replaced by ``***``;
    the user name stays, it says which ACL user is meant."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
    redacted = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if not netloc and url.startswith(f"{parts.scheme}://"):  # unix:///path: urlunsplit drops the "//"
        redacted = f"{parts.scheme}://{redacted[len(parts.scheme) + 1 :]}"
    return redacted


class RedisCredentialsRefused(RuntimeError):
    """Redis refused this service's user or password: a setting to fix, not an outage to wait out."""


async def check_credentials(client: redis.Redis, url: str) -> None:
    """One PING: raises RedisCredentialsRefused when Redis refuses the URL's credentials. Redis being
    down is left to the service's own handling (it recovers when Redis is back)."""
    try:
        await client.ping()
    except (AuthenticationError, AuthorizationError, NoPermissionError) as err:
        raise RedisCredentialsRefused(_refused(url, err)) from None
    except ResponseError as err:
        # Older servers answer a missing password with a plain error.
        if str(err).startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            raise RedisCredentialsRefused(_refused(url, err)) from None
        raise
    except (ConnectionError, TimeoutError):
        return


def _refused(url: str, err: Exception) -> str:
    return (
        f"Redis at {redact_url(url)} refused the credentials: {err}. Put the user and password in the "
        "Redis URL: redis://user:password@host:port/db (rediss:// for TLS)"
    )

"""Registry authentication: configured credentials per registry host and the bearer-token challenge.

A registry answers ``401`` with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``; the client
asks the realm for a token (with the host's basic credentials when configured) and retries. A ``Basic``
challenge is answered with the host's user and password. A static token for a host is sent up front.
Secrets never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from .errors import RegistryUnauthorized, RegistryUnreachable

_PARAM_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class Credential:
    """What a registry host accepts: a user and password (basic, or for its token realm) or a static token."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        kind = "token" if self.token else "basic" if self.username else "none"
        return f"Credential({kind}, <redacted>)"

    @property
    def basic(self) -> httpx.BasicAuth | None:
        return httpx.BasicAuth(self.username, self.password) if self.username else None

    @property
    def basic_header(self) -> str | None:
        if not self.username:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")


def parse_credentials(text: str) -> dict[str, Credential]:
    """Credentials per registry host from JSON:
    ``{"host[:port]": {"username": u, "password": p} | {"token": t}}``.
    Errors name the host, never the secret."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError("registry credentials are not valid JSON") from err
    if not isinstance(data, Mapping):
        raise ValueError("registry credentials must be a JSON object of host -> credential")
    result: dict[str, Credential] = {}
    for host, value in data.items():
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError(f"registry credential for {host!r} must be an object of strings")
        unknown = set(value) - {"username", "password", "token"}
        if unknown:
            raise ValueError(f"registry credential for {host!r} has unknown keys {sorted(unknown)}")
        cred = Credential(value.get("username", ""), value.get("password", ""), value.get("token", ""))
        if not cred.token and not cred.username:
            raise ValueError(f"registry credential for {host!r} needs a username or a token")
        result[host.lower()] = cred
    return result


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lower case
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header, or None when there is none we can read."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()})


class Authenticator:
    """The Authorization header for one registry host, renewed when the registry challenges it."""

    def __init__(self, http: httpx.AsyncClient, host: str, credential: Credential | None, *, insecure: bool):
        self._http = http
        self._host = host
        self._credential = credential
        self._insecure = insecure
        self._header: str | None = f"Bearer {credential.token}" if credential and credential.token else None

    def __repr__(self) -> str:
        return f"Authenticator({self._host!r}, {self._credential!r})"

    @property
    def header(self) -> str | None:
        return self._header

    async def answer(self, response: httpx.Response) -> bool:
        """Handle a 401: True when a new Authorization header is ready to retry with."""
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return False
        if challenge.scheme == "basic":
            header = self._credential.basic_header if self._credential else None
            if header is None or header == self._header:
                return False  # these credentials were refused already
            self._header = header
            return True
        if challenge.scheme == "bearer":
            token = await self._fetch_token(challenge.params)
            self._header = f"Bearer {token}"
            return True
        return False

    async def _fetch_token(self, params: dict[str, str]) -> str:
        realm = params.get("realm", "")
        url = httpx.URL(realm) if realm else None
        if url is None or url.scheme not in ("https", "http") or not url.host:
            raise RegistryUnauthorized(
                f"registry {self._host} sent a bearer challenge without a usable realm"
            )
        if url.scheme == "http" and not self._insecure:
            raise RegistryUnauthorized(
                f"registry {self._host} names a plain-http token realm; pull with insecure"
            )
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        basic = self._credential.basic if self._credential and not self._credential.token else None
        try:
            resp = await self._http.get(url, params=query, auth=basic, follow_redirects=True)
        except httpx.TransportError as err:
            raise RegistryUnreachable(
                f"token service of {self._host} unreachable: {type(err).__name__}"
            ) from err
        if resp.status_code in (401, 403):
            raise RegistryUnauthorized("unauthorized: access denied")
        if resp.status_code != 200:
            raise RegistryUnauthorized(f"token service of {self._host} answered {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            body = None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryUnauthorized(f"token service of {self._host} answered without a token")
        return token

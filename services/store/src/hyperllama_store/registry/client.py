"""One repository of one registry over the OCI distribution API: requests with auth, redirects and retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from hyperllama_common.errors import quote

from ..names import ModelName
from .auth import Authenticator
from .errors import InsecureProtocol, RegistryError, RegistryUnauthorized, RegistryUnreachable

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# Statuses worth asking again: the registry or something in front of it is overloaded or restarting.
_TRANSIENT = {408, 425, 429, 500, 502, 503, 504}

Body = bytes | Callable[[], AsyncIterator[bytes]] | None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    backoff: float = 0.5  # seconds before the second attempt, doubled each time after
    max_backoff: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2**attempt)


def resolve(name: str | ModelName, *, insecure: bool) -> tuple[ModelName, httpx.URL]:
    """The model name and its registry's base URL. Plain http only with ``insecure`` (as Ollama, which then
    speaks http to the registry); nothing is sent anywhere here, so a bad name fails before any request."""
    scheme = ""
    if isinstance(name, str):
        for prefix in ("https://", "http://"):
            if name.startswith(prefix):
                scheme = prefix[:-3]
        name = ModelName.parse(name)
    if scheme == "http" and not insecure:
        raise InsecureProtocol("insecure protocol http: pull or push with insecure to use plain http")
    if not scheme:
        scheme = "http" if insecure else "https"
    return name, httpx.URL(f"{scheme}://{name.host}/")


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _error_text(resp: httpx.Response) -> str:
    """A registry's error body ({"errors": [{"code", "message"}]}) in one short line."""
    try:
        errors = resp.json().get("errors")
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except Exception:
        text = resp.text if resp.is_stream_consumed else ""
    return f"{resp.status_code}: {quote(text, 300)}" if text else f"{resp.status_code} {resp.reason_phrase}"


class RegistryClient:
    """Requests to one repository. The Authorization header goes only to the registry's own origin, never to
    the object store a blob request is redirected to."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base: httpx.URL,
        repository: str,
        auth: Authenticator,
        *,
        insecure: bool = False,
        retry: RetryPolicy | None = None,
    ):
        self.http = http
        self.base = base
        self.repository = repository
        self.auth = auth
        self.insecure = insecure
        self.retry = retry or RetryPolicy()

    def __repr__(self) -> str:
        return f"RegistryClient({str(self.base)!r}, {self.repository!r})"

    def url(self, *path: str) -> httpx.URL:
        return self.base.join("/v2/" + self.repository + "/" + "/".join(path))

    async def request(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: dict[str, str] | None = None,
        content: Body = None,
        stream: bool = False,
        allow: tuple[int, ...] = (),
        retry: bool = True,
    ) -> httpx.Response:
        """Send with auth, redirects and retries. Answers a 2xx/3xx response or one whose status is in
        ``allow``; raises otherwise. With ``stream`` the caller reads and closes the response."""
        attempts = self.retry.attempts if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self._send_authorized(method, url, headers or {}, content, stream)
            except httpx.TransportError as err:
                if last:
                    raise RegistryUnreachable(
                        f"registry {self.base.host} unreachable: {type(err).__name__}: {quote(str(err), 200)}"
                    ) from err
                log.info("registry %s: %s %s failed (%s), retrying", self.base.host, method, url.path, err)
            else:
                if resp.status_code < 400 or resp.status_code in allow:
                    return resp
                await resp.aread()
                await resp.aclose()
                if resp.status_code in (401, 403):
                    raise RegistryUnauthorized(f"unauthorized: access denied ({_error_text(resp)})")
                if resp.status_code not in _TRANSIENT or last:
                    raise RegistryError(
                        f"registry {self.base.host}: {method} {url.path}: {_error_text(resp)}"
                    )
                log.info(
                    "registry %s: %s %s answered %d, retrying",
                    self.base.host,
                    method,
                    url.path,
                    resp.status_code,
                )
            await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    async def _send_authorized(
        self, method: str, url: httpx.URL, headers: dict[str, str], content: Body, stream: bool
    ) -> httpx.Response:
        resp = await self._send_following(method, url, headers, content, stream)
        if resp.status_code == 401:
            await resp.aread()
            await resp.aclose()
            if await self.auth.answer(resp):
                resp = await self._send_following(method, url, headers, content, stream)
        return resp

    async def _send_following(
        self, method: str, url: httpx.URL, headers: dict[str, str], content: Body, stream: bool
    ) -> httpx.Response:
        for _ in range(MAX_REDIRECTS + 1):
            request_headers = dict(headers)
            if self.auth.header and _same_origin(url, self.base):
                request_headers["Authorization"] = self.auth.header
            body = content() if callable(content) else content
            request = self.http.build_request(method, url, headers=request_headers, content=body)
            resp = await self.http.send(request, stream=True, follow_redirects=False)
            location = resp.headers.get("location")
            if resp.status_code not in (301, 302, 303, 307, 308) or not location:
                if not stream:
                    try:
                        await resp.aread()
                    finally:
                        await resp.aclose()
                return resp
            await resp.aclose()
            target = url.join(location)
            if target.scheme == "http" and url.scheme == "https" and not self.insecure:
                raise RegistryError(f"registry {self.base.host} redirected to plain http")
            if resp.status_code == 303:
                method, content = "GET", None
            url = target
        raise RegistryError(f"registry {self.base.host}: too many redirects")

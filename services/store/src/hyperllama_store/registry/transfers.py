"""The store's registry side: pulls and pushes over one HTTP client, one download per blob at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import httpx

from ..names import ModelName
from .auth import Authenticator, Credential
from .client import RegistryClient, RetryPolicy, resolve
from .download import DownloadOptions, Downloads
from .pull import PullLayout, pull_model
from .push import PushLayout, UploadOptions, push_model

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class Transfers:
    """Create one per process and share it: its single-flight table is what makes concurrent pulls of one
    model fetch each blob once. ``credentials`` maps a registry host (``host[:port]``, lower case) to what it
    accepts; see ``auth.parse_credentials``."""

    def __init__(
        self,
        *,
        credentials: Mapping[str, Credential] | None = None,
        download: DownloadOptions | None = None,
        upload: UploadOptions | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        user_agent: str = "hyperllama-store",
        on_pull_bytes: Callable[[int], None] | None = None,
        on_push_bytes: Callable[[int], None] | None = None,
    ):
        self._credentials = {k.lower(): v for k, v in (credentials or {}).items()}
        self.downloads = Downloads(download, on_pull_bytes)
        self.on_push_bytes = on_push_bytes
        self.upload = upload or UploadOptions()
        self.retry = retry or RetryPolicy()
        self.http = httpx.AsyncClient(
            timeout=timeout,
            headers={"User-Agent": user_agent},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def __repr__(self) -> str:
        return f"Transfers(hosts with credentials={sorted(self._credentials)})"

    async def aclose(self) -> None:
        await self.downloads.aclose()
        await self.http.aclose()

    def client(self, name: str | ModelName, *, insecure: bool = False) -> tuple[ModelName, RegistryClient]:
        """The parsed name and a client for its repository. Raises InvalidName or InsecureProtocol before
        anything is sent."""
        model, base = resolve(name, insecure=insecure)
        credential = self._credentials.get(model.host.lower())
        auth = Authenticator(self.http, model.host, credential, insecure=insecure)
        client = RegistryClient(self.http, base, model.repository, auth, insecure=insecure, retry=self.retry)
        return model, client

    def pull(
        self,
        name: str | ModelName,
        layout: PullLayout,
        *,
        insecure: bool = False,
        lock: asyncio.Lock | None = None,
    ) -> AsyncIterator[dict[str, object]]:
        """Ollama's pull progress objects, ending with ``{"status": "success"}``; errors raise. A bad name or
        plain http without ``insecure`` raises here, before any output. ``lock`` guards the manifest write."""
        model, client = self.client(name, insecure=insecure)
        return pull_model(model, layout, client, self.downloads, lock)

    def push(
        self, name: str | ModelName, layout: PushLayout, *, insecure: bool = False
    ) -> AsyncIterator[dict[str, object]]:
        """Ollama's push progress objects, ending with ``{"status": "success"}``; errors raise."""
        model, client = self.client(name, insecure=insecure)
        return push_model(model, layout, client, self.upload, self.on_push_bytes)

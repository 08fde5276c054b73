"""A real OCI registry on loopback for the registry tests, and the test doubles that sit in front of it.

``RegistryServer`` runs Debian's ``docker-registry`` binary (``make registry-server`` puts it in .venv/bin)
on a free port with its own storage folder. ``RegistryProxyDouble`` is a test double: a small HTTP/1.1
forwarder in front of the real registry that counts the blob requests and bytes it serves and can cut,
corrupt or redirect them, or demand a bearer token. ``TokenServerDouble`` is a test double of a
registry's token service.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def registry_binary() -> Path | None:
    local = Path(sys.prefix) / "bin" / "docker-registry"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("docker-registry")
    return Path(found) if found else None


def require_registry() -> Path:
    binary = registry_binary()
    if binary is None:
        pytest.skip("docker-registry is not installed (make registry-server, from registry.mk)")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bcrypt_htpasswd(user: str, password: str) -> str | None:
    """An htpasswd line with a bcrypt hash (the only kind the registry reads), from the C library's crypt;
    None where it cannot make one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
        try:
            hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4))
        except (OSError, ValueError):
            return None
    if not hashed or not hashed.startswith("$2"):
        return None
    return f"{user}:{hashed}\n"


class RegistryServer:
    """``docker-registry serve`` on 127.0.0.1 with filesystem storage under ``workdir``."""

    def __init__(self, workdir: Path, *, htpasswd: str | None = None):
        self.binary = require_registry()
        self.workdir = workdir
        self.htpasswd = htpasswd
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        if self.htpasswd is not None:
            path = self.workdir / "htpasswd"
            path.write_text(self.htpasswd)
            config["auth"] = {"htpasswd": {"realm": "hyperllama-test", "path": str(path)}}
        path = self.workdir / "config.yml"
        path.write_text(json.dumps(config))  # YAML reads JSON
        return path

    def start(self, timeout: float = 15.0) -> RegistryServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            log = (self.workdir / "registry.log").open("ab")
            self.process = subprocess.Popen(
                [str(self.binary), "serve", str(self._config())], stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"docker-registry did not start; see {self.workdir / 'registry.log'}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False
                try:
                    if client.get(f"{self.url}/v2/").status_code in (200, 401):
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.02)  # polling the readiness endpoint, not waiting on a guess
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class _HTTPDouble:
    """A minimal HTTP/1.1 server on loopback, one request per connection, for test doubles."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    async def start(self) -> _HTTPDouble:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    key, value = line.split(":", 1)
                    headers[key.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            await self.handle(method, target, headers, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    async def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        raise NotImplementedError

    @staticmethod
    def head(status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()] + ["Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def reply(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        writer.write(self.head(status, {**(headers or {}), "Content-Length": str(len(body))}) + body)
        await writer.drain()


class TokenServerDouble(_HTTPDouble):
    """Test double of a registry's token service: hands out one fixed token, records who asked for what."""

    def __init__(self, token: str, *, field: str = "token", user: str = "", password: str = ""):
        super().__init__()
        self.token = token
        self.field = field
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None
        self.requests: list[dict[str, object]] = []

    async def handle(self, method, target, headers, body, writer):  # type: ignore[no-untyped-def]
        query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
        self.requests.append({"query": query, "authorization": headers.get("authorization")})
        if self.basic is not None and headers.get("authorization") != self.basic:
            await self.reply(writer, 401, b'{"details":"bad credentials"}')
            return
        await self.reply(
            writer, 200, json.dumps({self.field: self.token}).encode(), {"Content-Type": "application/json"}
        )


class RegistryProxyDouble(_HTTPDouble):
    """Test double in front of the real registry: forwards every request, counts blob GETs and the body bytes
    it served per digest, and on demand cuts a blob response short, corrupts it, redirects blob requests to
    another origin, or answers 401 with a bearer challenge unless the request carries ``bearer``."""

    def __init__(self, upstream: str):
        super().__init__()
        self.upstream = upstream
        self.blob_gets: Counter[str] = Counter()
        self.blob_bytes: Counter[str] = Counter()
        self.authorizations: list[str | None] = []
        self.ranges: list[str | None] = []  # the Range header of each blob GET
        self.cut_after: int | None = None  # the next blob response ends after this many body bytes
        self.corrupt = False  # every blob response has one byte flipped
        self.stall_after: int | None = None  # the next blob response stops here until released
        self.stalled = asyncio.Event()  # set when a response has stalled
        self.release = asyncio.Event()  # set to end the stalled response (its connection closes)
        self.redirect_blobs_to: str | None = None
        self.bearer: str | None = None
        self.challenge = ""
        self._client = httpx.AsyncClient(timeout=30.0)

    async def aclose(self) -> None:
        await super().aclose()
        await self._client.aclose()

    async def handle(self, method, target, headers, body, writer):  # type: ignore[no-untyped-def]
        self.authorizations.append(headers.get("authorization"))
        path = urlsplit(target).path
        digest = path.rsplit("/", 1)[-1] if "/blobs/sha256:" in path else None
        if self.bearer is not None and headers.get("authorization") != f"Bearer {self.bearer}":
            await self.reply(
                writer, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": self.challenge}
            )
            return
        if digest and method == "GET" and self.redirect_blobs_to:
            await self.reply(writer, 307, b"", {"Location": self.redirect_blobs_to + target})
            return
        forward = {k: v for k, v in headers.items() if k not in ("host", "connection", "authorization")}
        request = self._client.build_request(method, self.upstream + target, headers=forward, content=body)
        resp = await self._client.send(request, stream=True)
        try:
            out = {
                k: v for k, v in resp.headers.items() if k.lower() not in ("connection", "transfer-encoding")
            }
            if "content-length" not in resp.headers and method != "HEAD":
                data = await resp.aread()
                out["Content-Length"] = str(len(data))
                writer.write(self.head(resp.status_code, out) + data)
                return
            writer.write(self.head(resp.status_code, out))
            if method == "HEAD":
                return
            counting = digest is not None and method == "GET" and resp.status_code in (200, 206)
            if counting:
                self.blob_gets[digest] += 1
                self.ranges.append(headers.get("range"))
            cut, self.cut_after = (self.cut_after, None) if counting else (None, self.cut_after)
            stall, self.stall_after = (self.stall_after, None) if counting else (None, self.stall_after)
            cut = stall if stall is not None else cut
            sent = 0
            async for chunk in resp.aiter_raw():
                if counting and self.corrupt and sent == 0 and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                if cut is not None and sent + len(chunk) > cut:
                    chunk = chunk[: cut - sent]
                writer.write(chunk)
                sent += len(chunk)
                if counting:
                    self.blob_bytes[digest] += len(chunk)
                await writer.drain()
                if cut is not None and sent >= cut:
                    if stall is not None:
                        self.stalled.set()
                        await self.release.wait()
                    return  # the connection closes mid-body, after what was sent so far arrived
        finally:
            await resp.aclose()

"""The gateway's HTTP API as the command line uses it: where the server is, JSON calls, NDJSON streams,
blob uploads, and every failure as one ``ApiError`` with a message fit for a user."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

DEFAULT_PORT = 11434


class ApiError(Exception):
    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.message = message
        self.status = status


def server_url(value: str | None = None) -> str:
    """The server's base URL from ``--host``, else HYPERLLAMA_HOST, else OLLAMA_HOST, read as Ollama
    reads OLLAMA_HOST: ``[scheme://]host[:port][/path]``, host 127.0.0.1 and port 11434 by default (80 or
    443 when a scheme is given)."""
    raw = (value or os.environ.get("HYPERLLAMA_HOST") or os.environ.get("OLLAMA_HOST") or "").strip()
    scheme, sep, rest = raw.partition("://")
    port = DEFAULT_PORT
    if sep:
        if scheme not in ("http", "https"):
            raise ApiError(f"invalid host '{raw}': the scheme must be http or https")
        port = 443 if scheme == "https" else 80
    else:
        scheme, rest = "http", raw
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or port
    except ValueError as err:
        raise ApiError(f"invalid host '{raw}': {err}") from None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def _error_of(response: httpx.Response) -> ApiError:
    try:
        message = str(response.json().get("error") or response.text)
    except (ValueError, AttributeError):
        message = response.text.strip() or response.reason_phrase
    return ApiError(message, response.status_code)


class Api:
    def __init__(self, base_url: str, api_key: str | None = None):
        self.base_url = base_url
        headers = {"User-Agent": "hyperllama-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # No read timeout: a model may load for minutes before its first token.
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=httpx.Timeout(10.0, read=None))

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body, **kwargs)
        except httpx.ConnectError:
            raise self._unreachable() from None
        except httpx.HTTPError as err:
            raise ApiError(f"{method} {path}: {err}") from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    def _unreachable(self) -> ApiError:
        return ApiError(
            f"could not connect to a HyperLlama server at {self.base_url}: is it running? "
            "(start one with `hyperllama serve` or `make run`, or point HYPERLLAMA_HOST at one)"
        )

    def get(self, path: str) -> Any:
        return self._send("GET", path).json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self._send("POST", path, body)
        return response.json() if response.content else {}  # /api/copy answers 200 with no body

    def delete(self, path: str, body: dict[str, Any]) -> None:
        self._send("DELETE", path, body)

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON object; an ``{"error": ...}`` line ends the stream as an ApiError.
        Closing the iterator early closes the connection, which cancels the request on the server."""
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "error" in event:
                        raise ApiError(str(event["error"]), response.status_code)
                    yield event
        except httpx.ConnectError:
            raise self._unreachable() from None
        except httpx.HTTPError as err:
            raise ApiError(f"POST {path}: the connection broke ({err})") from None

    def upload_blob(self, path: Path) -> str:
        """The file's digest, after uploading it to the store unless the store has it already."""
        sha = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        digest = f"sha256:{sha.hexdigest()}"
        try:
            self._send("HEAD", f"/api/blobs/{digest}")
            return digest
        except ApiError as err:
            if err.status != 404:
                raise
        with path.open("rb") as f:
            self._send("POST", f"/api/blobs/{digest}", content=f)
        return digest

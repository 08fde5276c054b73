"""The internal auth settings (token, token file, TLS files) read as documented, refuse half a setup, and
never show the token; Redis URLs keep their credentials for redis-py and lose them in logs."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as redis
from hyperllama_cli.cluster import internal_auth_env
from hyperllama_common.internal_auth import InternalAuth, InternalAuthError, InternalAuthSettings
from hyperllama_common.redis_access import redact_url

TOKEN = "tok-3f9c1e77a0b4d2"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INTERNAL_TOKEN", "INTERNAL_TOKEN_FILE", "TLS_CA", "TLS_CERT", "TLS_KEY", "TLS_SERVER_NAME"):
        monkeypatch.delenv(f"HYPERLLAMA_{name}", raising=False)


def test_no_settings_is_auth_off() -> None:
    auth = InternalAuth.from_env()
    assert auth == InternalAuth() and auth.describe() == "off"
    assert auth.metadata == () and auth.server_interceptors() == []


def test_the_token_from_the_environment_or_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYPERLLAMA_INTERNAL_TOKEN", TOKEN)
    assert InternalAuth.from_env().token == TOKEN
    monkeypatch.delenv("HYPERLLAMA_INTERNAL_TOKEN")
    # `kubectl create secret --from-file` and `echo > file` leave a newline.
    (tmp_path / "token").write_text(TOKEN + "\n")
    monkeypatch.setenv("HYPERLLAMA_INTERNAL_TOKEN_FILE", str(tmp_path / "token"))
    auth = InternalAuth.from_env()
    assert auth.token == TOKEN and auth.describe() == "token"
    assert auth.metadata == (("x-hyperllama-internal-token", TOKEN),)


def test_the_token_never_shows_in_a_repr(tmp_path: Path) -> None:
    settings = InternalAuthSettings(internal_token=TOKEN)
    auth = InternalAuth.from_settings(settings)
    for shown in (repr(settings), str(settings), repr(auth), repr(auth.server_interceptors())):
        assert TOKEN not in shown


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"internal_token": TOKEN, "internal_token_file": "/etc/passwd"}, "not both"),
        ({"internal_token_file": "/nonexistent/token"}, "HYPERLLAMA_INTERNAL_TOKEN_FILE: cannot read"),
        ({"internal_token": "two words"}, "printable ASCII"),
        ({"internal_token": "caf\u00e9"}, "printable ASCII"),
        ({"tls_ca": "ca.crt", "tls_cert": "server.crt"}, "missing: HYPERLLAMA_TLS_KEY"),
        ({"tls_key": "server.key"}, "missing: HYPERLLAMA_TLS_CA, HYPERLLAMA_TLS_CERT"),
    ],
)
def test_half_a_setup_is_refused(settings: dict[str, str], message: str) -> None:
    with pytest.raises(InternalAuthError, match=message) as err:
        InternalAuth.from_settings(InternalAuthSettings(**settings))
    assert TOKEN not in str(err.value)


def test_an_empty_token_file_is_refused_rather_than_turning_auth_off(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(InternalAuthError, match="is empty"):
        InternalAuth.from_settings(InternalAuthSettings(internal_token_file=str(tmp_path / "token")))


def test_tls_files_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_bytes(name.encode())
        monkeypatch.setenv(f"HYPERLLAMA_TLS_{name.upper()}", str(tmp_path / name))
    monkeypatch.setenv("HYPERLLAMA_TLS_SERVER_NAME", "hyperllama")
    auth = InternalAuth.from_env()
    assert auth.tls is not None and (auth.tls.ca, auth.tls.cert, auth.tls.key) == (b"ca", b"cert", b"key")
    assert auth.tls.server_name == "hyperllama" and auth.describe() == "mTLS"
    assert "b'key'" not in repr(auth.tls)


def test_serve_makes_a_token_per_start_unless_one_is_set() -> None:
    first, second = internal_auth_env({}), internal_auth_env({})
    assert len(first["HYPERLLAMA_INTERNAL_TOKEN"]) >= 40
    assert first != second
    assert internal_auth_env({"HYPERLLAMA_INTERNAL_TOKEN": TOKEN}) == {}
    assert internal_auth_env({"HYPERLLAMA_INTERNAL_TOKEN_FILE": "/run/secrets/token"}) == {}


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://alice:s3cret@redis/2", "redis://alice:***@redis/2"),
        ("rediss://alice:p%40ss@redis.example:6380/0", "rediss://alice:***@redis.example:6380/0"),
        ("redis://alice:p@ss@redis/0", "redis://alice:***@redis/0"),
        ("redis://redis/0?password=s3cret&db=1", "redis://redis/0?password=***&db=1"),
        ("redis://alice@redis/0", "redis://alice@redis/0"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
    ],
)
def test_redact_url_hides_passwords_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redis_urls_with_credentials_and_tls_reach_redis_py_whole() -> None:
    client = redis.Redis.from_url("rediss://alice:p%40ss@redis.example:6380/4")
    pool = client.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("alice", "p@ss", 4)

"""API keys, tenants and their limits on the real cluster with HYPERLLAMA_AUTH=on: two gateway processes
sharing one Redis, the official openai and ollama clients, and raw HTTP for what clients never send."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from hyperllama_cli.cluster import LocalCluster, free_port, wait_for
from hyperllama_gateway.auth import MANAGE_ROUTES
from support.cluster_state import reported

MODEL = "smollm2:135m"
ADMIN_KEY = "admin-" + "k" * 30
TENANTS = """
[tenants.narrow]
models = ["smollm2:135m"]
max_priority = 3

[tenants.paced]
requests_per_minute = 4

[tenants.thrifty]
tokens_per_minute = 20

[tenants.single]
max_concurrent = 1

[tenants.ops]
manage_models = true
"""


@pytest.fixture(scope="module")
def secured(
    redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A cluster with auth on, and a second gateway process beside the first (limits are shared)."""
    tenants_file = tmp_path_factory.mktemp("auth") / "tenants.toml"
    tenants_file.write_text(TENANTS)
    db_url = redis_url.rsplit("/", 1)[0] + "/11"
    log_dir = logs_dir / "auth"
    log_dir.mkdir(exist_ok=True)
    # Spans go to the processes' logs, so the canary test sees them too.
    c = LocalCluster(gateway_port=free_port(), log_dir=log_dir, redis_url=db_url,
                     env={"OTEL_TRACES_EXPORTER": "console"})  # fmt: skip
    auth = {"auth": "on", "admin_key": ADMIN_KEY, "redis_url": db_url, "tenants_file": str(tenants_file)}
    with reported(c):
        c.start_store()
        c.start_scheduler()
        c.start_worker("worker-llamacpp-0", heartbeat_seconds="0.5", slots="2")
        c.start_gateway(**auth)
        c.wait_ready(1)
        second_port = free_port()
        env = {**os.environ, **c.env, "HYPERLLAMA_GATEWAY_PORT": str(second_port),
               "HYPERLLAMA_GATEWAY_SCHEDULER_ADDRESS": c.scheduler_address,
               "HYPERLLAMA_GATEWAY_STORE_URL": c.store_url,
               **{f"HYPERLLAMA_GATEWAY_{k.upper()}": v for k, v in auth.items()}}  # fmt: skip
        with open(log_dir / "gateway-2.log", "wb") as out:
            second = subprocess.Popen([sys.executable, "-m", "hyperllama_gateway.main"], env=env, stdout=out,
                                      stderr=subprocess.STDOUT)  # fmt: skip
        try:
            second_url = f"http://127.0.0.1:{second_port}"
            wait_for(lambda: _status(f"{second_url}/health") == 200, "second gateway", None)
            yield {"urls": [c.gateway_url, second_url], "log_dir": log_dir}
        finally:
            second.terminate()
            second.wait(30)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def _admin(url: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def new_key(url: str, tenant: str, name: str = "") -> str:
    r = httpx.post(
        f"{url}/admin/keys", json={"tenant": tenant, "name": name}, headers=_admin(url), timeout=10
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["tenant"] == tenant and body["key"].startswith("hl-") and len(body["key"]) > 40
    return str(body["key"])


def _keys(url: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{url}/admin/keys", headers=_admin(url), timeout=10).json()["keys"])


def _chat(url: str, key: str, model: str = MODEL, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


# Every route a client may call, with a body that would pass validation.
# Generations are kept short: unbounded, at OpenAI's default temperature 1 the small model may run
# to the end of its context, past the client's timeout.
ROUTES = [
    (
        "POST",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
    ),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 4}),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": "x"}),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "x", "options": {"num_predict": 4}}),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 4}},
    ),
    ("POST", "/api/embed", {"model": MODEL, "input": "x"}),
    ("POST", "/api/embeddings", {"model": MODEL, "prompt": "x"}),
    ("GET", "/api/tags", None),
    ("POST", "/api/show", {"model": MODEL}),
    ("GET", "/api/ps", None),
    ("GET", "/api/queue", None),
    ("GET", "/api/workers", None),
    ("GET", "/api/version", None),
    ("POST", "/api/pull", {"model": "nothing:here"}),
    ("POST", "/api/push", {"model": "nothing:here"}),
    ("POST", "/api/create", {"model": "x:y", "from": MODEL}),
    ("POST", "/api/copy", {"source": MODEL, "destination": "x:y"}),
    ("DELETE", "/api/delete", {"model": "x:y"}),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("GET", f"/v2/library/{MODEL.replace(':', '/manifests/')}", None),
    ("GET", "/admin/keys", None),
    ("GET", "/admin/tenants", None),
]


def _send(url: str, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)


def _assert_envelope(path: str, r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (path, r.status_code, r.text)
    if r.request.method == "HEAD":
        return
    if path.startswith("/v1/"):
        error = r.json()["error"]
        assert error["code"] == code and error["message"], (path, error)
    else:
        assert isinstance(r.json()["error"], str) and r.json()["error"], (path, r.text)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer hl-wrong"}, {"x-api-key": "nope"}, "revoked"],
    ids=["no key", "wrong bearer", "wrong x-api-key", "revoked key"],
)
def test_every_route_but_the_probes_needs_a_valid_key(
    secured: dict[str, Any], headers: dict[str, str] | str
) -> None:
    url = secured["urls"][0]
    if headers == "revoked":
        key = new_key(url, "ops", "soon revoked")
        assert _send(url, "GET", "/api/workers", None, {"Authorization": f"Bearer {key}"}).status_code == 200
        key_id = next(k["id"] for k in _keys(url) if k["name"] == "soon revoked")
        assert httpx.delete(f"{url}/admin/keys/{key_id}", headers=_admin(url), timeout=10).status_code == 200
        headers = {"Authorization": f"Bearer {key}"}
    assert isinstance(headers, dict)
    for method, path, body in ROUTES:
        r = _send(url, method, path, body, headers)
        _assert_envelope(path, r, 401, "invalid_api_key")
        if method != "HEAD":
            assert r.headers["www-authenticate"].startswith("Bearer")
    for path in ("/health", "/ready", "/metrics", "/"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path
    assert httpx.head(f"{url}/", timeout=10).status_code == 200


def test_a_key_works_with_the_official_clients_and_a_revoked_key_stops_everywhere(
    secured: dict[str, Any],
) -> None:
    first, second = secured["urls"]
    key = new_key(first, "default", "clients")
    chat = openai.OpenAI(
        base_url=f"{second}/v1", api_key=key, max_retries=0, timeout=120
    ).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4)
    assert chat.choices[0].message.content and chat.usage is not None and chat.usage.completion_tokens > 0
    oll = ollama.Client(host=first, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert MODEL in [m.model for m in oll.list().models]
    assert oll.generate(model=MODEL, prompt="Hi", options={"num_predict": 3}).done
    # x-api-key and a bare Authorization header are keys too.
    assert _send(first, "GET", "/api/tags", None, {"x-api-key": key}).status_code == 200
    assert _send(first, "GET", "/api/tags", None, {"Authorization": key}).status_code == 200

    listed = httpx.get(f"{first}/admin/keys", headers=_admin(first), timeout=10).json()["keys"]
    mine = [k for k in listed if k["name"] == "clients"]
    assert len(mine) == 1 and "key" not in mine[0] and key not in str(listed)
    assert mine[0]["hint"] == key[:7] + "..."
    revoked = httpx.delete(f"{first}/admin/keys/{mine[0]['id']}", headers=_admin(first), timeout=10)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    for url in (first, second):
        r = _chat(url, key)
        _assert_envelope("/v1/chat/completions", r, 401, "invalid_api_key")
    with pytest.raises(ollama.ResponseError) as refused:
        oll.list()
    assert refused.value.status_code == 401
    missing = httpx.delete(f"{first}/admin/keys/{mine[0]['id']}", headers=_admin(first), timeout=10)
    assert missing.status_code == 404


def test_the_admin_api_needs_the_admin_key(secured: dict[str, Any]) -> None:
    url = secured["urls"][0]
    key = new_key(url, "ops")
    r = _send(url, "GET", "/admin/keys", None, {"Authorization": f"Bearer {key}"})
    assert r.status_code == 403 and "admin key" in r.json()["error"]
    bad = httpx.post(f"{url}/admin/keys", json={"tenant": "nobody"}, headers=_admin(url), timeout=10)
    assert bad.status_code == 400 and "no tenant 'nobody'" in bad.json()["error"]
    reserved = httpx.post(f"{url}/admin/keys", json={"tenant": "admin"}, headers=_admin(url), timeout=10)
    assert reserved.status_code == 400


def test_a_key_limited_to_one_model_sees_and_uses_only_that_model(secured: dict[str, Any]) -> None:
    url = secured["urls"][0]
    key = new_key(url, "narrow")
    headers = {"Authorization": f"Bearer {key}"}
    assert _chat(url, key).status_code == 200
    other = "gemma3-chat:270m"
    for method, path, body in [
        ("POST", "/v1/chat/completions", {"model": other, "messages": [{"role": "user", "content": "x"}]}),
        ("POST", "/api/generate", {"model": other, "prompt": "x"}),
        ("POST", "/api/embed", {"model": other, "input": "x"}),
        ("POST", "/api/show", {"model": other}),
        ("GET", f"/v1/models/{other}", None),
    ]:
        _assert_envelope(path, _send(url, method, path, body, headers), 403, "permission_denied")
    # Management routes need manage_models, which this tenant lacks.
    for method, path in sorted(MANAGE_ROUTES):
        r = _send(url, method, path, {"model": MODEL}, headers)
        assert r.status_code == 403, (path, r.text)
    tags = httpx.get(f"{url}/api/tags", headers=headers, timeout=10).json()["models"]
    assert [m["name"] for m in tags] == [MODEL]
    models = httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()["data"]
    assert [m["id"] for m in models] == [MODEL]
    # The admin key sees more than the narrow tenant: the filter is the tenant's, not the store's.
    everything = httpx.get(f"{url}/api/tags", headers=_admin(url), timeout=10).json()["models"]
    assert MODEL in [m["name"] for m in everything]


def test_a_requests_per_minute_limit_holds_across_two_gateways(secured: dict[str, Any]) -> None:
    urls = secured["urls"]
    key = new_key(urls[0], "paced")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: _chat(urls[i % 2], key, max_tokens=1), range(10)))
    ok = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert len(ok) == 4 and len(limited) == 6, [r.status_code for r in answers]
    for r in limited:
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 60
    # Ollama's routes answer the same limit with 429 and its own envelope.
    r = _send(
        urls[1], "POST", "/api/generate", {"model": MODEL, "prompt": "x"}, {"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 429 and "requests per minute" in r.json()["error"]


def test_a_tokens_per_minute_limit_charges_what_requests_used(secured: dict[str, Any]) -> None:
    urls = secured["urls"]
    key = new_key(urls[0], "thrifty")
    first = _chat(urls[0], key, max_tokens=8)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] >= 20
    r = _chat(urls[1], key, max_tokens=8)
    assert r.status_code == 429 and "tokens per minute" in r.json()["error"]["message"]


def test_a_concurrency_cap_refuses_a_second_stream_while_the_first_runs(secured: dict[str, Any]) -> None:
    urls = secured["urls"]
    key = new_key(urls[0], "single")
    headers = {"Authorization": f"Bearer {key}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count"}],
        # Long enough that it still runs while the second request is refused; closing it cancels it.
        "max_tokens": 1000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{urls[0]}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # held: a dropped line iterator closes the response
        assert next(lines).startswith("data:")  # the stream runs
        second = _chat(urls[1], key)
        assert second.status_code == 429 and "concurrent" in second.json()["error"]["message"]
    # Its slot is free again once the first ends (charged in the background: give it a moment).
    wait_for(lambda: _chat(urls[1], key).status_code == 200, "the concurrency slot freed", None, 30)


def test_usage_is_accounted_per_tenant_including_a_cancelled_stream(secured: dict[str, Any]) -> None:
    url = secured["urls"][0]
    key = new_key(url, "default", "usage")

    def usage() -> dict[str, int]:
        tenants = httpx.get(f"{url}/admin/tenants", headers=_admin(url), timeout=10).json()["tenants"]
        return next(t["usage"] for t in tenants if t["name"] == "default")

    before = usage()
    done = _chat(url, key, max_tokens=6).json()["usage"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 400,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=120) as cut:  # fmt: skip
        read = 0
        for line in cut.iter_lines():
            read += line.startswith("data:")
            if read == 5:
                break
    assert read == 5

    def settled() -> bool:
        return usage()["cancelled"] == before["cancelled"] + 1

    wait_for(settled, "the cancelled stream charged", None, 30)
    after = usage()
    assert after["requests"] == before["requests"] + 2
    charged_completion = after["completion_tokens"] - before["completion_tokens"]
    charged_prompt = after["prompt_tokens"] - before["prompt_tokens"]
    # The cut stream is charged its prompt and the tokens it produced (at least those read, fewer
    # than its 400 allowed).
    assert done["completion_tokens"] + 4 <= charged_completion < done["completion_tokens"] + 400
    assert charged_prompt >= done["prompt_tokens"] + 5
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'hyperllama_gateway_tenant_tokens_total{kind="completion",tenant="default"}' in metrics


def _raw_status(url: str, header: bytes) -> int:
    """The status of a GET carrying ``header`` as sent, byte for byte (HTTP clients refuse to send
    most of these)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n")
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


def test_a_fuzzed_authorization_header_never_gets_a_5xx(secured: dict[str, Any]) -> None:
    url = secured["urls"][0]
    values = [b"", b"Bearer", b"Bearer ", b"bearer\t\tx", b"Basic Zm9vOmJhcg==", b"Bearer " + b"A" * 8000,
              b"Bearer \xff\xfe", "Bearer hl-\u00e9\u00e8".encode("latin-1"), b"hl-" + b"x" * 300,
              b"Bearer " + ADMIN_KEY.encode() + b"x", b"Bearer " + ADMIN_KEY[:-1].encode(), b"\x7f\x80\x81",
              b"Bearer hl-\x00"]  # fmt: skip
    for value in values:
        for name in (b"Authorization", b"x-api-key"):
            status = _raw_status(url, name + b": " + value)
            assert status in (400, 401), (name, value[:40], status)


def test_the_cli_manages_keys_with_the_admin_key(secured: dict[str, Any]) -> None:
    url = secured["urls"][0]
    env = {**os.environ, "HYPERLLAMA_HOST": url, "HYPERLLAMA_ADMIN_KEY": ADMIN_KEY}
    env.pop("HYPERLLAMA_API_KEY", None)

    def hyperllama(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "hyperllama_cli.main", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    made = hyperllama("keys", "create", "--tenant", "narrow", "--name", "from-cli")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("hl-") and "shown only this once" in made.stderr
    assert _chat(url, key).status_code == 200
    listed = hyperllama("keys", "ls")
    row = next(line for line in listed.stdout.splitlines() if "from-cli" in line)
    assert "narrow" in row and key not in listed.stdout and key[:7] in row
    assert hyperllama("keys", "revoke", row.split()[0]).returncode == 0
    assert _chat(url, key).status_code == 401
    shown = hyperllama("tenants")
    assert shown.returncode == 0 and "paced" in shown.stdout and "4 req/min" in shown.stdout
    # Without the admin key the admin API refuses, and the CLI says so in one line.
    env["HYPERLLAMA_ADMIN_KEY"] = "wrong-" + "x" * 20
    refused = hyperllama("keys", "ls")
    assert refused.returncode == 1 and refused.stderr.startswith("Error: invalid API key")


def test_no_key_appears_in_any_log_or_span(secured: dict[str, Any]) -> None:
    """Runs after the others (file order): every key made above, the admin key and a canary used
    on every route must be absent from every process's log (spans included: they print there)."""
    url = secured["urls"][0]
    canary = new_key(url, "default", "canary")
    for method, path, body in ROUTES:
        _send(url, method, path, body, {"Authorization": f"Bearer {canary}"})
    _send(url, "GET", "/api/tags", None, {"x-api-key": canary + "-wrong"})
    logs = {p.name: p.read_text(errors="replace") for p in Path(secured["log_dir"]).glob("*.log")}
    assert logs and any("trace_id" in text for text in logs.values()), "spans were not printed"
    for name, text in logs.items():
        assert canary not in text, name
        assert canary[3:20] not in text, name
        assert ADMIN_KEY not in text, name

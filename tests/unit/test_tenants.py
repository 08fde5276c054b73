"""Tenant configuration, model patterns, key extraction, the priority ceiling and CORS."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from hyperllama_gateway.app import create_app
from hyperllama_gateway.auth import presented_key
from hyperllama_gateway.deps import _call
from hyperllama_gateway.settings import GatewaySettings
from hyperllama_gateway.tenants import ADMIN, Tenant, Tenants


def test_a_tenants_file_is_parsed_with_its_limits() -> None:
    tenants = Tenants.parse(
        """
        [tenants.team-a]
        models = ["smollm2:*", "gemma3"]
        max_priority = 5
        weight = 2
        requests_per_minute = 60
        tokens_per_minute = 1000
        max_concurrent = 3
        manage_models = true
        """
    )
    a = tenants.get("team-a")
    assert a == Tenant("team-a", ("smollm2:*", "gemma3"), 5, 2.0, 60, 1000, 3, True)
    assert tenants.get("default") is not None and tenants.get("admin") is ADMIN
    assert tenants.names() == ["admin", "default", "team-a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tenants.admin]", "reserved"),
        ('[tenants."bad name"]', "a name is"),
        ("[tenants.a]\nweight = 0", "weight must be"),
        ("[tenants.a]\nweight = true", "weight must be a number"),
        ("[tenants.a]\nmax_priority = 12", "max_priority must be"),
        ("[tenants.a]\nrequests_per_minute = -1", "non-negative"),
        ("[tenants.a]\nmodels = []", "models must be"),
        ("[tenants.a]\nmodel = ['x']", "unknown field"),
        ("[tenant.a]", "unknown top-level"),
        ("[tenants.a]\nmanage_models = 1", "true or false"),
        ("[tenants", "Expected"),
    ],
)
def test_a_bad_tenants_file_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Tenants.parse(text)


def test_model_patterns_match_names_as_ollama_spells_them() -> None:
    t = Tenant("t", models=("smollm2:*", "gemma3", "hf.co/org/*"))
    assert t.allows("smollm2:135m") and t.allows("registry.ollama.ai/library/smollm2:135m")
    assert t.allows("gemma3") and t.allows("GEMMA3:latest") and not t.allows("gemma3:1b")
    assert t.allows("hf.co/org/repo:Q4_K_M") and not t.allows("hf.co/other/repo")
    assert not t.allows("llama3:8b")
    assert Tenant("all").allows("anything/at:all")


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ([(b"authorization", b"Bearer hl-abc")], "hl-abc"),
        ([(b"authorization", b"bearer   hl-abc ")], "hl-abc"),
        ([(b"authorization", b"hl-abc")], "hl-abc"),
        ([(b"x-api-key", b"hl-abc")], "hl-abc"),
        ([(b"x-api-key", b"hl-x"), (b"authorization", b"Bearer hl-y")], "hl-y"),
        ([(b"authorization", b"Bearer ")], None),
        ([(b"authorization", b"\xff\xfe")], "\xff\xfe"),
        ([], None),
    ],
)
def test_the_key_is_read_from_the_headers_clients_send(
    headers: list[tuple[bytes, bytes]], key: str | None
) -> None:
    assert presented_key(headers) == key


def test_a_tenant_s_priority_ceiling_clamps_the_header() -> None:
    app = create_app(GatewaySettings(scheduler_address="127.0.0.1:1"))

    class Request:
        def __init__(self, tenant: Tenant, priority: str) -> None:
            self.app = app
            self.headers = {"X-HyperLlama-Priority": priority}
            self.state = type("State", (), {"tenant": tenant, "request_id": "r"})()

    app.state.scheduler = app.state.store = app.state.dispatch = app.state.quotas = None
    app.state.settings = app.state.metrics = None
    assert asyncio.run(_call(Request(Tenant("low", max_priority=3), "9"))).priority == 3  # type: ignore[arg-type]
    assert asyncio.run(_call(Request(Tenant("low", max_priority=3), "1"))).priority == 1  # type: ignore[arg-type]
    assert asyncio.run(_call(Request(Tenant("any"), "9"))).priority == 9  # type: ignore[arg-type]


def test_auth_on_without_an_admin_key_does_not_start() -> None:
    with pytest.raises(ValueError, match="needs an admin key"):
        create_app(GatewaySettings(auth=True, admin_key="short"))


def test_cors_headers_only_for_configured_origins() -> None:
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(GatewaySettings(scheduler_address="127.0.0.1:1"))) as client:
        r = client.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    settings = GatewaySettings(scheduler_address="127.0.0.1:1", cors_origins="https://ui.example")
    with TestClient(create_app(settings)) as client:
        r = client.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ui.example"
        assert "access-control-allow-credentials" not in r.headers
        other = client.options(
            "/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers

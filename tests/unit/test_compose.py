"""compose.yaml is valid against the Compose Specification and every image it builds has a Dockerfile.

There is no Docker engine on the build machines, so this is how compose.yaml is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_matches_the_compose_specification(compose: dict):
    if not SCHEMA.exists():
        pytest.skip(f"Compose Specification schema not found at {SCHEMA}")
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(compose)


def test_every_built_service_has_its_dockerfile(compose: dict):
    built = {name: svc["build"] for name, svc in compose["services"].items() if "build" in svc}
    assert {"scheduler", "gateway", "worker-llamacpp"} <= set(built)
    for name, build in built.items():
        dockerfile = ROOT / build.get("context", ".") / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"


def test_services_wait_for_healthy_dependencies(compose: dict):
    services = compose["services"]
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        for dep, condition in svc.get("depends_on", {}).items():
            assert dep in services
            assert condition["condition"] == "service_healthy", f"{name} -> {dep}"
    assert services["worker-llamacpp"]["cpuset"]
    assert services["gateway"]["ports"] == ["${HYPERLLAMA_PORT:-11434}:11434"]

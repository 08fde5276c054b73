"""``hyperllama serve``'s plan over faked machines: cores, memory, 0, 1 and 4 GPUs, engines installed or
not, and what flags and a config file override."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hyperllama_cli.api import ApiError
from hyperllama_cli.plan import (
    GPU_ENGINE_HOST_RESERVE,
    SERVICES_RESERVE,
    Gpu,
    Inventory,
    make_plan,
    split_cores,
)
from hyperllama_cli.serve import add_arguments, settings

GB = 1000**3
H100 = 80 * 2**30


def machine(
    cores: int, memory_gb: int, gpus: int = 0, engines: tuple[str, ...] = ("llamacpp", "vllm", "max")
):
    return Inventory(
        cores=tuple(range(cores)),
        memory_bytes=memory_gb * GB,
        gpus=tuple(Gpu(i, "NVIDIA H100", H100) for i in range(gpus)),
        engines=engines,
    )


def test_a_small_machine_without_gpus_runs_one_llamacpp_worker_on_every_core() -> None:
    plan = make_plan(machine(2, 24))
    assert [(w.name, w.engine, w.pool, w.cpus, w.gpu, w.slots) for w in plan.workers] == [
        ("worker-llamacpp-0", "llamacpp", "cpu-0", "", None, 8)
    ]
    assert plan.workers[0].memory_budget_mb == (24 * GB - SERVICES_RESERVE) // 2**20
    assert plan.schedulers == 1 and plan.notes == ()


def test_one_gpu_gets_a_vllm_worker_and_the_cores_a_llamacpp_worker() -> None:
    plan = make_plan(machine(16, 128, gpus=1))
    gpu, cpu = plan.workers
    assert (gpu.name, gpu.engine, gpu.pool, gpu.gpu) == ("worker-vllm-gpu0", "vllm", "gpu-0", 0)
    assert gpu.memory_budget_mb == int(H100 * 0.9) // 2**20
    assert (cpu.engine, cpu.cpus) == ("llamacpp", "")
    assert cpu.memory_budget_mb == (128 * GB - SERVICES_RESERVE - GPU_ENGINE_HOST_RESERVE) // 2**20


def test_four_gpus_and_many_cores() -> None:
    plan = make_plan(machine(64, 512, gpus=4), schedulers=2)
    gpus = [w for w in plan.workers if w.gpu is not None]
    cpus = [w for w in plan.workers if w.gpu is None]
    assert [w.pool for w in gpus] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    assert {w.engine for w in gpus} == {"vllm"}
    # 64 cores: four llama.cpp workers of 16 cores each, each pinned to its own.
    assert [w.cpus for w in cpus] == ["0-15", "16-31", "32-47", "48-63"]
    assert len({w.memory_budget_mb for w in cpus}) == 1
    assert plan.schedulers == 2


def test_max_serves_the_gpus_when_vllm_is_not_installed() -> None:
    plan = make_plan(machine(8, 64, gpus=2, engines=("llamacpp", "max")))
    assert [w.engine for w in plan.workers if w.gpu is not None] == ["max", "max"]


def test_gpus_with_no_gpu_engine_stay_idle_and_say_so() -> None:
    plan = make_plan(machine(8, 64, gpus=1, engines=("llamacpp",)))
    assert [w.engine for w in plan.workers] == ["llamacpp"]
    assert any("GPUs found but no GPU engine installed" in n for n in plan.notes)


def test_engines_named_with_no_gpu_run_on_the_cpu() -> None:
    plan = make_plan(machine(2, 24), engines=("llamacpp", "vllm", "max"))
    assert [(w.name, w.memory_budget_mb) for w in plan.workers[1:]] == [
        ("worker-vllm-cpu", 0),
        ("worker-max-cpu", 0),
    ]
    only_llamacpp = make_plan(machine(2, 24), engines=("llamacpp",))
    assert [w.engine for w in only_llamacpp.workers] == ["llamacpp"]
    missing = make_plan(machine(2, 24, engines=("llamacpp",)), engines=("vllm",))
    assert missing.workers == () and any("vllm is not installed" in n for n in missing.notes)


def test_more_workers_than_cores_share_them_and_say_so() -> None:
    plan = make_plan(machine(2, 24), cpu_workers=3)
    assert [w.cpus for w in plan.workers] == ["", "", ""]
    assert any("share 2 cores" in n for n in plan.notes)
    pinned = make_plan(machine(5, 24), cpu_workers=2)
    assert [w.cpus for w in pinned.workers] == ["0-2", "3-4"]
    tight = make_plan(machine(2, 3))
    assert any("memory per CPU worker" in n for n in tight.notes)


def test_split_cores() -> None:
    assert split_cores([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError):
        split_cores([0], 2)


def args_of(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('schedulers = 2\nworkers = 3\nengines = ["llamacpp", "max"]\nslots = 4\n')
    s = settings(args_of("--config", str(config), "--workers", "1", "--port", "8080"))
    assert (s["schedulers"], s["workers"], s["engines"], s["slots"], s["port"]) == (
        2,
        1,
        ("llamacpp", "max"),
        4,
        8080,
    )
    assert settings(args_of("--engines", "llamacpp,vllm"))["engines"] == ("llamacpp", "vllm")


@pytest.mark.parametrize(
    ("toml", "argv", "error"),
    [
        ("worker = 2\n", (), "unknown keys in .*: worker"),
        ("workers = [\n", (), "cannot read the config file"),
        ("", ("--engines", "llamacpp,ollama"), "unknown engine"),
        ("", ("--slots", "0"), "slots must be at least 1"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path: Path, toml: str, argv: tuple[str, ...], error: str) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(toml)
    with pytest.raises(ApiError, match=error):
        settings(args_of("--config", str(config), *argv))


def test_serve_makes_an_admin_key_once_when_auth_is_on(tmp_path: Path) -> None:
    from hyperllama_cli.serve import admin_key_env

    key_file = tmp_path / "hl" / "admin_key"
    assert admin_key_env({}, key_file) == {} and not key_file.exists()
    assert admin_key_env({"HYPERLLAMA_AUTH": "on", "HYPERLLAMA_ADMIN_KEY": "k" * 20}, key_file) == {}
    env = admin_key_env({"HYPERLLAMA_AUTH": "on"}, key_file)
    assert env == {"HYPERLLAMA_ADMIN_KEY_FILE": str(key_file)}
    key = key_file.read_text().strip()
    assert len(key) >= 32 and key_file.stat().st_mode & 0o777 == 0o600
    admin_key_env({"HYPERLLAMA_AUTH": "true"}, key_file)
    assert key_file.read_text().strip() == key  # kept across starts

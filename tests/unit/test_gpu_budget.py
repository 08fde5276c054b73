"""A GPU pool's memory budget comes from the driver (nvidia-smi). The nvidia-smi here is a scripted
test double on PATH: this machine has no GPU."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hyperllama_common.memory import detect_budget_bytes, detect_gpu_budget_bytes
from hyperllama_worker_base.pool import DevicePool
from hyperllama_worker_base.settings import EngineWorkerSettings
from hyperllama_worker_base.worker import memory_budget

H100 = 81559  # MiB, as nvidia-smi lists an H100 80GB


def _scripted_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return script


@pytest.fixture
def two_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Answers only the query the worker makes, so a different one fails the test.
    return _scripted_nvidia_smi(
        tmp_path,
        monkeypatch,
        '[ "$*" = "--query-gpu=index,memory.total --format=csv,noheader,nounits" ] || exit 2\n'
        f'printf "0, {H100}\\n1, 40960\\n"',
    )


def test_the_budget_is_the_memory_of_the_pool_s_gpus(two_gpus: Path) -> None:
    assert detect_gpu_budget_bytes([0]) == H100 * 2**20
    assert detect_gpu_budget_bytes([1]) == 40960 * 2**20
    assert detect_gpu_budget_bytes([0, 1]) == (H100 + 40960) * 2**20
    with pytest.raises(OSError, match=r"lists GPUs \[0, 1\], not \[3\]"):
        detect_gpu_budget_bytes([1, 3])


def test_a_driver_that_fails_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    _scripted_nvidia_smi(tmp_path, monkeypatch, f'echo "{message}"; exit 9')
    with pytest.raises(OSError, match="nvidia-smi failed \\(9\\): NVIDIA-SMI has failed"):
        detect_gpu_budget_bytes([0])


def test_a_gpu_worker_without_a_driver_stops_and_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    gpu = DevicePool.from_settings("gpu", "", "0", "")
    with pytest.raises(SystemExit) as stopped:
        memory_budget(EngineWorkerSettings(device="gpu", gpus="0"), gpu)
    assert "cannot run nvidia-smi" in str(stopped.value) and "HYPERLLAMA_WORKER_MEMORY_BUDGET_MB" in str(
        stopped.value
    )
    # A budget that is set needs no driver; a CPU pool reads the cgroup or RAM.
    assert (
        memory_budget(EngineWorkerSettings(device="gpu", gpus="0", memory_budget_mb=1000), gpu)
        == 1000 * 2**20
    )
    cpu = DevicePool.from_settings("cpu", "", "", "")
    assert memory_budget(EngineWorkerSettings(), cpu) == detect_budget_bytes()


def test_a_gpu_worker_reads_its_own_gpus(two_gpus: Path) -> None:
    pool = DevicePool.from_settings("gpu", "", "1", "")
    assert memory_budget(EngineWorkerSettings(device="gpu", gpus="1"), pool) == 40960 * 2**20

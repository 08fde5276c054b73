"""The cores a worker uses: its affinity cut to the cgroup's CPU limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hyperllama_common.cpus import cpu_quota, usable_cores


@pytest.mark.parametrize(
    ("text", "quota"),
    [("200000 100000\n", 2.0), ("150000 100000", 1.5), ("max 100000\n", None), ("garbage", None)],
)
def test_the_cgroup_cpu_limit(tmp_path: Path, text: str, quota: float | None) -> None:
    (tmp_path / "cpu.max").write_text(text)
    assert cpu_quota(tmp_path / "cpu.max") == quota


def test_usable_cores_never_exceed_the_limit_nor_fall_to_zero(tmp_path: Path) -> None:
    affinity = sorted(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(tmp_path / "missing") == affinity
    cpu_max.write_text("max 100000")
    assert usable_cores(cpu_max) == affinity
    cpu_max.write_text("50000 100000")  # half a core: one thread
    assert usable_cores(cpu_max) == affinity[:1]
    cpu_max.write_text(f"{100000 * (len(affinity) + 8)} 100000")  # a limit above the affinity
    assert usable_cores(cpu_max) == affinity

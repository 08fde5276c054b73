"""The cores a process may use: its affinity, cut to its cgroup's CPU limit (a Kubernetes pod with
`limits.cpu: 2` on a 64-core node sees 64 cores in its affinity but may run only two at a time)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>", or "max <period>"


def cpu_quota(path: Path = CPU_MAX) -> float | None:
    """The cgroup's CPU limit in cores ("200000 100000" -> 2.0); None when it has none."""
    try:
        quota, period = path.read_text().split()
        return int(quota) / int(period) if quota != "max" else None
    except (OSError, ValueError):
        return None


def usable_cores(path: Path = CPU_MAX) -> list[int]:
    """This process's cores, no more of them than its CPU limit (rounded down, at least one): one
    llama.cpp thread per core that may run, so threads never wait on the quota mid-step."""
    cores = sorted(os.sched_getaffinity(0))
    quota = cpu_quota(path)
    if quota is not None:
        cores = cores[: max(1, math.floor(quota))]
    return cores

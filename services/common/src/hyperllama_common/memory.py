"""How much memory a worker may fill with models, and how much its process holds now (Linux)."""

from __future__ import annotations

import subprocess
from pathlib import Path

# cgroup v2, then v1: a container's limit. "max" or an absurd v1 value means no limit.
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_NO_LIMIT = 1 << 60


def _meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("MemTotal missing from /proc/meminfo")


def detect_budget_bytes() -> int:
    """The cgroup's memory limit when there is one, else the machine's RAM."""
    total = _meminfo_total()
    for path in _CGROUP_LIMITS:
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < _NO_LIMIT:
            return min(int(raw), total)
    return total


def detect_gpu_budget_bytes(gpus: list[int]) -> int:
    """The memory of these GPUs together, as the NVIDIA driver reports it (``nvidia-smi``; ids are the
    host's, as CUDA_VISIBLE_DEVICES names them). Raises OSError, saying why, when it cannot tell."""
    query = ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise OSError(f"cannot run nvidia-smi to read the GPUs' memory: {err}") from err
    if done.returncode != 0:
        raise OSError(f"nvidia-smi failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    total_mib: dict[int, int] = {}
    for line in done.stdout.splitlines():
        index, _, mib = line.partition(",")
        if index.strip().isdigit() and mib.strip().isdigit():
            total_mib[int(index)] = int(mib)
    missing = [g for g in gpus if g not in total_mib]
    if missing or not gpus:
        raise OSError(f"nvidia-smi lists GPUs {sorted(total_mib)}, not {missing or gpus}")
    return sum(total_mib[g] for g in gpus) * 2**20


def rss_bytes() -> int:
    """This process's resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0

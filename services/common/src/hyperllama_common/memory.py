"""How much memory a worker may fill with models, and how much its process holds now (Linux)."""

from __future__ import annotations

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


def rss_bytes() -> int:
    """This process's resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0

"""What a process costs over a run, from /proc: CPU seconds and context switches, threads and children
included.

CPU: utime + stime of /proc/<pid>/stat, which covers every thread of the process, live or exited.
Context switches: /proc/<pid>/status counts only the thread it names (for a pid, the main thread), so
they are summed over /proc/<pid>/task/*/status. A thread that exits during the run takes the switches
it made in the run with it (the kernel keeps no per-process total in /proc); the runtimes here keep
their threads for the process's life, so that loss is nil in practice. Child processes (found through
/proc/<pid>/task/*/children) are counted with their parent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Snapshot:
    cpu_s: float = 0.0
    # (pid, tid) -> voluntary + nonvoluntary switches of that thread.
    switches: dict[tuple[int, int], int] = field(default_factory=dict)


@dataclass
class Cost:
    cpu_s: float
    switches: int


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""  # the process or thread is gone


def cpu_seconds(pid: int) -> float:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_switches(status: str) -> int:
    total = 0
    for line in status.splitlines():
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            total += int(line.split()[1])
    return total


def tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (FileNotFoundError, ProcessLookupError):
        return []


def family(pid: int) -> list[int]:
    """The process and its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for tid in tids(p):
            todo.extend(int(c) for c in _read(f"/proc/{p}/task/{tid}/children").split())
    return found


def snapshot(pid: int) -> Snapshot:
    snap = Snapshot()
    for p in family(pid):
        snap.cpu_s += cpu_seconds(p)
        for tid in tids(p):
            status = _read(f"/proc/{p}/task/{tid}/status")
            if status:
                snap.switches[(p, tid)] = thread_switches(status)
    return snap


def cost(before: Snapshot, after: Snapshot) -> Cost:
    """What was spent between two snapshots; threads born in between count from zero."""
    switches = sum(n - before.switches.get(key, 0) for key, n in after.switches.items())
    return Cost(round(after.cpu_s - before.cpu_s, 3), switches)


def per_token(costs: dict[str, Cost], tokens: int) -> dict[str, dict[str, float]]:
    """Each process's CPU milliseconds and context switches per generated token."""
    n = max(tokens, 1)
    return {
        name: {"cpu_ms": round(1000 * c.cpu_s / n, 4), "switches": round(c.switches / n, 3)}
        for name, c in costs.items()
    }

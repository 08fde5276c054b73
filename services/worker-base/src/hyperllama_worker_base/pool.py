"""Where the engine runs: a set of CPU cores or a set of GPUs, from settings, by one code path."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hyperllama_common.errors import InvalidRequest


def parse_ids(spec: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]."""
    ids: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        ids.update(range(int(lo), int(hi or lo) + 1))
    return sorted(ids)


def format_ids(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)


@dataclass(frozen=True)
class DevicePool:
    device: str  # "cpu" | "gpu"
    cpus: list[int]  # cores the engine process is pinned to (also on GPU pools: its host threads)
    gpus: list[int]  # GPU ids; empty on CPU pools
    name: str

    @classmethod
    def from_settings(cls, device: str, cpus: str, gpus: str, name: str) -> DevicePool:
        device = device.lower()
        if device not in ("cpu", "gpu"):
            raise InvalidRequest(f"device must be 'cpu' or 'gpu', not '{device}'", param="device")
        cores = parse_ids(cpus) if cpus else sorted(os.sched_getaffinity(0))
        gpu_ids = parse_ids(gpus) if device == "gpu" else []
        if device == "gpu" and not gpu_ids:
            gpu_ids = [0]
        default_name = f"gpu-{format_ids(gpu_ids)}" if device == "gpu" else "cpu-0"
        return cls(device, cores, gpu_ids, name or default_name)

    def child_env(self) -> dict[str, str]:
        """Environment that confines the engine to this pool; an empty list hides every GPU."""
        return {"CUDA_VISIBLE_DEVICES": format_ids(self.gpus)}

    def cpu_range(self) -> str:
        return format_ids(self.cpus)

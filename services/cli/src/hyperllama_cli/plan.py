"""What ``hyperllama serve`` starts on this machine: an inventory of it (cores, memory, NVIDIA GPUs, the
engines installed) and a plan drawn from it (which worker gets which cores or GPU, its memory budget and
its slots). Flags and a config file override any part of the plan."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

# Memory left to Redis, the store, the schedulers and the gateway, and to each GPU engine's host process.
SERVICES_RESERVE = 2 * 1000**3
GPU_ENGINE_HOST_RESERVE = 4 * 1000**3
# Of a GPU's memory, what its worker may fill (the rest: CUDA context, fragmentation).
GPU_MEMORY_SHARE = 0.9
# A llama.cpp worker scales to about this many cores; a machine with more gets several workers (each
# with its own cores and models, which placement spreads requests over), up to MAX_CPU_WORKERS.
CORES_PER_CPU_WORKER = 16
MAX_CPU_WORKERS = 8
DEFAULT_SLOTS = 8
GPU_ENGINES = ("vllm", "max")  # preferred in this order for a GPU
CPU_POOL = "cpu-0"  # the machine's cores are one pool, however many workers share them


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class Inventory:
    cores: tuple[int, ...]
    memory_bytes: int
    gpus: tuple[Gpu, ...] = ()
    engines: tuple[str, ...] = ("llamacpp",)  # the engines whose worker can start here


@dataclass(frozen=True)
class WorkerPlan:
    """One worker to start. Empty or zero fields leave the worker's own default."""

    name: str
    engine: str
    pool: str = ""
    cpus: str = ""  # "0-3": the worker's own cores; "": every core
    gpu: int | None = None
    memory_budget_mb: int = 0
    slots: int = 0


@dataclass(frozen=True)
class Plan:
    schedulers: int
    workers: tuple[WorkerPlan, ...]
    notes: tuple[str, ...] = field(default=())


# ---- the inventory ------------------------------------------------------------------------------------


def detect_gpus() -> tuple[Gpu, ...]:
    """NVIDIA GPUs from nvidia-smi (none where it is missing or fails)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        index, name, mib = (part.strip() for part in line.split(","))
        gpus.append(Gpu(int(index), name, int(mib) * 2**20))
    return tuple(gpus)


def detect(repo: Path) -> Inventory:
    """This machine: the cores this process may run on (cut to a cgroup's CPU limit), its memory (the
    cgroup's limit when lower), its NVIDIA GPUs, and the engines installed in ``repo``'s virtualenvs."""
    # The workers' own rules (serve runs beside the server packages; the client verbs never load them).
    from hyperllama_common.cpus import usable_cores
    from hyperllama_common.memory import detect_budget_bytes

    cores = tuple(usable_cores())
    memory = detect_budget_bytes()
    engines = ["llamacpp"] + [e for e in GPU_ENGINES if (repo / f".venv-{e}" / "bin" / "python").is_file()]
    return Inventory(cores, memory, detect_gpus(), tuple(engines))


# ---- the plan -----------------------------------------------------------------------------------------


def cpu_ranges(cores: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts, start = [], None
    for i, core in enumerate(cores):
        if start is None:
            start = core
        if i + 1 == len(cores) or cores[i + 1] != core + 1:
            parts.append(str(start) if start == core else f"{start}-{core}")
            start = None
    return ",".join(parts)


def make_plan(
    inv: Inventory,
    *,
    cpu_workers: int | None = None,
    schedulers: int = 1,
    engines: tuple[str, ...] | None = None,
    slots: int = DEFAULT_SLOTS,
) -> Plan:
    """One GPU worker per GPU (vLLM where installed, else MAX), and llama.cpp workers on the cores: one
    per CORES_PER_CPU_WORKER cores unless ``cpu_workers`` says, each pinned to its own cores when there
    are enough, sharing what memory is left after the services and the GPU engines' host processes.
    ``engines`` limits what runs; a GPU engine named with no GPU runs on the CPU."""
    notes: list[str] = []
    wanted = engines or ("llamacpp", *GPU_ENGINES)
    for engine in wanted:
        if engine not in inv.engines:
            notes.append(f"{engine} is not installed (make engine-{engine}): no {engine} worker")
    gpu_engine = next((e for e in GPU_ENGINES if e in wanted and e in inv.engines), None)
    workers: list[WorkerPlan] = []
    if inv.gpus and gpu_engine is None:
        notes.append(
            "GPUs found but no GPU engine installed (make engine-vllm or engine-max): they stay idle"
        )
    if gpu_engine is not None:
        for gpu in inv.gpus:
            workers.append(
                WorkerPlan(
                    name=f"worker-{gpu_engine}-gpu{gpu.index}",
                    engine=gpu_engine,
                    pool=f"gpu-{gpu.index}",
                    cpus="",
                    gpu=gpu.index,
                    memory_budget_mb=int(gpu.memory_bytes * GPU_MEMORY_SHARE) // 2**20,
                    slots=slots,
                )
            )
    # Named explicitly with no GPU to run on: the GPU engines run on the CPU, one worker each.
    cpu_engines = [e for e in GPU_ENGINES if engines and e in engines and e in inv.engines and not inv.gpus]
    if "llamacpp" in wanted:
        count = (
            cpu_workers
            if cpu_workers is not None
            else max(1, min(MAX_CPU_WORKERS, len(inv.cores) // CORES_PER_CPU_WORKER))
        )
    else:
        count = 0
    host_reserved = SERVICES_RESERVE + GPU_ENGINE_HOST_RESERVE * (len(workers) + len(cpu_engines))
    left = max(0, inv.memory_bytes - host_reserved)
    cpu_share = left // max(1, count) // 2**20
    if count and cpu_share < 1024:
        notes.append(f"only {cpu_share} MB of memory per CPU worker: models may not fit")
    pinned = count > 1 and len(inv.cores) >= count
    if count > 1 and not pinned:
        notes.append(f"{count} llama.cpp workers share {len(inv.cores)} cores: each slows the others down")
    parts = split_cores(list(inv.cores), count) if pinned else [[] for _ in range(count)]
    for i, cores in enumerate(parts):
        name = f"worker-llamacpp-{i}"
        workers.append(WorkerPlan(name, "llamacpp", CPU_POOL, cpu_ranges(cores), None, cpu_share, slots))
    for engine in cpu_engines:
        # No budget of its own: a CPU vLLM or MAX server sizes its KV cache by its own settings, and its
        # worker measures what a model needs against the machine's memory.
        workers.append(WorkerPlan(f"worker-{engine}-cpu", engine, CPU_POOL, "", None, 0, slots))
    if not workers:
        notes.append("no worker to start: the gateway will answer 503 until one registers")
    return Plan(schedulers=schedulers, workers=tuple(workers), notes=tuple(notes))


def split_cores(cores: list[int], parts: int) -> list[list[int]]:
    """``cores`` in ``parts`` contiguous runs as even as can be (the first runs take the remainder)."""
    if parts < 1 or len(cores) < parts:
        raise ValueError(f"cannot split {len(cores)} cores into {parts} parts")
    size, extra = divmod(len(cores), parts)
    runs: list[list[int]] = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        runs.append(cores[start:end])
        start = end
    return runs


def with_overrides(plan: Plan, memory_budget_mb: int | None = None) -> Plan:
    """The plan with a memory budget set by hand for every worker."""
    if memory_budget_mb is None:
        return plan
    return replace(plan, workers=tuple(replace(w, memory_budget_mb=memory_budget_mb) for w in plan.workers))

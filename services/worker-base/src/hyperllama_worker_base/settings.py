from hyperllama_common.worker_settings import WorkerBaseSettings


class EngineWorkerSettings(WorkerBaseSettings):
    """Settings every engine-server worker shares; each engine's worker adds its own fields."""

    # The model: the name clients use and the Hugging Face directory the engine loads. Empty: start with
    # no model; the scheduler loads models from the store on demand (one at a time).
    model: str = "smollm2:135m"
    model_path: str = ".cache/models/smollm2-135m-hf"
    # Context length the engine is started with; 0 = the model's own.
    max_model_len: int = 8192
    # Sequences the engine decodes together; reported to the scheduler as this worker's slots.
    max_batch: int = 8
    # Memory the engine takes besides a model's weights (its runtime and KV cache), counted against the
    # worker's memory budget when a model loads.
    engine_memory_mb: int = 3072

    # The pool: "cpu" with optional cores (cpus), or "gpu" with device ids. One code path for both.
    device: str = "cpu"
    gpus: str = ""  # e.g. "0" or "0,1"; becomes CUDA_VISIBLE_DEVICES of the engine
    pool: str = ""  # name reported to the scheduler; default cpu-0 / gpu-<ids>

    # The engine's own server on loopback; 0 = a free port.
    engine_port: int = 0
    # A start that takes longer is a failed start (first starts compile and may be slow).
    engine_start_timeout_seconds: float = 600.0
    engine_health_interval_seconds: float = 2.0
    # Consecutive failed health checks that count as a hung engine.
    engine_health_failures: int = 3
    # After a crash or hang the engine is started again after this pause.
    engine_restart_backoff_seconds: float = 2.0

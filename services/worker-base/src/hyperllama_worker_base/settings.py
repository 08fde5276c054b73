from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineWorkerSettings(BaseSettings):
    """Settings every engine-server worker shares; each engine's worker adds its own fields."""

    model_config = SettingsConfigDict(env_prefix="HYPERLLAMA_WORKER_")

    host: str = "127.0.0.1"
    port: int = 50061
    # Prometheus metrics over HTTP on this port (0 = any free port, -1 = off).
    metrics_port: int = 9102
    # Address the scheduler dials; defaults to host:port.
    advertise_address: str = ""
    worker_id: str = ""
    scheduler_address: str = "127.0.0.1:50051"
    heartbeat_seconds: float = 2.0
    grace_seconds: float = 15.0
    # Record prompt text on trace spans (off: prompts are user data).
    trace_prompts: bool = False
    log_level: str = "INFO"
    log_json: bool = False

    # The model: the name clients use and the Hugging Face directory the engine loads.
    model: str = "smollm2:135m"
    model_path: str = ".cache/models/smollm2-135m-hf"
    # Context length the engine is started with; 0 = the model's own.
    max_model_len: int = 8192
    # Sequences the engine decodes together; reported to the scheduler as this worker's slots.
    max_batch: int = 8

    # The pool: "cpu" with optional cores, or "gpu" with device ids. One code path for both.
    device: str = "cpu"
    cpus: str = ""  # e.g. "0-3" or "0,2"; empty = every core this process may use
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

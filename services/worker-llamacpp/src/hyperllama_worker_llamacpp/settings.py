from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYPERLLAMA_WORKER_")

    host: str = "127.0.0.1"
    port: int = 50061
    # Prometheus metrics over HTTP on this port (0 = any free port, -1 = off).
    metrics_port: int = 9102
    # Address the scheduler dials; defaults to host:port.
    advertise_address: str = ""
    worker_id: str = ""
    pool: str = "cpu-0"
    # Cores this worker is pinned to, e.g. "0-3" or "0,2"; empty = all.
    cpus: str = ""
    # llama.cpp threads; 0 = one per pinned core.
    threads: int = 0
    scheduler_address: str = "127.0.0.1:50051"
    heartbeat_seconds: float = 2.0
    # TOML model registry; the default model needs none.
    models_file: str = ""
    # Comma-separated names of the registry's models this worker serves.
    models: str = "smollm2:135m"
    # Context each sequence may use (prompt + output); the KV cache holds slots x num_ctx tokens.
    num_ctx: int = 4096
    # Sequences decoded together per model (continuous batching).
    slots: int = 8
    # Most tokens one decode step feeds; long prompts are prefilled in chunks of this size.
    batch_tokens: int = 512
    grace_seconds: float = 15.0
    # Record prompt text on trace spans (off: prompts are user data).
    trace_prompts: bool = False
    log_level: str = "INFO"
    log_json: bool = False

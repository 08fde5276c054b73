from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYPERLLAMA_WORKER_")

    host: str = "127.0.0.1"
    port: int = 50061
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
    # Context size per model; 0 = the model's own training context.
    num_ctx: int = 8192
    grace_seconds: float = 15.0
    log_level: str = "INFO"
    log_json: bool = False

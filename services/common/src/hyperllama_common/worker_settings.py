"""The settings every worker has, whatever its engine; each worker's Settings adds its own fields."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerBaseSettings(BaseSettings):
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
    # Cores this worker is pinned to, e.g. "0-3" or "0,2"; empty = every core this process may use.
    cpus: str = ""
    grace_seconds: float = 15.0
    # Record prompt text on trace spans (off: prompts are user data).
    trace_prompts: bool = False
    # The model store a worker loads models from on demand, and its own cache of the store's blobs.
    store_url: str = "http://127.0.0.1:11435"
    cache_dir: str = "~/.cache/hyperllama/blobs"
    # The store's directory when this worker can read it (one machine, a shared volume): blobs are
    # hard-linked from it rather than downloaded.
    store_dir: str = ""
    # Memory models may take here, in MiB (0 = detected: the cgroup's limit, else the machine's RAM).
    memory_budget_mb: int = 0
    log_level: str = "INFO"
    log_json: bool = False

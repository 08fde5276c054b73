from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYPERLLAMA_GATEWAY_")

    host: str = "127.0.0.1"
    port: int = 11434
    # One scheduler replica (host:port), several (host:port,host:port) or dns:///name:port (all the
    # addresses a name resolves to); calls go round robin to the replicas that answer.
    scheduler_address: str = "127.0.0.1:50051"
    # Largest request body accepted; bigger ones get 413 before they are read.
    max_body_bytes: int = 4 * 1024 * 1024
    # Longest a generation may take end to end, queue wait included.
    request_timeout_seconds: float = 600.0
    # How long to keep retrying while the scheduler restarts (requests keep their place in the queue).
    scheduler_retry_seconds: float = 10.0
    # How often a request whose worker failed before its first token is placed on another.
    max_redispatch: int = 2
    # Timeout of the scheduler's quick calls (model lists, readiness).
    control_timeout_seconds: float = 3.0
    # The model store (services/store): catalog, create/copy/delete, blobs, pull/push, the /v2 registry.
    store_url: str = "http://127.0.0.1:11435"
    # Timeout of the store's quick calls (list, show, copy, delete, blob checks).
    store_timeout_seconds: float = 10.0
    # Longest quiet spell inside a streamed store call (pull progress, a blob upload) before it is given up.
    store_stream_idle_seconds: float = 600.0
    # Record prompt text on trace spans (off: prompts are user data).
    trace_prompts: bool = False
    log_level: str = "INFO"
    log_json: bool = False

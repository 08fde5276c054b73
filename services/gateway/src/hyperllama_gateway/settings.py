from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYPERLLAMA_GATEWAY_")

    host: str = "127.0.0.1"
    port: int = 11434
    scheduler_address: str = "127.0.0.1:50051"
    # Largest request body accepted; bigger ones get 413 before they are read.
    max_body_bytes: int = 4 * 1024 * 1024
    # Longest a generation may take end to end, queue wait included.
    request_timeout_seconds: float = 600.0
    # How long to keep retrying while the scheduler restarts (requests keep their place in the queue).
    scheduler_retry_seconds: float = 10.0
    # Timeout of the scheduler's quick calls (model lists, readiness).
    control_timeout_seconds: float = 3.0
    log_level: str = "INFO"
    log_json: bool = False

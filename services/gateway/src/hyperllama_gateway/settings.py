from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The admin key guards every key; shorter is guessable.
MIN_ADMIN_KEY_CHARS = 16


def _env(name: str) -> AliasChoices:
    """A setting read from its cluster-wide name (HYPERLLAMA_<NAME>: `HYPERLLAMA_AUTH=on make run`
    reaches every process) or the gateway's own (HYPERLLAMA_GATEWAY_<NAME>)."""
    return AliasChoices(f"HYPERLLAMA_{name}", f"HYPERLLAMA_GATEWAY_{name}")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYPERLLAMA_GATEWAY_", populate_by_name=True)

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
    # API keys: "on" makes every route but /health, /ready, /metrics and GET / need a key (auth.py).
    auth: bool = Field(default=False, validation_alias=_env("AUTH"))
    # The admin key (/admin: keys and tenants), or a file holding it (a mounted Secret).
    admin_key: SecretStr = Field(default=SecretStr(""), validation_alias=_env("ADMIN_KEY"))
    admin_key_file: str = Field(default="", validation_alias=_env("ADMIN_KEY_FILE"))
    # Keys, limits and usage are shared by every gateway replica through Redis (auth on only).
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # Tenants (tenants.py); none: every key belongs to the default tenant.
    tenants_file: str = ""
    # Origins a browser may call the API from (comma-separated; "*" any, never with credentials).
    # Empty: no CORS headers at all.
    cors_origins: str = ""
    log_level: str = "INFO"
    log_json: bool = False

    def admin_key_value(self) -> str:
        """The admin key, from the file when one is named. Raises ValueError when auth is on and there
        is none, or it is too short to be a secret."""
        key = self.admin_key.get_secret_value()
        if self.admin_key_file:
            key = Path(self.admin_key_file).read_text(encoding="utf-8").strip()
        if self.auth and len(key) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(
                "HYPERLLAMA_AUTH=on needs an admin key of at least "
                f"{MIN_ADMIN_KEY_CHARS} characters in HYPERLLAMA_ADMIN_KEY or HYPERLLAMA_ADMIN_KEY_FILE"
            )
        return key

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

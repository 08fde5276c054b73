from hyperllama_common.durations import parse_go_duration
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYPERLLAMA_SCHEDULER_")

    host: str = "127.0.0.1"
    port: int = 50051
    # Prometheus metrics over HTTP on this port (0 = any free port, -1 = off).
    metrics_port: int = 9101
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Most requests waiting per model; past it new requests are refused at once.
    queue_max_per_model: int = 256
    # Seconds a client is told to wait before retrying a refused request.
    retry_after_seconds: int = 1
    # A worker that misses heartbeats for this long gets no new work.
    worker_lease_seconds: float = 6.0
    # Longest a request may live when the caller gives no deadline.
    default_request_timeout_seconds: float = 600.0
    # A queued request whose Acquire call stops renewing this lease is dropped (its caller is gone).
    request_lease_seconds: float = 10.0
    # A running stream's slot lease lapses unless its gateway renews it within this.
    slot_lease_seconds: float = 15.0
    # Send a request to the worker most likely to hold its prompt's prefix in cache, balanced
    # against load (off: least-loaded only).
    prefix_aware: bool = True
    # How long a request waits for the busy worker that holds most of its prompt's prefix before it
    # goes to another worker (which would compute the prefix again).
    prefix_patience_seconds: float = 2.0
    # The model store, asked what a model no worker serves is (its format, size, blobs) to load it.
    store_url: str = "http://127.0.0.1:11435"
    # How long a model stays loaded after its last request when the request does not say
    # (Ollama's OLLAMA_KEEP_ALIVE): seconds or a Go duration; negative = forever.
    keep_alive_seconds: float = Field(
        default=300.0,
        validation_alias=AliasChoices("HYPERLLAMA_KEEP_ALIVE", "HYPERLLAMA_SCHEDULER_KEEP_ALIVE_SECONDS"),
    )
    # Longest a worker may take to fetch and load a model.
    load_timeout_seconds: float = 300.0
    # How often every replica looks for copies whose keep_alive ran out.
    sweep_seconds: float = 1.0
    # A model whose oldest queued request has waited this long gets one more copy on another worker
    # that can host it (0 = never); extra copies unload by keep_alive like any other.
    replica_after_seconds: float = 5.0
    # Most copies of one model (0 = one per worker at most).
    max_copies: int = 0
    # Copies of a model kept loaded whatever the traffic, for production: JSON, e.g.
    # {"smollm2:135m": 2}. They load at start (on whichever workers fit) and never unload by
    # keep_alive or eviction while they are at this floor.
    min_copies: dict[str, int] = Field(default_factory=dict)
    redis_timeout_seconds: float = 2.0
    grace_seconds: float = 15.0
    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("keep_alive_seconds", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return parse_go_duration(value)
        return value

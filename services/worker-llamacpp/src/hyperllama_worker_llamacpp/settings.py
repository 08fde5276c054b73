from hyperllama_common.worker_settings import WorkerBaseSettings


class WorkerSettings(WorkerBaseSettings):
    pool: str = "cpu-0"
    # llama.cpp threads; 0 = one per pinned core, no more than the cgroup's CPU limit.
    threads: int = 0
    # TOML model registry; the default model needs none.
    models_file: str = ""
    # Comma-separated names of the registry's models this worker loads at start and keeps loaded;
    # empty = none (models then load from the store on demand).
    models: str = "smollm2:135m"
    # Context each sequence may use (prompt + output); the KV cache holds slots x num_ctx tokens.
    num_ctx: int = 4096
    # Sequences decoded together per model (continuous batching).
    slots: int = 8
    # Host memory per model for the prompt cache: the KV cells of prompts that slots gave up, copied
    # back into a slot when a prompt starts the same way (0 = off). About 23 KB a token for the
    # default model, so 256 MiB holds some 11,000 tokens.
    prompt_cache_mb: int = 256
    # Most tokens one decode step feeds; long prompts are prefilled in chunks of this size.
    batch_tokens: int = 512
    # Embedding calls that may wait per model behind the one running; past it the worker answers
    # Overloaded (busy, ask again elsewhere).
    embed_queue_max: int = 16
    # Longest embedding input in tokens (0 = num_ctx). Each input is decoded in one batch, and llama.cpp
    # also computes logits for every token of it: a 4096-token input takes about 1.6 GB.
    embed_num_ctx: int = 0

from hyperllama_worker_base.settings import EngineWorkerSettings


class MaxWorkerSettings(EngineWorkerSettings):
    # Weight encoding; empty = float32 on CPU pools (MAX refuses bfloat16 there and its quantised
    # GGUF kernels crash on CPU), bfloat16 on GPU pools.
    quantization_encoding: str = ""
    # Fraction of device memory MAX may take (weights plus KV cache).
    device_memory_utilization: float = 0.5
    # Guided decoding for response_format JSON / JSON schema (GPU pools only in MAX 26.7).
    structured_output: bool = True

from hyperllama_worker_base.settings import EngineWorkerSettings


class VllmWorkerSettings(EngineWorkerSettings):
    # bfloat16 runs on GPUs and on CPUs with AVX-512 BF16 or AMX; float32 works everywhere.
    dtype: str = "bfloat16"
    # KV cache on CPU pools, in GiB (VLLM_CPU_KVCACHE_SPACE).
    cpu_kv_cache_gib: int = 1
    # Fraction of each GPU's memory vLLM may take on GPU pools.
    gpu_memory_utilization: float = 0.85
    # CUDA graphs / torch.compile cost a long first start (and on CPU their cache does not reload).
    enforce_eager: bool = True

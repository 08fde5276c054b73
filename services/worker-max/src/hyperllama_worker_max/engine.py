"""How the MAX worker starts `max serve` and which request fields it sends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hyperllama.worker.v1 import worker_pb2
from hyperllama_worker_base.adapter import SAMPLING_DEFAULTS, Dialect, openai_sampling
from hyperllama_worker_base.pool import DevicePool, format_ids

from hyperllama_worker_max.settings import MaxWorkerSettings

# No "embed": MAX serves embeddings only from embedding-model pipelines. No "logit_bias": MAX 26.7
# takes the field (it is OpenAI's) and ignores it, so the worker refuses it instead.
BASE_CAPABILITIES = ["generate", "chat", "seed", "stop", "token_prompt", "context"]


class MaxEngine:
    name = "max"
    health_path = "/health"
    # MAX drops `tools` when tool_choice is "none" (and parses calls otherwise), so the worker renders
    # a chat with tools itself and sends the ids as the chat's prompt_tokens; it returns token ids on
    # request.
    dialect = Dialect(chat_token_field="prompt_tokens", returns_token_ids=True)

    def __init__(self, settings: MaxWorkerSettings, pool: DevicePool, model_dir: Path):
        self.settings = settings
        self.pool = pool
        self.model_dir = model_dir
        # MAX refuses --enable-structured-output on CPU (26.7), so CPU pools do not claim JSON output
        # and the scheduler sends JSON requests elsewhere.
        self.structured = settings.structured_output and pool.device == "gpu"
        self.capabilities = BASE_CAPABILITIES + (["json_object", "json_schema"] if self.structured else [])
        # MAX refuses logprobs under its overlap scheduler, which it turns on by itself on GPUs for the
        # models that support it; CPU pools never run it.
        if pool.device == "cpu":
            self.capabilities.append("logprobs")

    def command(self, port: int) -> list[str]:
        s = self.settings
        encoding = s.quantization_encoding or ("float32" if self.pool.device == "cpu" else "bfloat16")
        devices = (
            "cpu" if self.pool.device == "cpu" else f"gpu:{format_ids(list(range(len(self.pool.gpus))))}"
        )
        # `max` is the console script of the max package, next to this interpreter.
        argv = [
            str(Path(sys.executable).with_name("max")), "serve",
            "--model-path", str(self.model_dir),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--devices", devices,
            "--quantization-encoding", encoding,
            "--max-batch-size", str(s.max_batch),
            "--device-memory-utilization", str(s.device_memory_utilization),
        ]  # fmt: skip
        if s.max_model_len:
            argv += ["--max-length", str(s.max_model_len)]
        if self.structured:
            argv.append("--enable-structured-output")
        return argv

    def env(self) -> dict[str, str]:
        # Without this MAX tries to send telemetry to the internet.
        return {"MAX_SERVE_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}

    def sampling(self, s: worker_pb2.SamplingParams) -> dict[str, Any]:
        # top_k 0 (OpenAI's default: no cut) becomes MAX's own -1, "all tokens", in its SamplingParams.
        body = openai_sampling(s)
        body["top_k"] = s.top_k if s.HasField("top_k") else SAMPLING_DEFAULTS["top_k"]
        body["min_p"] = s.min_p if s.HasField("min_p") else SAMPLING_DEFAULTS["min_p"]
        if s.HasField("repeat_penalty"):
            body["repetition_penalty"] = s.repeat_penalty
        if s.ignore_eos:
            body["ignore_eos"] = True
        return body

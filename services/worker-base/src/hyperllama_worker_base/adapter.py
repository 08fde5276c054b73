"""What an engine's worker package provides: how to start the engine and speak its dialect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hyperllama.worker.v1 import worker_pb2

# Used when the request leaves a value unset: the llama.cpp worker's defaults, so an unset
# parameter means the same thing whichever engine serves the request.
SAMPLING_DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05}


def openai_sampling(s: worker_pb2.SamplingParams) -> dict[str, Any]:
    """The OpenAI-standard sampling fields every engine server takes."""
    body: dict[str, Any] = {
        "temperature": s.temperature if s.HasField("temperature") else SAMPLING_DEFAULTS["temperature"],
        "top_p": s.top_p if s.HasField("top_p") else SAMPLING_DEFAULTS["top_p"],
    }
    if s.HasField("max_tokens"):
        body["max_tokens"] = s.max_tokens
    if s.HasField("seed"):
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if s.HasField("frequency_penalty"):
        body["frequency_penalty"] = s.frequency_penalty
    if s.HasField("presence_penalty"):
        body["presence_penalty"] = s.presence_penalty
    return body


@dataclass(frozen=True)
class Dialect:
    """What an engine's OpenAI server does beyond the standard API, where the worker must know it."""

    # The chat endpoint renders a request's ``tools`` through the model's template with tool_choice
    # "none" and parses no calls (the gateway reads the text); else the worker renders such a chat.
    renders_tools: bool = False
    # The chat endpoint takes a prompt of token ids in this field (MAX: prompt_tokens), keeping chat's
    # response_format; "": a token prompt goes to completions.
    chat_token_field: str = ""
    # Streamed choices carry their tokens' ids (``token_ids``) when asked with return_token_ids.
    returns_token_ids: bool = False


class EngineAdapter(Protocol):
    name: str  # llamacpp | vllm | max: the value of X-HyperLlama-Engine
    capabilities: list[str]
    health_path: str
    dialect: Dialect

    def command(self, port: int) -> list[str]:
        """argv that serves the OpenAI API on 127.0.0.1:``port``."""
        ...

    def env(self) -> dict[str, str]:
        """Extra environment for the engine (the pool's comes on top)."""
        ...

    def sampling(self, s: worker_pb2.SamplingParams) -> dict[str, Any]:
        """Request-body fields for the sampling parameters, in this engine's dialect."""
        ...

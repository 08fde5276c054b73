"""A test double of an engine worker's EngineAdapter: a named engine with the given capabilities that
speaks plain OpenAI (or a given Dialect) and starts nothing."""

from __future__ import annotations

from typing import Any

from hyperllama.worker.v1 import worker_pb2
from hyperllama_worker_base.adapter import Dialect, openai_sampling


class StubAdapter:
    name = "test"
    health_path = "/health"

    def __init__(self, *capabilities: str, dialect: Dialect | None = None) -> None:
        self.capabilities = list(capabilities)
        self.dialect = dialect or Dialect()

    def command(self, port: int) -> list[str]:
        return []

    def env(self) -> dict[str, str]:
        return {}

    def sampling(self, s: worker_pb2.SamplingParams) -> dict[str, Any]:
        return openai_sampling(s)

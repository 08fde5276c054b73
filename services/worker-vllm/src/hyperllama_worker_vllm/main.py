"""Entry point: run vLLM's OpenAI server as a child process behind the Worker API."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hyperllama_common.logs import setup_logging
from hyperllama_worker_base.pool import DevicePool
from hyperllama_worker_base.worker import serve

from hyperllama_worker_vllm.engine import VllmEngine
from hyperllama_worker_vllm.settings import VllmWorkerSettings


def main() -> None:
    settings = VllmWorkerSettings()
    setup_logging("worker-vllm", settings.log_level, settings.log_json)

    def make_engine(pool: DevicePool, model_dir: Path) -> VllmEngine:
        return VllmEngine(settings, pool, model_dir)

    asyncio.run(serve(settings, make_engine))


if __name__ == "__main__":
    main()

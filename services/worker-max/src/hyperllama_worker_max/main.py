"""Entry point: run `max serve` as a child process behind the Worker API."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hyperllama_common.logs import setup_logging
from hyperllama_worker_base.pool import DevicePool
from hyperllama_worker_base.worker import serve

from hyperllama_worker_max.engine import MaxEngine
from hyperllama_worker_max.settings import MaxWorkerSettings


def main() -> None:
    settings = MaxWorkerSettings()
    setup_logging("worker-max", settings.log_level, settings.log_json)

    def make_engine(pool: DevicePool, model_dir: Path) -> MaxEngine:
        return MaxEngine(settings, pool, model_dir)

    asyncio.run(serve(settings, make_engine))


if __name__ == "__main__":
    main()

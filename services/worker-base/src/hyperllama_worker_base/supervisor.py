"""Keeps the engine running: start with a deadline, watch for exit or hang, restart after a pause.

``ready`` is what the worker reports in its heartbeats: true only between a successful health check
after start and the first sign of trouble, so the scheduler never sends work to a dead or hung engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hyperllama_worker_base.engine_process import EngineProcess
from hyperllama_worker_base.openai_client import EngineClient

log = logging.getLogger(__name__)


class EngineSupervisor:
    def __init__(
        self,
        launch: Callable[[], EngineProcess],
        client: EngineClient,
        health_path: str,
        start_timeout: float,
        health_interval: float,
        health_failures: int,
        restart_backoff: float,
    ):
        self._launch = launch
        self._client = client
        self._health_path = health_path
        self._start_timeout = start_timeout
        self._interval = health_interval
        self._failures = max(1, health_failures)
        self._backoff = restart_backoff
        self.ready = False
        self.process: EngineProcess | None = None
        self.starts = 0
        self.last_problem = "the engine is starting"
        self.became_ready = asyncio.Event()

    async def run(self) -> None:
        """Forever: start, wait for health, watch; on trouble stop the engine and start it again."""
        try:
            while True:
                self.process = proc = self._launch()
                self.starts += 1
                started = time.monotonic()
                proc.start()
                if await self._wait_healthy(proc):
                    log.info("engine ready after %.1fs (start %d)", time.monotonic() - started, self.starts)
                    self.ready = True
                    self.became_ready.set()
                    await self._watch(proc)
                self.ready = False
                self.became_ready.clear()
                log.error("engine unavailable: %s; restarting in %.0fs", self.last_problem, self._backoff)
                await proc.stop(grace=5.0)
                await asyncio.sleep(self._backoff)
        finally:
            self.ready = False
            if self.process is not None:
                await self.process.stop()

    async def _wait_healthy(self, proc: EngineProcess) -> bool:
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                self.last_problem = f"the engine exited with {proc.returncode()} while starting"
                return False
            if await self._client.healthy(self._health_path, timeout=5.0):
                return True
            await asyncio.sleep(0.5)
        self.last_problem = f"the engine did not become healthy within {self._start_timeout:.0f}s"
        return False

    async def _watch(self, proc: EngineProcess) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self._interval)
            if not proc.alive():
                self.last_problem = f"the engine exited with {proc.returncode()}"
                return
            if await self._client.healthy(self._health_path, timeout=max(2.0, self._interval * 2)):
                failures = 0
                continue
            failures += 1
            if failures >= self._failures:
                self.last_problem = f"the engine failed {failures} health checks in a row (hung)"
                return

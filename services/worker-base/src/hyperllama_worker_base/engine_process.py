"""The engine's server as a child process: started in its own session, pinned, always stopped.

The engine spawns helpers of its own (vLLM's engine core, MAX's model worker), so it is started as a
process-group leader and the whole group is signalled. PR_SET_PDEATHSIG makes the kernel stop the
engine if this worker dies without cleaning up, so a killed worker never leaves an engine behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
from collections.abc import Callable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _child_setup(cpus: list[int]) -> Callable[[], None]:
    def setup() -> None:
        with contextlib.suppress(OSError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class EngineProcess:
    def __init__(self, argv: list[str], env: dict[str, str], cpus: list[int]):
        self.argv = argv
        self.env = env
        self.cpus = cpus
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log.info("starting engine: %s", " ".join(self.argv))
        # Output goes to this worker's stderr, so the engine's log sits in the worker's log.
        self._popen = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup(self.cpus),  # noqa: PLW1509 - only prctl and affinity, no locks
        )

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def returncode(self) -> int | None:
        """None while the engine runs."""
        return self._popen.poll() if self._popen else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def _signal_group(self, sig: int) -> None:
        if self._popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the engine's process group, SIGKILL after ``grace`` seconds."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self._popen.wait), grace)
            except TimeoutError:
                log.warning("engine %d ignored SIGTERM for %.0fs; killing it", self._popen.pid, grace)
        # Helpers may outlive the leader; the group is killed either way.
        self._signal_group(signal.SIGKILL)
        await asyncio.to_thread(self._popen.wait)

"""Callbacks from the decode thread to the event loop, in order, without stalling the next decode step.

asyncio's call_soon_threadsafe wakes the loop by writing to a socket through a call that lets go of the
GIL. The woken loop takes the GIL at once and runs the callbacks (one step's tokens: queueing, merging,
gRPC sends, about 0.25 ms at concurrency 1), and the decode thread, back from its write, waits for the
GIL before it can start the next step: every token paid for the loop's work. Here the wake-up byte is
written through a call that keeps the GIL (ctypes.PyDLL), so the loop runs once the decode thread lets
go of it inside llama_decode: alongside the step, not before it.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

_libc = ctypes.PyDLL(None)  # PyDLL: its calls hold the GIL
_libc.write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
_libc.write.restype = ctypes.c_ssize_t


class Handoff:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._callbacks: deque[Callable[[], None]] = deque()
        self._signalled = False  # a wake-up byte is on its way: no need for another
        loop.call_soon_threadsafe(loop.add_reader, self._read, self._run)

    def post(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback`` on the event loop, after those posted before it."""
        self._callbacks.append(callback)
        if not self._signalled:
            self._signalled = True
            # A full pipe (EAGAIN) already holds a wake-up, so the result does not matter.
            _libc.write(self._write, b"\0", 1)

    def _run(self) -> None:
        try:
            os.read(self._read, 4096)
        except BlockingIOError:
            pass
        # Cleared before draining: a callback posted from here on gets its own wake-up.
        self._signalled = False
        while self._callbacks:
            callback = self._callbacks.popleft()
            try:
                callback()
            except Exception:  # one failing callback must not hold back the ones after it
                log.exception("callback from the decode thread failed")

    def close(self) -> None:
        """From any thread, after the last post: what is still pending runs, then the pipe goes."""
        try:
            self._loop.call_soon_threadsafe(self._shut)
        except RuntimeError:  # the loop is closed: nothing can run any more
            os.close(self._read)
            os.close(self._write)

    def _shut(self) -> None:
        self._loop.remove_reader(self._read)
        self._run()
        os.close(self._read)
        os.close(self._write)

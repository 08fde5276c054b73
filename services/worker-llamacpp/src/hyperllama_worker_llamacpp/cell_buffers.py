"""Host memory for KV cells copied out of llama.cpp: the prompt cache's parked prompts, and prefixes
copied from one slot into another.

Fresh memory costs a page fault per 4 KiB page on its first write. A parked prompt of the default
model is 22 KiB a token, megabytes a prompt, and the copy runs on the new request's path to its first
token: in a serving worker, fresh buffers cost up to about 10 ms a prompt. Buffers that come back (a
parked prompt dropped, a copy done) are kept and handed out again, up to a bound in bytes, so a worker
whose prompt cache is in its steady state copies into memory that is already mapped.
"""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass

# Sizes are rounded up to whole MiB, so a buffer fits the next prompt of about the same length.
GRANULE = 1 << 20


@dataclass
class Cells:
    """``size`` bytes of KV cells at the start of ``buffer``."""

    buffer: ctypes.Array[ctypes.c_uint8]
    size: int


class CellBuffers:
    def __init__(self) -> None:
        self._spare: list[ctypes.Array[ctypes.c_uint8]] = []

    @property
    def spare_bytes(self) -> int:
        return sum(len(b) for b in self._spare)

    def has(self, size: int) -> bool:
        """Whether a spare of at least ``size`` bytes is ready."""
        return any(len(b) >= size for b in self._spare)

    def take(self, size: int) -> ctypes.Array[ctypes.c_uint8]:
        """A buffer of at least ``size`` bytes: the smallest spare that fits, else a new one."""
        fits = [b for b in self._spare if len(b) >= size]
        if fits:
            best = min(fits, key=len)
            self._spare.remove(best)
            return best
        rounded = -(-max(size, 1) // GRANULE) * GRANULE
        # An anonymous mapping whose pages are faulted in here, by ctypes.memset, which lets go of
        # the GIL: bytearray(n) faulted them in holding it, and the event loop stood still meanwhile
        # (1 to 12 ms for 3 MB on a virtual machine, depending on whether the host had backed the
        # pages before).
        buffer = (ctypes.c_uint8 * rounded).from_buffer(mmap.mmap(-1, rounded))
        ctypes.memset(buffer, 0, rounded)
        return buffer

    def give(self, buffer: ctypes.Array[ctypes.c_uint8]) -> None:
        self._spare.append(buffer)

    def trim(self, limit: int) -> None:
        """Free the largest spares until they hold at most ``limit`` bytes."""
        self._spare.sort(key=len)
        while self._spare and self.spare_bytes > max(0, limit):
            self._spare.pop()

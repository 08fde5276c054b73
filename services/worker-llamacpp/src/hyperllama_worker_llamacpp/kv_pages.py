"""The KV cache's memory follows the cells the slots hold, not the cache's reservation.

llama.cpp allocates one buffer for every layer's K and V (slots x context cells) and clears it, which
makes every page of it resident: 8 slots x 4096 tokens hold 720 MiB of the default model before the
first request. A page that holds only zeros can go back to the kernel (MADV_DONTNEED): an anonymous
page read after that is a fresh zero page, the same content, so llama.cpp cannot tell. The whole cache
goes back once the context exists, and a slot's part of it whenever the slot is emptied; a page is
resident again when a cell on it is written.

llama.cpp does not say where the buffer is, so it is found from its layout: per layer K then V, each
a tensor of [embedding, cells per slot, slots] (a slot's cells contiguous), one after another. One
token decoded into slot 0 writes cell 0 of every layer's K and V: the buffer starts where those rows
sit at the tensor stride while the same rows of slot 1 are still zero. Where that is not found
(another layout: sliding-window layers, quantized K/V), nothing is given back.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
from dataclasses import dataclass
from typing import Any

import llama_cpp

from hyperllama_worker_llamacpp.probe import decode_into_slot0

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
# How far below the top of the new memory the buffer may start: the allocator's header and alignment.
_SEARCH_BYTES = 4 * PAGE
_ROW_PROBE = 64  # bytes of a row that must be written (cell 0's K row is 384 bytes for the default model)


def anonymous_ranges() -> list[tuple[int, int]]:
    """The process's private read-write mappings without a file, as (start, end)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) == 5 and parts[1] == "rw-p":
                start, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((start, end))
    return ranges


def new_ranges(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Address ranges mapped in ``after`` and in none of ``before`` (merged neighbours split off)."""
    fresh = []
    old = sorted(before)
    for start, end in sorted(after):
        cursor = start
        for o_start, o_end in old:
            if o_end <= cursor or o_start >= end:
                continue
            if o_start > cursor:
                fresh.append((cursor, o_start))
            cursor = max(cursor, o_end)
        if cursor < end:
            fresh.append((cursor, end))
    return fresh


def _written(address: int) -> bool:
    return ctypes.string_at(address, _ROW_PROBE) != bytes(_ROW_PROBE)


@dataclass(frozen=True)
class KvPages:
    """Where the K and V tensors of one context are: ``tensors`` of ``tensor_bytes`` from ``base``,
    each holding ``slots`` streams of ``tensor_bytes // slots``."""

    base: int
    tensors: int
    tensor_bytes: int
    slots: int

    @property
    def size(self) -> int:
        return self.tensors * self.tensor_bytes

    @property
    def stream_bytes(self) -> int:
        return self.tensor_bytes // self.slots

    @classmethod
    def locate(
        cls,
        ctx: llama_cpp.llama_context_p,
        batch: Any,  # a llama_cpp.llama_batch (see probe.py)
        before: list[tuple[int, int]],
        layers: int,
        kv_bytes: int,
        slots: int,
    ) -> KvPages | None:
        """Find the cache of a context made since ``before`` (a snapshot of anonymous_ranges) and give
        its pages back. Decodes one token into slot 0 and empties the slot again; call it before the
        context serves anything. None if the layout is not the expected one. Loads run one at a
        time (ModelSet), so no other context of the same shape appears meanwhile."""
        tensors = 2 * layers
        if kv_bytes % (tensors * slots) or kv_bytes // tensors < PAGE:
            return None
        tensor_bytes = kv_bytes // tensors
        fresh = [r for r in new_ranges(before, anonymous_ranges()) if r[1] - r[0] >= kv_bytes]
        if not decode_into_slot0(ctx, batch, [0]):
            return None
        mem = llama_cpp.llama_get_memory(ctx)
        try:
            for start, end in fresh:
                # The cache is the context's first large allocation: at the top of the memory it got.
                top = end - kv_bytes
                for base in range(top, max(start, top - _SEARCH_BYTES) - 1, -16):
                    if _written(base) and cls._matches(base, tensors, tensor_bytes, slots):
                        pages = cls(base, tensors, tensor_bytes, slots)
                        pages.release(pages.base, pages.size)  # slot 0 is emptied below
                        return pages
            return None
        finally:
            llama_cpp.llama_memory_seq_rm(mem, 0, -1, -1)

    @staticmethod
    def _matches(base: int, tensors: int, tensor_bytes: int, slots: int) -> bool:
        stream = tensor_bytes // slots
        for t in range(tensors):
            at = base + t * tensor_bytes
            if not _written(at) or (slots > 1 and _written(at + stream)):
                return False
        return True

    def release_slot(self, slot: int) -> None:
        """Give back the pages of an emptied slot (llama.cpp holds none of its cells)."""
        for t in range(self.tensors):
            self.release(self.base + t * self.tensor_bytes + slot * self.stream_bytes, self.stream_bytes)

    @staticmethod
    def release(start: int, length: int) -> None:
        """Give back the whole pages inside [start, start + length): the partial ones at the edges
        hold a neighbour's cells."""
        first = -(-start // PAGE) * PAGE
        last = (start + length) // PAGE * PAGE
        if last > first and _libc.madvise(first, last - first, _MADV_DONTNEED) != 0:
            log.warning("madvise failed: errno %d", ctypes.get_errno())

    def resident_bytes(self) -> int:
        """How much of the cache is in memory now (mincore)."""
        first = self.base // PAGE * PAGE
        pages = -(-(self.base + self.size - first) // PAGE)
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(first, pages * PAGE, vec) != 0:
            return -1
        return sum(b & 1 for b in vec) * PAGE

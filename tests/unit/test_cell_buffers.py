"""The llama.cpp worker's buffers for KV cells copied out of llama.cpp: memory that comes back is
handed out again (a fresh buffer pays a page fault per page on the first token's path), within a bound."""

from __future__ import annotations

from hyperllama_worker_llamacpp.cell_buffers import GRANULE, CellBuffers


def test_a_new_buffer_is_rounded_up_to_whole_granules():
    buffers = CellBuffers()
    assert len(buffers.take(1)) == GRANULE
    assert len(buffers.take(GRANULE)) == GRANULE
    assert len(buffers.take(GRANULE + 1)) == 2 * GRANULE
    assert buffers.spare_bytes == 0


def test_a_buffer_given_back_is_handed_out_again_the_smallest_that_fits():
    buffers = CellBuffers()
    small, large = buffers.take(GRANULE), buffers.take(3 * GRANULE)
    small[0], large[0] = 7, 9
    buffers.give(large)
    buffers.give(small)
    assert buffers.has(3 * GRANULE) and not buffers.has(3 * GRANULE + 1)
    again = buffers.take(GRANULE // 2)
    assert again is small and again[0] == 7  # the same memory, not a copy
    assert buffers.take(2 * GRANULE) is large
    assert buffers.spare_bytes == 0
    assert buffers.take(GRANULE) is not small  # nothing spare left: a new one


def test_trim_keeps_the_spares_within_the_bound_largest_freed_first():
    buffers = CellBuffers()
    for buffer in [buffers.take(size) for size in (GRANULE, 4 * GRANULE, 2 * GRANULE)]:
        buffers.give(buffer)
    assert buffers.spare_bytes == 7 * GRANULE
    buffers.trim(3 * GRANULE)
    assert buffers.spare_bytes == 3 * GRANULE  # the 4 MiB one went; 1 + 2 stay
    buffers.trim(-5)  # a budget already overdrawn by parked prompts: nothing spare is kept
    assert buffers.spare_bytes == 0

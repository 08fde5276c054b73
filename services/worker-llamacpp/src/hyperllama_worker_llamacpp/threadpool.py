"""A persistent ggml thread pool for a generation context, as llama-server attaches one.

Without one, ggml starts its compute threads for every decode step and joins them at its end: at one
stream the worker made 0.84x llama-server's tokens/s without a pool and 0.92-1.00x with one. The
pool's threads poll for the next step a while after each one, then sleep. Only the context's decode
thread computes with it (a pool serves one computation at a time). llama-cpp-python has no binding
for these calls.

A pool is kept only if it computes what ggml's own per-step threads compute: with this llama.cpp,
Gemma 3's Q4_K weights (repacked for AVX2) came out wrong on a persistent pool of two threads, and
the model answered with empty text. ``checked`` decodes the same tokens both ways and compares.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import llama_cpp

from hyperllama_worker_llamacpp.probe import decode_into_slot0

log = logging.getLogger(__name__)

_MAX_THREADS = 512  # GGML_MAX_N_THREADS
# Tokens of the check: a batch (prompt kernels) then one more (generation kernels). Any ids do.
_CHECK_TOKENS = [1, 2, 3, 4, 5, 6, 7, 8]
_LIB = Path(llama_cpp.__file__).parent / "lib"


class _Params(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * _MAX_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


# The libraries llama_cpp has loaded already: opening them again shares them.
_base = ctypes.CDLL(str(_LIB / "libggml-base.so"))
_cpu = ctypes.CDLL(str(_LIB / "libggml-cpu.so"))
_llama = ctypes.CDLL(str(_LIB / "libllama.so"))
_base.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(_Params), ctypes.c_int]
_base.ggml_threadpool_params_init.restype = None
_cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_Params)]
_cpu.ggml_threadpool_new.restype = ctypes.c_void_p
_cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
_cpu.ggml_threadpool_free.restype = None
_llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
_llama.llama_attach_threadpool.restype = None
_llama.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
_llama.llama_detach_threadpool.restype = None


def _logits(ctx: llama_cpp.llama_context_p, batch: Any, capacity: int, n_vocab: int) -> list[float] | None:
    """Decode the check's tokens into slot 0 (a batch of at most ``capacity``, the batch's size, then
    one) and return the last logits of each decode; slot 0 is empty again after."""
    mem = llama_cpp.llama_get_memory(ctx)
    out: list[float] = []
    first = _CHECK_TOKENS[: min(len(_CHECK_TOKENS) - 1, capacity)]
    try:
        for start, tokens in ((0, first), (len(first), _CHECK_TOKENS[-1:])):
            if not decode_into_slot0(ctx, batch, tokens, start):
                return None
            out.extend(llama_cpp.llama_get_logits_ith(ctx, len(tokens) - 1)[:n_vocab])
        return out
    finally:
        llama_cpp.llama_memory_seq_rm(mem, 0, -1, -1)


class ThreadPool:
    @classmethod
    def checked(
        cls, ctx: llama_cpp.llama_context_p, batch: Any, capacity: int, threads: int, n_vocab: int
    ) -> ThreadPool | None:
        """A pool attached to ``ctx`` if it computes the same logits as ggml's own threads (on the
        calling thread, before ``ctx`` serves anything), else None and ggml's own threads."""
        if threads < 2:
            return None  # nothing to keep: one thread is the caller
        expected = _logits(ctx, batch, capacity, n_vocab)
        pool = cls(threads)
        pool.attach(ctx)
        got = _logits(ctx, batch, capacity, n_vocab)
        if (
            expected is not None
            and got is not None
            and all(abs(a - b) <= 1e-3 * (1 + abs(a)) for a, b in zip(expected, got, strict=True))
        ):
            return pool
        pool.close()
        log.warning("a persistent thread pool computed other logits than ggml's own threads; not used")
        return None

    def __init__(self, threads: int):
        params = _Params()
        _base.ggml_threadpool_params_init(ctypes.byref(params), threads)  # ggml's defaults (poll 50)
        self._pool = _cpu.ggml_threadpool_new(ctypes.byref(params))
        if not self._pool:
            raise RuntimeError(f"ggml could not start a pool of {threads} threads")
        self._ctx: int | None = None

    def attach(self, ctx: llama_cpp.llama_context_p) -> None:
        """Every step of ``ctx``, single tokens and prompt batches, runs on this pool."""
        self._ctx = ctypes.cast(ctx, ctypes.c_void_p).value
        _llama.llama_attach_threadpool(self._ctx, self._pool, None)

    def close(self) -> None:
        """After the context's last step, before the context is freed."""
        if self._ctx is not None:
            _llama.llama_detach_threadpool(self._ctx)
            self._ctx = None
        if self._pool:
            _cpu.ggml_threadpool_free(self._pool)
            self._pool = None

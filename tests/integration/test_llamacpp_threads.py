"""llama.cpp's compute threads in the worker: built without OpenMP (see the Makefile's LLAMA_CMAKE_ARGS).

libgomp keeps one team of threads per thread that runs a computation. An embedding (computed on
another thread than generation) or a second model's decode loop adds a team; once the process has
more of those threads than cores, every team's barriers sleep instead of spinning, for the rest of
the process's life: generation measured 5.8 -> 10.3-16 ms a token after one embedding call. ggml's
own thread pool has no such coupling."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import asyncio
from pathlib import Path
from hyperllama_worker_llamacpp.embedding import Embedder
from hyperllama_worker_llamacpp.model import LoadedModel
from hyperllama_worker_llamacpp.registry import DEFAULT_MODEL, load_registry, select

model = LoadedModel(select(load_registry(""), DEFAULT_MODEL)[0], 256, 2)
response = asyncio.run(Embedder(model, 256, 2, 1).embed(["a llama in a valley"], True))
assert len(response.embeddings[0].values) > 0
maps = Path("/proc/self/maps").read_text()
print("ggml-cpu" if "libggml-cpu" in maps else "", "gomp" if "libgomp" in maps else "")
"""


def test_the_worker_computes_without_an_openmp_runtime():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = out.stdout.split()
    assert "ggml-cpu" in loaded  # the probe did compute with llama.cpp's CPU backend
    assert "gomp" not in loaded

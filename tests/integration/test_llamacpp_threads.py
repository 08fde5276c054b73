"""llama.cpp's compute threads in the worker: built without OpenMP (see the Makefile's LLAMA_CMAKE_ARGS).

libgomp keeps one team of threads per thread that runs a computation. An embedding (computed on
another thread than generation) or a second model's decode loop adds a team; once the process has
more of those threads than cores, every team's barriers sleep instead of spinning, for the rest of
the process's life: generation measured 5.8 -> 10.3-16 ms a token after one embedding call. ggml's
own thread pool has no such coupling."""

from __future__ import annotations

import subprocess
import sys

from hyperllama_worker_llamacpp.registry import DEFAULT_MODEL, load_registry, select
from support.models import gemma_gguf

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


ENGINES = """
import asyncio, threading
from pathlib import Path
from hyperllama_common.worker_metrics import WorkerMetrics
from hyperllama_worker_llamacpp.batch_engine import BatchEngine
from hyperllama_worker_llamacpp.model import LoadedModel
from hyperllama_worker_llamacpp.registry import DEFAULT_MODEL, load_registry, select

def threads() -> int:
    return len(list(Path("/proc/self/task").iterdir()))

async def main() -> None:
    model = LoadedModel(select(load_registry(""), DEFAULT_MODEL)[0], 256, 2)
    metrics = WorkerMetrics("llamacpp", "test").for_model(DEFAULT_MODEL)
    before = threads()
    counts = []
    for _ in range(3):  # a model loaded and unloaded again and again
        engine = BatchEngine(model, 2, 64, 2, metrics, asyncio.get_running_loop())
        counts.append(threads() - before)
        engine.close()
        counts.append(threads() - before)
    print(*counts)

asyncio.run(main())
"""


def test_an_engine_keeps_one_pool_of_compute_threads_and_takes_it_away_when_closed():
    """A persistent pool, as llama-server's (ggml otherwise starts its threads for every decode step:
    one stream measured 0.84-0.85x llama-server's tokens/s without it, 0.92-1.00x with it); a model
    unloaded leaves no thread behind."""
    out = subprocess.run([sys.executable, "-c", ENGINES], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = [int(x) for x in out.stdout.split()]
    # Open: the decode thread and the pool's second compute thread (2 threads: it and the caller).
    assert counts[0::2] == [2, 2, 2], counts
    assert counts[1::2] == [0, 0, 0], counts


GREEDY = """
import asyncio, sys
from pathlib import Path
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.worker_metrics import WorkerMetrics
from hyperllama_worker_llamacpp import batch_engine
from hyperllama_worker_llamacpp.registry import ModelSpec
from hyperllama_worker_llamacpp.model import LoadedModel

name, path, pooled = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "pool"
if not pooled:
    batch_engine.ThreadPool.checked = classmethod(lambda cls, *args: None)

async def main() -> None:
    model = LoadedModel(ModelSpec(name, path), 512, 2)
    engine = batch_engine.BatchEngine(model, 2, 64, 2, WorkerMetrics("llamacpp", "t").for_model(name),
                                      asyncio.get_running_loop())
    queue: asyncio.Queue = asyncio.Queue()
    sampling = worker_pb2.SamplingParams(max_tokens=12, temperature=0.0)
    req = worker_pb2.GenerateRequest(request_id="r", model=name, prompt="The capital of France is",
                                     sampling=sampling)
    engine.submit(engine.prepare(req, queue.put_nowait))
    text = ""
    while True:
        chunk = await queue.get()
        text += chunk.text
        if chunk.finish_reason:
            break
    print(repr(text), engine._pool is not None)
    engine.close()

asyncio.run(main())
"""


def greedy(name: str, path: str, pool: str) -> tuple[str, bool]:
    out = subprocess.run(
        [sys.executable, "-c", GREEDY, name, path, pool], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text, pooled = out.stdout.rsplit(" ", 1)
    return text, pooled.strip() == "True"


def test_a_pool_is_used_only_where_it_computes_what_ggml_s_own_threads_do():
    """Gemma 3's repacked Q4_K weights came out wrong on a persistent pool (the model answered with
    empty text); its engine checks the pool at start and does without it. The default model keeps it."""
    smollm2 = str(select(load_registry(""), DEFAULT_MODEL)[0].path)
    for name, path, keeps_pool in (("smollm2", smollm2, True), ("gemma3", str(gemma_gguf()), False)):
        text, pooled = greedy(name, path, "pool")
        alone, _ = greedy(name, path, "none")
        assert text == alone and len(text) > 8, (name, text, alone)
        assert pooled is keeps_pool, name

"""vLLM and MAX workers load models on demand, as the llama.cpp worker does: a worker started with no model
gets a model directory from the store when a request needs it, and switches to another model by stopping its
engine child and starting a new one on the new directory. Real store, scheduler, gateway and engines on CPU,
the official ollama client, smollm2's real Hugging Face directory uploaded as blobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest
from hyperllama_cli.cluster import MODEL_HF_DIR, LocalCluster, free_port
from support.cluster_state import ps_raw, reported, wait_until

from engines.conftest import ENGINES

# Two engine starts per test, each up to a minute on 2 busy cores (the first MAX start compiles).
pytestmark = pytest.mark.timeout(1500)

BASE = "smollm2-hf:a"
PIRATE = "smollm2-hf:pirate"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 8}
# Longer than the default system prompt smollm2's chat template adds when a chat has none.
PIRATE_SYSTEM = (
    "You are a pirate captain sailing the seven seas. Always answer every question like a pirate would, "
    "with plenty of arr and matey, and mention your ship, the Black Pearl, in each answer."
)


@pytest.fixture(scope="module")
def cluster(redis_url: str, logs_dir: Path) -> Iterator[LocalCluster]:
    """Store (holding smollm2's model directory under two names), scheduler and gateway; each test starts
    its engine's worker."""
    (logs_dir / "engine-lifecycle").mkdir(exist_ok=True)
    c = LocalCluster(
        gateway_port=free_port(),
        log_dir=logs_dir / "engine-lifecycle",
        redis_url=redis_url.rsplit("/", 1)[0] + "/5",
    )
    with reported(c):
        c.start_store()
        c.start_scheduler(sweep_seconds="0.25")
        c.start_gateway()
        client = ollama.Client(host=c.gateway_url, timeout=300)
        files = {
            path.name: client.create_blob(path)
            for path in sorted(MODEL_HF_DIR.iterdir())
            if path.name != "hyperllama-source.json"
        }
        client.create(model=BASE, files=files)
        client.create(model=PIRATE, from_=BASE, system=PIRATE_SYSTEM)
        yield c


def engine_children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "llamacpp"])
def test_an_empty_engine_worker_loads_switches_and_unloads_models(cluster: LocalCluster, engine: str) -> None:
    worker = cluster.start_engine_worker(engine, f"empty-{engine}", model="", heartbeat_seconds="0.5")
    try:
        cluster.wait_ready(1)
        assert engine_children(worker.popen.pid) == []  # no model, no engine running
        client = ollama.Client(host=cluster.gateway_url, timeout=900)
        shown = client.show(BASE)
        assert shown.details.format == "safetensors" and shown.details.family == "llama"

        first = client.chat(model=BASE, messages=QUESTION, options=GREEDY)
        assert first.message.content.strip()
        assert first.done_reason in ("stop", "length") and first.eval_count > 0
        placed = ps_raw(cluster)[BASE]["placements"]
        assert [(p["worker"], p["engine"], p["state"]) for p in placed] == [
            (f"empty-{engine}", engine, "ready")
        ]
        assert len(engine_children(worker.popen.pid)) == 1

        # Another model: the idle one is unloaded and the engine restarts on the new directory. The store's
        # SYSTEM reaches the model (it replaces the template's shorter default one).
        pirate = client.chat(model=PIRATE, messages=QUESTION, options=GREEDY)
        assert pirate.message.content.strip() and pirate.eval_count > 0
        assert pirate.prompt_eval_count > first.prompt_eval_count + 15
        loaded = wait_until(
            lambda: set(ps_raw(cluster)) == {PIRATE} and ps_raw(cluster), "only the pirate loaded"
        )
        assert loaded[PIRATE]["placements"][0]["worker"] == f"empty-{engine}"

        # keep_alive 0 unloads it, and the engine child is gone with it.
        unloaded = client.generate(model=PIRATE, prompt="", keep_alive=0)
        assert unloaded.done_reason == "unload"
        wait_until(lambda: not ps_raw(cluster), "nothing loaded")
        wait_until(lambda: engine_children(worker.popen.pid) == [], "the engine child stopped")
    except BaseException:
        print(f"--- {worker.name} ---\n{worker.log_tail(120)}")
        raise
    finally:
        worker.stop()
        cluster.processes.remove(worker)

"""Where a model no worker serves is loaded, and what is unloaded to make room."""

from __future__ import annotations

from hyperllama.worker.v1 import worker_pb2
from hyperllama_scheduler.load_placement import CatalogModel, can_host, footprint, plan_load, victims

MiB = 2**20
SMOLLM = CatalogModel("smollm2:135m", "sha256:aa", "gguf", 98 * MiB, 23040, ("sha256:blob-smollm",))
GEMMA = CatalogModel("gemma:270m", "sha256:bb", "gguf", 253 * MiB, 18432, ("sha256:blob-gemma",))


def worker(
    wid: str, budget_mb: int, models: list[tuple[str, int, bool]] = (), **kw: object
) -> worker_pb2.WorkerInfo:  # type: ignore[assignment]
    fields: dict[str, object] = {
        "kv_tokens_per_model": 8192,
        "overhead_bytes_per_model": 64 * MiB,
        "formats": ["gguf"],
        **kw,
    }
    info = worker_pb2.WorkerInfo(
        worker_id=wid,
        memory_budget_bytes=budget_mb * MiB,
        **fields,  # type: ignore[arg-type]
    )
    for name, mb, pinned in models:
        info.models.add(name=name, memory_bytes=mb * MiB, pinned=pinned)
    info.memory_used_bytes = sum(m.memory_bytes for m in info.models)
    return info


def test_footprint_counts_weights_kv_and_overhead() -> None:
    w = worker("w", 1000)
    assert footprint(SMOLLM, w) == 98 * MiB + 23040 * 8192 + 64 * MiB


def test_a_worker_hosts_only_formats_it_loads_within_its_whole_budget() -> None:
    assert can_host(SMOLLM, worker("w", 1000))
    assert not can_host(SMOLLM, worker("w", 200))
    safetensors = CatalogModel("hf", "sha256:cc", "safetensors", 10 * MiB, 0)
    assert not can_host(safetensors, worker("w", 1000))
    assert not can_host(SMOLLM, worker("w", 1000, kv_tokens_per_model=0))  # cannot load on demand


def test_the_least_recently_used_per_byte_goes_first_and_busy_or_pinned_never() -> None:
    w = worker("w", 1000, [("old-big", 400, False), ("old-small", 300, False), ("busy", 200, False)])
    # old-small idled 100 s for 300 MiB, old-big 100 s for 400 MiB: the small one costs less to reload.
    used = {"old-big": 0, "old-small": 0, "busy": 99_000}
    chosen = victims(GEMMA, w, busy={"busy"}, last_used_ms=used, now_ms=100_000)
    assert chosen is not None and chosen[0] == "old-small"
    assert "busy" not in chosen
    pinned = worker("w", 1000, [("config", 900, True)])
    assert victims(GEMMA, pinned, busy=set(), last_used_ms={}, now_ms=1) is None


def test_nothing_is_evicted_when_it_fits() -> None:
    assert victims(SMOLLM, worker("w", 2000, [("other", 300, False)]), set(), {}, 0) == ()


def test_plan_prefers_no_eviction_then_cached_blobs_then_room() -> None:
    full = worker("full", 700, [("idle", 400, False)])
    roomy = worker("roomy", 2000)
    cached = worker("cached", 1000, blobs=["sha256:blob-smollm"])
    plan = plan_load(SMOLLM, [full, roomy, cached], {}, {}, 0)
    assert plan is not None and plan.worker.worker_id == "cached" and plan.evict == ()
    plan = plan_load(SMOLLM, [full, roomy], {}, {}, 0)
    assert plan is not None and plan.worker.worker_id == "roomy"
    plan = plan_load(GEMMA, [full], {}, {}, 0)
    assert plan is not None and plan.evict == ("idle",)
    assert plan_load(GEMMA, [full], {"full": {"idle"}}, {}, 0) is None  # busy: wait rather than evict


def test_a_worker_that_holds_the_model_gets_no_second_load() -> None:
    holder = worker("h", 2000, [("smollm2:135m", 350, False)])
    assert plan_load(SMOLLM, [holder], {}, {}, 0) is None


def test_a_one_model_engine_unloads_what_it_holds_however_much_room_is_left() -> None:
    directory = CatalogModel("hf:1", "sha256:cc", "safetensors", 500 * MiB, 0, ("sha256:config",))

    def engine(models: list[tuple[str, int, bool]] = (), **kw: object) -> worker_pb2.WorkerInfo:
        return worker("vllm", 64_000, models, formats=["safetensors"], max_models=1, **kw)

    assert victims(directory, engine(), set(), {}, 0) == ()
    assert victims(directory, engine([("hf:0", 3000, False)]), set(), {}, 0) == ("hf:0",)
    # Busy, pinned, or still loading: nothing can make way, so nothing is planned there.
    assert victims(directory, engine([("hf:0", 3000, False)]), {"hf:0"}, {}, 0) is None
    assert victims(directory, engine([("hf:0", 3000, True)]), set(), {}, 0) is None
    assert victims(directory, engine(loading=[worker_pb2.ModelInfo(name="hf:2")]), set(), {}, 0) is None
    # Placement prefers an engine that is empty over one whose model it would have to stop.
    plan = plan_load(
        directory,
        [engine([("hf:0", 3000, False)]), worker("empty", 64_000, formats=["safetensors"], max_models=1)],
        {},
        {},
        0,
    )
    assert plan is not None and plan.worker.worker_id == "empty" and plan.evict == ()

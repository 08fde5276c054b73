"""A crashed engine is seen by its worker: in-flight streams fail explicitly, the worker reports not
ready (the scheduler stops sending it work), and the engine is started again and serves."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import grpc
import pytest
from hyperllama.worker.v1 import worker_pb2
from hyperllama_cli.cluster import LocalCluster, wait_for

from engines.conftest import MODEL, EngineWorker, pinned_openai

pytestmark = pytest.mark.timeout(1500)

STORY = [worker_pb2.ChatMessage(role="user", content="Write a long story about a dragon and a knight.")]


def _engine_pid(cluster: LocalCluster, engine: str) -> int:
    (worker,) = [p for p in cluster.processes if p.name == f"conformance-{engine}"]
    pid = worker.popen.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, f"the {engine} worker should have one child, the engine: {children}"
    return int(children[0])


@pytest.mark.parametrize("engine", ["vllm", "max"])
def test_engine_crash_is_reported_and_recovered(
    engine: str, engine_cluster: LocalCluster, engine_workers: dict[str, EngineWorker]
):
    worker = engine_workers[engine]
    request = worker_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        chat=worker_pb2.ChatConversation(messages=STORY),
        sampling=worker_pb2.SamplingParams(max_tokens=2000, ignore_eos=True),
    )
    call = worker.stub.Generate(request, timeout=120)
    assert next(call).text is not None

    # The engine (and its helpers: it leads its own process group) dies mid-stream.
    os.killpg(_engine_pid(engine_cluster, engine), signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)

    wait_for(lambda: not worker.info().ready, f"the {engine} worker to report not ready", None, 15)
    # Meanwhile the pool still answers unpinned requests from the other engines.
    reply = pinned_openai(engine_cluster.gateway_url, "").chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=5,
    )
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens > 0

    wait_for(lambda: worker.info().ready, f"the {engine} engine to be restarted", None, 600)
    chunks = list(
        worker.stub.Generate(
            worker_pb2.GenerateRequest(
                request_id=uuid.uuid4().hex,
                model=MODEL,
                prompt="The capital of France is",
                sampling=worker_pb2.SamplingParams(temperature=0, max_tokens=8),
            ),
            timeout=120,
        )
    )
    assert "Paris" in "".join(c.text for c in chunks)
    # The scheduler sees it ready again before the pinned tests use it.
    wait_for(
        lambda: f"conformance-{engine}" in engine_cluster.ready_workers(),
        "the worker back in the pool",
        None,
        30,
    )

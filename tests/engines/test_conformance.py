"""The Worker API contract, checked against every engine's real worker with the real model.

Each test runs once per engine (llamacpp, vllm, max); the README's conformance table is this file.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hyperllama.worker.v1 import worker_pb2
from hyperllama_cli.cluster import wait_for
from hyperllama_worker_llamacpp.registry import load_registry, select
from llama_cpp import Llama

from engines.conftest import MODEL, EngineWorker

# The first test waits for the engines to start (a first MAX start compiles for minutes).
pytestmark = pytest.mark.timeout(1500)

QUESTION = [
    worker_pb2.ChatMessage(role="system", content="You are a helpful assistant."),
    worker_pb2.ChatMessage(role="user", content="What is the capital of France?"),
]
STORY = [worker_pb2.ChatMessage(role="user", content="Write a long story about a dragon and a knight.")]


def chat(messages=QUESTION, **sampling) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        chat=worker_pb2.ChatConversation(messages=messages),
        sampling=worker_pb2.SamplingParams(**sampling),
    )


def run(
    worker: EngineWorker, request: worker_pb2.GenerateRequest
) -> tuple[str, list[worker_pb2.GenerateChunk]]:
    chunks = list(worker.stub.Generate(request, timeout=120))
    return "".join(c.text for c in chunks), chunks


def final(chunks: list[worker_pb2.GenerateChunk]) -> worker_pb2.GenerateChunk:
    finals = [c for c in chunks if c.finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED]
    assert len(finals) == 1 and finals[0] is chunks[-1], "exactly one final chunk, at the end"
    return finals[0]


def test_generate_streams_the_answer(worker: EngineWorker):
    text, chunks = run(worker, chat(temperature=0, max_tokens=30))
    assert "Paris" in text
    assert len(chunks) > 2, "the answer arrives in several chunks, not at the end"
    last = final(chunks)
    assert last.finish_reason == worker_pb2.FINISH_REASON_STOP
    assert 0 < last.usage.completion_tokens < 30
    assert last.usage.prompt_tokens > 10


def test_raw_prompt_completion(worker: EngineWorker):
    request = worker_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        prompt="The capital of France is",
        sampling=worker_pb2.SamplingParams(temperature=0, max_tokens=8),
    )
    text, chunks = run(worker, request)
    assert "Paris" in text
    assert final(chunks).usage.completion_tokens <= 8


def test_greedy_is_deterministic(worker: EngineWorker):
    first, _ = run(worker, chat(STORY, temperature=0, max_tokens=24))
    second, _ = run(worker, chat(STORY, temperature=0, max_tokens=24))
    assert first == second and first


def test_same_seed_same_sample(worker: EngineWorker):
    a, _ = run(worker, chat(STORY, temperature=1.0, seed=1234, max_tokens=24))
    b, _ = run(worker, chat(STORY, temperature=1.0, seed=1234, max_tokens=24))
    assert a == b and a


def test_max_tokens_finishes_with_length_and_exact_count(worker: EngineWorker):
    text, chunks = run(worker, chat(STORY, temperature=0, max_tokens=7))
    last = final(chunks)
    assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 7
    assert sum(c.token_count for c in chunks) == 7
    assert text


def test_stop_string_ends_output_and_never_leaks(worker: EngineWorker):
    full, _ = run(worker, chat(STORY, temperature=0, max_tokens=40))
    # A stop string from the middle of the greedy answer, spanning several tokens.
    start = len(full) // 2
    stop = full[start : start + 6]
    expected = full[: full.find(stop)]
    text, chunks = run(worker, chat(STORY, temperature=0, max_tokens=40, stop=[stop]))
    assert stop not in text
    assert text == expected
    last = final(chunks)
    assert last.finish_reason == worker_pb2.FINISH_REASON_STOP
    assert 0 < last.usage.completion_tokens < 40


def test_usage_counts_the_prompt(worker: EngineWorker):
    short = final(run(worker, chat(temperature=0, max_tokens=1))[1])
    longer_messages = [
        *QUESTION[:1],
        worker_pb2.ChatMessage(role="user", content="What is the capital of France? " * 5),
    ]
    longer = final(run(worker, chat(longer_messages, temperature=0, max_tokens=1))[1])
    assert short.usage.prompt_tokens > 10
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens + 20
    assert short.usage.completion_tokens == longer.usage.completion_tokens == 1


def _wait_idle(worker: EngineWorker) -> None:
    wait_for(lambda: worker.info().slots_in_use == 0, f"{worker.engine} slots to be free", None, 15)


def test_cancelling_the_call_frees_the_slot(worker: EngineWorker):
    call = worker.stub.Generate(chat(STORY, temperature=0.8, max_tokens=2000, ignore_eos=True), timeout=120)
    received = 0
    for chunk in call:
        received += chunk.token_count
        if received >= 3:
            break
    assert worker.info().slots_in_use == 1
    call.cancel()
    _wait_idle(worker)
    # The engine is not stuck on the abandoned request.
    text, _ = run(worker, chat(temperature=0, max_tokens=30))
    assert "Paris" in text


def test_cancel_by_request_id(worker: EngineWorker):
    request = chat(STORY, temperature=0.8, max_tokens=2000, ignore_eos=True)
    call = worker.stub.Generate(request, timeout=120)
    first = next(call)
    assert first.finish_reason == worker_pb2.FINISH_REASON_UNSPECIFIED
    outcome: dict[str, object] = {}

    def drain() -> None:
        try:
            for _ in call:
                pass
            outcome["status"] = grpc.StatusCode.OK
        except grpc.RpcError as err:
            outcome["status"] = err.code()

    reader = threading.Thread(target=drain)
    reader.start()
    reply = worker.stub.Cancel(worker_pb2.CancelRequest(request_id=request.request_id), timeout=5)
    assert reply.cancelled
    reader.join(30)
    assert outcome["status"] == grpc.StatusCode.CANCELLED
    _wait_idle(worker)
    assert not worker.stub.Cancel(
        worker_pb2.CancelRequest(request_id=request.request_id), timeout=5
    ).cancelled


def test_health_and_capabilities(worker: EngineWorker):
    health = health_pb2_grpc.HealthStub(worker.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    info = worker.info()
    assert info.engine == worker.engine
    assert info.ready
    assert info.slots_total >= 1 and info.slots_in_use == 0
    assert info.pool.startswith("cpu")
    assert [m.name for m in info.models] == [MODEL]
    assert info.models[0].context_length >= 2048
    assert info.models[0].parameter_count > 100_000_000
    assert {"generate", "chat", "stop", "seed"} <= set(info.capabilities)


def test_embeddings_only_where_claimed(worker: EngineWorker):
    request = worker_pb2.EmbedRequest(request_id=uuid.uuid4().hex, model=MODEL, inputs=["hello", "world"])
    if "embed" in worker.info().capabilities:
        reply = worker.stub.Embed(request, timeout=60)
        assert len(reply.embeddings) == 2 and len(reply.embeddings[0].values) > 100
    else:
        with pytest.raises(grpc.RpcError) as err:
            worker.stub.Embed(request, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "embed" in err.value.details()


def test_json_schema_where_claimed(worker: EngineWorker):
    if "json_schema" not in worker.info().capabilities:
        pytest.skip(f"{worker.engine} does not claim json_schema")
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    request = chat(
        [worker_pb2.ChatMessage(role="user", content="Name the capital of France as JSON.")],
        temperature=0,
        max_tokens=60,
    )
    request.response_format.kind = worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
    request.response_format.json_schema = json.dumps(schema)
    text, chunks = run(worker, request)
    value = json.loads(text)
    assert set(value) >= {"city", "country"}
    assert final(chunks).finish_reason == worker_pb2.FINISH_REASON_STOP


@pytest.mark.parametrize(
    ("mutate", "status", "needle"),
    [
        (lambda r: setattr(r, "model", "no-such-model:1b"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (lambda r: setattr(r.chat.messages[0], "role", "wizard"), grpc.StatusCode.INVALID_ARGUMENT, "role"),
        (
            lambda r: setattr(r.chat.messages[1], "content", "hello " * 9000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "context",
        ),
    ],
    ids=["unknown-model", "unknown-role", "prompt-over-context"],
)
def test_bad_requests_are_rejected_clearly(worker: EngineWorker, mutate, status, needle):
    request = chat(temperature=0, max_tokens=8)
    mutate(request)
    with pytest.raises(grpc.RpcError) as err:
        run(worker, request)
    assert err.value.code() == status
    assert needle in err.value.details().lower()
    _wait_idle(worker)


# ---- logprobs, logit_bias and token-id prompts --------------------------------------------------

PROMPT = "The capital of France is"


def _entries(chunks: list[worker_pb2.GenerateChunk]) -> list[worker_pb2.TokenLogprob]:
    return [e for c in chunks for e in c.logprobs]


@functools.cache
def _tokenizer() -> Llama:
    """The model's vocabulary, from its GGUF (SmolLM2 adds no BOS; every engine's tokenizer agrees)."""
    return Llama(model_path=str(select(load_registry(""), MODEL)[0].path), vocab_only=True, verbose=False)


def _prompt_ids() -> list[int]:
    return _tokenizer().tokenize(PROMPT.encode(), add_bos=True, special=True)


def _check_greedy_entries(entries: list[worker_pb2.TokenLogprob], text: str, top: int) -> None:
    assert entries and "".join(e.token for e in entries) == text
    for e in entries:
        assert len(e.top_logprobs) == top
        best = e.top_logprobs[0].logprob
        # Greedy picks the most likely token: the first entry, or one tied with it (bfloat16 ties).
        assert e.logprob == pytest.approx(best, abs=1e-6)
        assert e.token in [t.token for t in e.top_logprobs if t.logprob == pytest.approx(best, abs=1e-6)]
        assert all(a.logprob >= b.logprob for a, b in zip(e.top_logprobs, e.top_logprobs[1:], strict=False))
        assert all(t.logprob <= 0 for t in e.top_logprobs)
        assert 0 < sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1 + 1e-4


def test_greedy_logprobs_where_claimed(worker: EngineWorker):
    if "logprobs" not in worker.info().capabilities:
        pytest.skip(f"{worker.engine} does not claim logprobs")
    plain, plain_chunks = run(worker, chat(temperature=0, max_tokens=30))
    assert not _entries(plain_chunks), "no logprobs unless asked"
    text, chunks = run(worker, chat(temperature=0, max_tokens=30, logprobs=True, top_logprobs=5))
    assert text == plain
    _check_greedy_entries(_entries(chunks), text, 5)


def test_no_logprobs_for_a_stop_string(worker: EngineWorker):
    if "logprobs" not in worker.info().capabilities:
        pytest.skip(f"{worker.engine} does not claim logprobs")
    full, chunks = run(worker, chat(STORY, temperature=0, max_tokens=40, logprobs=True))
    every = [e.token for e in _entries(chunks)]
    assert "".join(every) == full
    stop = full[len(full) // 2 : len(full) // 2 + 6]
    expected = full[: full.find(stop)]
    text, chunks = run(worker, chat(STORY, temperature=0, max_tokens=40, logprobs=True, stop=[stop]))
    assert text == expected
    # The tokens whose text ends before the stop string begins: no more, no fewer.
    ends = [len("".join(every[: i + 1])) for i in range(len(every))]
    assert [e.token for e in _entries(chunks)] == [
        t for t, end in zip(every, ends, strict=True) if end <= len(text)
    ]


def test_a_token_prompt_with_completion_logprobs(worker: EngineWorker):
    sampling = worker_pb2.SamplingParams(temperature=0, max_tokens=8)
    as_text, _ = run(
        worker,
        worker_pb2.GenerateRequest(
            request_id=uuid.uuid4().hex, model=MODEL, prompt=PROMPT, sampling=sampling
        ),
    )
    by_ids = worker_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        tokens=worker_pb2.TokenPrompt(ids=_prompt_ids()),
        sampling=sampling,
    )
    text, chunks = run(worker, by_ids)
    assert text == as_text and "Paris" in text
    if "logprobs" in worker.info().capabilities:
        by_ids.sampling.logprobs, by_ids.sampling.top_logprobs = True, 2
        text, chunks = run(worker, by_ids)
        assert text == as_text
        _check_greedy_entries(_entries(chunks), text, 2)


def test_logit_bias_where_claimed(worker: EngineWorker):
    first_id = _prompt_ids()[0]  # "The", the greedy answer's first token
    assert run(worker, chat(temperature=0, max_tokens=4))[0].startswith("The")
    request = chat(temperature=0, max_tokens=4, logit_bias={first_id: -100.0})
    if "logit_bias" not in worker.info().capabilities:
        with pytest.raises(grpc.RpcError) as err:
            run(worker, request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "logit_bias" in err.value.details()
        return
    banned, _ = run(worker, request)
    assert not banned.startswith("The")
    banana = _tokenizer().tokenize(b" banana", add_bos=False, special=False)
    assert len(banana) == 1
    forced, _ = run(worker, chat(temperature=0, max_tokens=4, logit_bias={banana[0]: 100.0}))
    assert forced.startswith(" banana") or forced.startswith("banana")


@pytest.mark.parametrize("ids", [[504, 49152], [-5], []], ids=["past-vocabulary", "negative", "empty"])
def test_a_bad_token_prompt_is_refused(worker: EngineWorker, ids: list[int]):
    request = worker_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        tokens=worker_pb2.TokenPrompt(ids=ids),
        sampling=worker_pb2.SamplingParams(max_tokens=4),
    )
    with pytest.raises(grpc.RpcError) as err:
        run(worker, request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (str(ids[-1]) if ids else "empty") in err.value.details()
    _wait_idle(worker)

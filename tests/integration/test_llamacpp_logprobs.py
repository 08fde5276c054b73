"""The llama.cpp worker's logprobs, logit_bias and token-id inputs, with the real model over gRPC."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_cli.cluster import LocalCluster, free_port, wait_for
from hyperllama_common.healthcheck import serving
from hyperllama_worker_llamacpp.registry import DEFAULT_MODEL, load_registry, select
from llama_cpp import Llama

MODEL = DEFAULT_MODEL
QUESTION = "What is the capital of France? Answer in one sentence."
PROMPT = "The capital of France is"

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    cluster = LocalCluster(log_dir=Path(tmp_path_factory.mktemp("logprobs")))
    port = free_port()
    proc = cluster.start_worker("logprobs-worker", port=str(port), slots="2",
                                scheduler_address=f"127.0.0.1:{free_port()}")  # fmt: skip
    await asyncio.to_thread(wait_for, lambda: serving(f"127.0.0.1:{port}", 2), "the worker", proc, 120)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield worker_pb2_grpc.WorkerServiceStub(channel)
    await channel.close()
    cluster.stop()


@pytest.fixture(scope="module")
def tokenizer() -> Llama:
    """The model's own tokenizer, as the worker uses it."""
    return Llama(model_path=str(select(load_registry(""), MODEL)[0].path), vocab_only=True, verbose=False)


def chat(text: str = QUESTION, max_tokens: int = 32, **sampling) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="user", content=text)]),
        sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, temperature=0, **sampling),
    )


async def run(stub, req) -> tuple[str, list[worker_pb2.TokenLogprob], list[worker_pb2.GenerateChunk]]:
    chunks = [c async for c in stub.Generate(req, timeout=120)]
    return "".join(c.text for c in chunks), [e for c in chunks for e in c.logprobs], chunks


async def refused(call) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(param, details) of an INVALID_ARGUMENT answer."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    md = {k: v for k, v in (caught.value.trailing_metadata() or ()) if isinstance(v, str)}
    return md.get("hl-error-param", ""), caught.value.details() or ""


async def test_greedy_logprobs_are_the_model_s_and_follow_the_text(worker):
    plain, none, _ = await run(worker, chat())
    assert plain and none == [], "no logprobs unless asked"
    text, entries, chunks = await run(worker, chat(logprobs=True, top_logprobs=5))
    assert text == plain, "asking for logprobs does not change the output"
    assert len(entries) == chunks[-1].usage.completion_tokens
    assert "".join(e.token for e in entries) == text
    assert b"".join(e.bytes for e in entries) == text.encode()
    for e in entries:
        top = list(e.top_logprobs)
        assert len(top) == 5
        assert (top[0].token, top[0].logprob) == (e.token, e.logprob), "greedy picks the top entry"
        assert all(a.logprob >= b.logprob for a, b in zip(top, top[1:], strict=False))
        assert all(t.logprob <= 0 for t in top)
        assert 0 < sum(math.exp(t.logprob) for t in top) <= 1 + 1e-4


async def test_logprobs_without_top_and_with_a_prompt(worker):
    req = worker_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        prompt=PROMPT,
        sampling=worker_pb2.SamplingParams(max_tokens=8, temperature=0, logprobs=True),
    )
    text, entries, chunks = await run(worker, req)
    assert len(entries) == chunks[-1].usage.completion_tokens == 8
    assert "".join(e.token for e in entries) == text
    assert all(e.logprob <= 0 and not e.top_logprobs for e in entries)


async def test_no_entry_for_text_a_stop_string_withholds(worker):
    full, every, _ = await run(worker, chat(logprobs=True))
    start = len(full) // 2
    stop = full[start : start + 5]
    expected = full[: full.find(stop)]
    text, entries, _ = await run(worker, chat(logprobs=True, stop=[stop]))
    assert text == expected
    # Exactly the tokens whose text ends before the stop string begins.
    ends = [sum(len(e.token) for e in every[: i + 1]) for i in range(len(every))]
    kept = [e.token for e, end in zip(every, ends, strict=True) if end <= len(expected)]
    assert [e.token for e in entries] == kept
    assert len("".join(kept)) > len(expected) - len(max((e.token for e in every), key=len))


async def test_logit_bias_bans_and_forces_tokens(worker, tokenizer):
    _, entries, _ = await run(worker, chat(max_tokens=4, logprobs=True))
    first = tokenizer.tokenize(entries[0].bytes, add_bos=False, special=True)
    assert len(first) == 1
    _, banned, _ = await run(worker, chat(max_tokens=4, logprobs=True, logit_bias={first[0]: -100}))
    assert banned[0].token != entries[0].token

    forced_id = tokenizer.tokenize(b" banana", add_bos=False, special=False)[-1]
    _, forced, _ = await run(worker, chat(max_tokens=4, logprobs=True, logit_bias={forced_id: 100}))
    assert forced[0].bytes == tokenizer.detokenize([forced_id])
    assert forced[0].logprob > -1e-3, "the bias counts in the logprobs"


async def test_a_token_prompt_generates_as_its_text_does(worker, tokenizer):
    ids = tokenizer.tokenize(PROMPT.encode(), add_bos=True, special=True)
    sampling = worker_pb2.SamplingParams(max_tokens=12, temperature=0)
    as_text, _, text_chunks = await run(
        worker, worker_pb2.GenerateRequest(request_id="t", model=MODEL, prompt=PROMPT, sampling=sampling)
    )
    as_ids, _, id_chunks = await run(
        worker,
        worker_pb2.GenerateRequest(
            request_id="i", model=MODEL, tokens=worker_pb2.TokenPrompt(ids=ids), sampling=sampling
        ),
    )
    assert as_ids == as_text and "Paris" in as_text
    assert id_chunks[-1].usage.prompt_tokens == text_chunks[-1].usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("bad", [49152, -1, 2**31 - 1])
async def test_a_token_outside_the_vocabulary_is_refused_by_id(worker, bad):
    req = worker_pb2.GenerateRequest(
        request_id=f"bad-{time.monotonic_ns()}",
        model=MODEL,
        tokens=worker_pb2.TokenPrompt(ids=[1, 504, bad, 7]),
        sampling=worker_pb2.SamplingParams(max_tokens=4),
    )
    param, details = await refused(run(worker, req))
    assert param == "prompt" and str(bad) in details


async def test_bad_sampling_fields_are_refused_by_name(worker):
    empty = worker_pb2.GenerateRequest(request_id="e", model=MODEL, tokens=worker_pb2.TokenPrompt(ids=[]))
    assert (await refused(run(worker, empty)))[0] == "prompt"
    param, details = await refused(run(worker, chat(logit_bias={10**6: 5.0})))
    assert param == "logit_bias" and str(10**6) in details
    assert (await refused(run(worker, chat(logprobs=True, top_logprobs=21))))[0] == "top_logprobs"
    assert (await refused(run(worker, chat(top_logprobs=3))))[0] == "top_logprobs"


async def test_token_inputs_embed_as_their_text(worker, tokenizer):
    texts = ["hello world", "The capital of France is Paris."]
    ids = [tokenizer.tokenize(t.encode(), add_bos=True, special=False) for t in texts]
    by_text = await worker.Embed(
        worker_pb2.EmbedRequest(request_id="a", model=MODEL, inputs=texts), timeout=60
    )
    by_ids = await worker.Embed(
        worker_pb2.EmbedRequest(
            request_id="b", model=MODEL, token_inputs=[worker_pb2.TokenPrompt(ids=i) for i in ids]
        ),
        timeout=60,
    )
    assert by_ids.prompt_tokens == by_text.prompt_tokens == sum(len(i) for i in ids)
    for a, b in zip(by_text.embeddings, by_ids.embeddings, strict=True):
        assert list(a.values) == pytest.approx(list(b.values), abs=1e-6)

    bad = worker_pb2.EmbedRequest(
        request_id="c", model=MODEL, token_inputs=[worker_pb2.TokenPrompt(ids=[1, 99999])]
    )
    param, details = await refused(worker.Embed(bad, timeout=60))
    assert param == "input" and "99999" in details
    both = worker_pb2.EmbedRequest(
        request_id="d", model=MODEL, inputs=["x"], token_inputs=[worker_pb2.TokenPrompt(ids=[1])]
    )
    assert (await refused(worker.Embed(both, timeout=60)))[0] == "input"

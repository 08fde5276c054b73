"""Logprob entries and token-id inputs on the worker side: holding entries with their text, merging
chunks, and the vLLM/MAX relay's request fields and stream mapping (against an engine's SSE answer)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import BackendFailed, InvalidRequest
from hyperllama_common.textstream import HeldWithText, StopStringFilter
from hyperllama_worker_base.openai_client import EngineClient
from hyperllama_worker_base.service import (
    EngineServicer,
    Progress,
    _refused_field,
    engine_logprobs,
    request_body,
)
from hyperllama_worker_llamacpp.service import merge_chunks
from hypothesis import given
from hypothesis import strategies as st
from support.engine_adapter import StubAdapter

CHAT_ONLY = StubAdapter("generate", "chat")
CHAT_ONLY_LOGPROBS = StubAdapter("generate", "chat", "logprobs")
ALL = StubAdapter("generate", "chat", "logprobs", "logit_bias", "token_prompt")


def _chat(**sampling) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        model="m",
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="user", content="hi")]),
        sampling=worker_pb2.SamplingParams(**sampling),
    )


# ---- entries held with their text ------------------------------------------------------------


@given(
    st.lists(st.text(alphabet="ab\n", max_size=4), max_size=30),
    st.lists(st.text(alphabet="ab\n", min_size=1, max_size=3), max_size=3),
)
def test_entries_never_outrun_their_text_and_none_follow_a_stop(pieces: list[str], stops: list[str]):
    """Fed token by token through a stop filter: each entry is out once (and only once) its token's
    text is, in order; without a stop every entry comes out; with one, exactly those before it."""
    stop = StopStringFilter(stops)
    held: HeldWithText[int] = HeldWithText()
    sent, out = "", []
    for i, piece in enumerate(pieces):
        text, hit = stop.feed(piece)
        held.add(i, len(piece))
        sent += text
        released = held.release(len(text))
        ends = [len("".join(pieces[: j + 1])) for j in released]
        assert all(end <= len(sent) for end in ends)
        out += released
        if hit:
            break
    tail = stop.flush()
    sent += tail
    out += held.release(len(tail)) + ([] if stop.stopped else held.flush())
    assert out == sorted(out) and len(set(out)) == len(out)
    fed = "".join(pieces[: len(out)])
    if not stop.stopped:
        assert out == list(range(len(pieces))) and sent == "".join(pieces)
    else:
        assert fed == sent[: len(fed)]  # every entry's text was sent
        if len(out) < len(pieces):  # the next token's text was not all sent
            assert len(fed) + len(pieces[len(out)]) > len(sent)


def test_an_entry_whose_character_is_incomplete_waits_for_the_next():
    held: HeldWithText[str] = HeldWithText()
    held.add("first byte of é", 0, pending=1)
    assert held.release(0) == []
    held.add("second byte", 1)
    assert held.release(1) == ["first byte of é", "second byte"]


def test_merged_chunks_carry_every_entry_in_order():
    chunks = [
        worker_pb2.GenerateChunk(text="a", token_count=1, logprobs=[worker_pb2.TokenLogprob(token="a")]),
        worker_pb2.GenerateChunk(text="", token_count=1),
        worker_pb2.GenerateChunk(
            text="b",
            token_count=1,
            logprobs=[worker_pb2.TokenLogprob(token="x"), worker_pb2.TokenLogprob(token="b")],
        ),
    ]
    merged = merge_chunks(chunks)
    assert merged.text == "ab" and [e.token for e in merged.logprobs] == ["a", "x", "b"]
    assert not merge_chunks([worker_pb2.GenerateChunk(text="a"), worker_pb2.GenerateChunk(text="b")]).logprobs


# ---- what the relay sends ---------------------------------------------------------------------


def test_logprobs_and_logit_bias_in_each_endpoint_s_dialect():
    _, chat = request_body(_chat(logprobs=True, top_logprobs=3, logit_bias={5: -100.0}), ALL, "m")
    assert (chat["logprobs"], chat["top_logprobs"], chat["logit_bias"]) == (True, 3, {"5": -100.0})
    prompt = worker_pb2.GenerateRequest(prompt="x", sampling=worker_pb2.SamplingParams(logprobs=True))
    # Completions take the number of alternatives; at least 1, or MAX computes none (cut back later).
    assert request_body(prompt, ALL, "m")[1]["logprobs"] == 1
    plain = request_body(_chat(), ALL, "m")[1]
    assert "logprobs" not in plain and "logit_bias" not in plain


def test_a_token_prompt_goes_to_completions_as_ids():
    req = worker_pb2.GenerateRequest(model="m", tokens=worker_pb2.TokenPrompt(ids=[1, 2, 3]))
    assert request_body(req, ALL, "m", vocab_size=10) == (
        "/v1/completions",
        request_body(req, ALL, "m")[1] | {"prompt": [1, 2, 3]},
    )


@pytest.mark.parametrize(
    ("req", "engine", "param"),
    [
        (worker_pb2.GenerateRequest(tokens=worker_pb2.TokenPrompt(ids=[1, 10])), ALL, "prompt"),
        (worker_pb2.GenerateRequest(tokens=worker_pb2.TokenPrompt(ids=[-1])), ALL, "prompt"),
        (worker_pb2.GenerateRequest(tokens=worker_pb2.TokenPrompt()), ALL, "prompt"),
        (_chat(logit_bias={10: 1.0}), ALL, "logit_bias"),
        (_chat(logit_bias={1: float("nan")}), ALL, "logit_bias"),
        (_chat(logprobs=True, top_logprobs=21), ALL, "top_logprobs"),
        (_chat(top_logprobs=2), ALL, "top_logprobs"),
        (
            _chat(logit_bias={1: 1.0}),
            StubAdapter("generate", "chat", "logprobs"),
            "logit_bias",
        ),  # MAX: it would ignore it
        (_chat(logprobs=True), StubAdapter("generate", "chat"), "logprobs"),
        (
            worker_pb2.GenerateRequest(tokens=worker_pb2.TokenPrompt(ids=[1])),
            StubAdapter("generate", "chat"),
            "prompt",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_field(req, engine, param):
    with pytest.raises(InvalidRequest) as caught:
        request_body(req, engine, "m", vocab_size=10)
    assert caught.value.param == param


# ---- what the relay reads: the engines' streamed logprobs (as vLLM 0.32 sends them) --------------

CHAT_EVENTS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}]},
    *(
        {
            "choices": [
                {
                    "delta": {"content": token},
                    "logprobs": {
                        "content": [
                            {
                                "token": token,
                                "logprob": value,
                                "bytes": list(token.encode()),
                                "top_logprobs": [
                                    {"token": "Z", "logprob": value - 3, "bytes": [90]},
                                    {"token": token, "logprob": value, "bytes": list(token.encode())},
                                ],
                            }
                        ]
                    },
                }
            ]
        }
        for token, value in [("The", -1.9), (" cap", -0.5), ("ital", -0.1), (" END", -0.2), ("!", -0.3)]
    ),
    {  # the end-of-sequence token: no text, and no entry on the worker's side
        "choices": [
            {
                "delta": {"content": ""},
                "finish_reason": "stop",
                "logprobs": {"content": [{"token": "<|im_end|>", "logprob": -0.01, "top_logprobs": []}]},
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6},
    },
]
COMPLETION_EVENTS = [
    {
        "choices": [
            {
                "text": token,
                "logprobs": {
                    "text_offset": [0],
                    "token_logprobs": [value],
                    "tokens": [token],
                    "top_logprobs": [top],
                },
            }
        ]
    }
    for token, value, top in [
        (" Paris", -0.26, {" Paris": -0.26, " Mon": -4.1}),
        (",", -1.7, {",": -1.7, ".": -0.59}),  # the sampled token besides the top one (a logit_bias)
    ]
] + [
    {
        "choices": [{"text": "", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
]


def test_completions_alternatives_are_sorted_and_cut():
    entries = engine_logprobs(COMPLETION_EVENTS[1]["choices"][0], chat=False, top=1)
    assert [(e.token, round(e.logprob, 2)) for e in entries] == [(",", -1.7)]
    assert [(t.token, round(t.logprob, 2)) for t in entries[0].top_logprobs] == [(".", -0.59)]
    assert entries[0].bytes == b","


def test_completions_events_without_tokens_take_their_text():
    """MAX 26.7 sends token_logprobs and top_logprobs but no tokens."""
    one = {"text": " Paris", "logprobs": {"token_logprobs": [-0.2], "top_logprobs": [{" Paris": -0.2}]}}
    assert [e.token for e in engine_logprobs(one, chat=False, top=0)] == [" Paris"]
    two = {
        "text": " Paris,",
        "logprobs": {
            "token_logprobs": [-0.2, -1.5],
            "top_logprobs": [{" Par": -0.5, " Paris": -0.2}, {",": -1.5}],
        },
    }
    entries = engine_logprobs(two, chat=False, top=1)
    assert [(e.token, e.bytes) for e in entries] == [(" Paris", b" Paris"), (",", b",")]
    assert not any(e.top_logprobs for e in engine_logprobs(two, chat=False, top=0))


def _relay(events: list[dict], req: worker_pb2.GenerateRequest) -> list[worker_pb2.GenerateChunk]:
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    async def go() -> list[worker_pb2.GenerateChunk]:
        client = EngineClient("http://engine")
        client._http = httpx.AsyncClient(
            base_url="http://engine", transport=httpx.MockTransport(lambda r: httpx.Response(200, text=body))
        )
        servicer = EngineServicer.__new__(EngineServicer)
        servicer.client = client
        servicer.host = SimpleNamespace(end_tokens=frozenset({"<|im_end|>"}))  # type: ignore[assignment]
        path, payload = request_body(req, ALL, "m")
        try:
            return [c async for c in servicer._relay(path, payload, req, Progress())]
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_chat_entries_follow_their_text_and_stop_before_a_stop_string():
    chunks = _relay(CHAT_EVENTS, _chat(logprobs=True, top_logprobs=1))
    entries = [e for c in chunks for e in c.logprobs]
    assert "".join(c.text for c in chunks) == "The capital END!"
    assert [e.token for e in entries] == ["The", " cap", "ital", " END", "!"]
    assert [t.token for t in entries[0].top_logprobs] == ["The"]
    assert entries[1].bytes == b" cap"

    chunks = _relay(CHAT_EVENTS, _chat(logprobs=True, stop=["ital END"]))
    assert "".join(c.text for c in chunks) == "The cap"
    assert [e.token for c in chunks for e in c.logprobs] == ["The", " cap"]
    assert not any(c.logprobs for c in _relay(CHAT_EVENTS, _chat()))


def test_completion_entries_come_through():
    req = worker_pb2.GenerateRequest(
        prompt="x", sampling=worker_pb2.SamplingParams(logprobs=True, top_logprobs=2)
    )
    chunks = _relay(COMPLETION_EVENTS, req)
    entries = [e for c in chunks for e in c.logprobs]
    assert [e.token for e in entries] == [" Paris", ","]
    assert [t.token for t in entries[1].top_logprobs] == [".", ","]


def test_an_engine_s_refusal_in_the_stream_names_the_field():
    refusal = {
        "error": {
            "message": "Requested sample logprobs of 25, which is greater than max allowed: 20",
            "type": "BadRequestError",
            "param": "logprobs",
            "code": 400,
        }
    }
    with pytest.raises(InvalidRequest) as caught:
        _relay([refusal], _chat(logprobs=True, top_logprobs=2))
    assert _refused_field(caught.value, _chat(logprobs=True).sampling).param == "logprobs"
    max_says = InvalidRequest(
        "Log probabilities are not supported with the overlap scheduler.", param="messages"
    )
    assert _refused_field(max_says, _chat(logprobs=True).sampling).param == "logprobs"
    assert _refused_field(max_says, _chat().sampling) is max_says  # not a field this request set
    with pytest.raises(BackendFailed):
        _relay([{"error": {"message": "engine died", "code": 500}}], _chat())


def test_the_token_in_which_the_engine_found_a_stop_string_has_no_entry():
    """vLLM ends on a stop string itself: the text before it, with the token that held it."""
    events = CHAT_EVENTS[:3] + [
        {
            "choices": [
                {
                    "delta": {"content": "it"},
                    "finish_reason": "stop",
                    "stop_reason": "al",
                    "logprobs": {"content": [{"token": "ital", "logprob": -0.1, "top_logprobs": []}]},
                }
            ]
        }
    ]
    chunks = _relay(events, _chat(logprobs=True, stop=["al"]))
    assert "".join(c.text for c in chunks) == "The capit"
    assert [e.token for c in chunks for e in c.logprobs] == ["The", " cap"]


def test_an_entry_waits_for_text_the_engine_holds_back():
    """vLLM holds back text that may begin a stop string but sends the token's entry at once."""

    def event(token: str, text: str, **end: str) -> dict:
        content = [{"token": token, "logprob": -0.5, "top_logprobs": []}]
        return {"choices": [{"delta": {"content": text}, "logprobs": {"content": content}, **end}]}

    events = [
        event("The", "The"),
        event(" cap", " cap"),
        event("ital", ""),  # held back by the engine: it may begin "ital END"
        event(" END", "", finish_reason="stop", stop_reason="ital END"),
    ]
    chunks = _relay(events, _chat(logprobs=True, stop=["ital END"]))
    assert "".join(c.text for c in chunks) == "The cap"
    assert [e.token for c in chunks for e in c.logprobs] == ["The", " cap"]
    # Without a stop the held-back text comes later, and its entry with it.
    events[3] = event(" now", "ital now", finish_reason="length")
    chunks = _relay(events, _chat(logprobs=True))
    assert [(c.text, [e.token for e in c.logprobs]) for c in chunks] == [
        ("The", ["The"]),
        (" cap", [" cap"]),
        ("ital now", ["ital", " now"]),
    ]

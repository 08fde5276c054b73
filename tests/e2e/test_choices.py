"""OpenAI's n and a list of prompts: several choices in one request, each its own seeded stream,
through the official openai client on the real cluster."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from e2e.conftest import MODEL

MESSAGES = [{"role": "user", "content": "Name a fruit and say why you like it."}]


def _single(oai: openai.OpenAI, seed: int) -> str:
    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=1.0, seed=seed)
    return r.choices[0].message.content or ""


def test_n_choices_are_each_a_seeded_stream_of_their_own(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=12, temperature=1.0, seed=7, n=3
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert all(texts) and all(c.finish_reason in ("stop", "length") for c in r.choices)
    # Choice i is what one request with seed 7 + i answers: reproducible, and not three copies.
    assert texts == [_single(oai, 7 + i) for i in range(3)]
    assert len(set(texts)) > 1
    one = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=1.0, seed=7)
    assert r.usage is not None and one.usage is not None
    # The prompt is counted once; every choice's completion is.
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    assert r.usage.completion_tokens >= 3 and r.usage.completion_tokens <= 36


def test_n_choices_stream_with_their_index(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=12,
        temperature=1.0,
        seed=11,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = ["", ""]
    finishes: list[list[str]] = [[], []]
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index].append(choice.finish_reason)
    assert texts == [_single(oai, 11), _single(oai, 12)]
    assert all(len(f) == 1 for f in finishes)
    assert usage is not None and usage.completion_tokens > 0


def test_a_list_of_prompts_answers_a_choice_per_prompt(oai: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "One, two, three,"]
    r = oai.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0, echo=True)
    singles = [oai.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0) for p in prompts]
    assert [c.index for c in r.choices] == [0, 1]
    for choice, prompt, single in zip(r.choices, prompts, singles, strict=True):
        assert choice.text == prompt + single.choices[0].text
    assert r.usage is not None
    assert r.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles if s.usage)
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles if s.usage)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "n": 9}, "n"),
        ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "n": 0}, "n"),
        ("/v1/completions", {"model": MODEL, "prompt": ["a", "b", "c"], "n": 3}, "at most 8 choices"),
        ("/v1/completions", {"model": MODEL, "prompt": ["a"] * 9}, "1 to 8 prompts"),
        ("/v1/completions", {"model": MODEL, "prompt": ["a", ""]}, "must not be empty"),
    ],
)
def test_too_many_choices_are_a_clear_400(
    base_url: str, path: str, body: dict[str, object], message: str
) -> None:
    r = httpx.post(f"{base_url}{path}", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]


def test_user_is_accepted(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, user="someone@example.com")
    assert r.choices[0].message.content


def test_a_client_leaving_mid_stream_ends_every_choice(base_url: str, oai: openai.OpenAI) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 2000,
        "ignore_eos": True,
        "n": 2,
        "stream": True,
    }
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as r:
        seen: set[int] = set()
        for line in r.iter_lines():
            if line.startswith("data:") and '"index":1' in line:
                seen.add(1)
            if line.startswith("data:") and '"index":0' in line:
                seen.add(0)
            if seen == {0, 1}:
                break
    # Both slots come back: a request needing both is served, long before 2000 tokens could run.
    again = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, n=2, timeout=60)
    assert len(again.choices) == 2

    def idle() -> bool:
        queue = httpx.get(f"{base_url}/api/queue", timeout=10).json()["models"]
        return all(q["slots_in_use"] == 0 for q in queue)

    deadline = time.monotonic() + 30
    while not idle():
        assert time.monotonic() < deadline, "slots still in use after the client left"
        time.sleep(0.2)

"""logprobs, logit_bias and token-id inputs on both APIs, through the official clients: real
log-probabilities from the engine."""

from __future__ import annotations

import math

import httpx
import ollama
import openai
from hyperllama_store.bundled import find_bundled_gguf
from llama_cpp import Llama

from e2e.conftest import MODEL

ASK = [{"role": "user", "content": "Name three colors."}]


def test_chat_logprobs_are_real_and_greedy_picks_the_top_one(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=0, logprobs=True,
                                    top_logprobs=5)  # fmt: skip
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 5
        assert t.top_logprobs[0].token == t.token and math.isclose(
            t.top_logprobs[0].logprob, t.logprob, abs_tol=1e-4
        )
        assert 0 < sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-4
        assert bytes(t.bytes or []).decode("utf-8", "replace") == t.token
    plain = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=0)
    assert (
        plain.choices[0].logprobs is None and plain.choices[0].message.content == r.choices[0].message.content
    )


def test_streamed_chat_logprobs_follow_the_text(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=10, temperature=0, logprobs=True, stream=True
    )
    text, tokens = "", ""
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            tokens += "".join(t.token for t in (c.logprobs.content or [])) if c.logprobs else ""
    assert text and tokens == text


def test_completion_logprobs_in_the_older_shape(oai: openai.OpenAI) -> None:
    r = oai.completions.create(model=MODEL, prompt="The sky is", max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and "".join(lp.tokens) == r.choices[0].text
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(lp.tokens)  # type: ignore[arg-type]
    assert lp.text_offset[0] == 0 and all(len(top) <= 3 for top in lp.top_logprobs)  # type: ignore[index,union-attr]


def test_logit_bias_bans_and_forces_a_token(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1, temperature=0, logprobs=True,
                                        top_logprobs=2)  # fmt: skip
    top = first.choices[0].logprobs.content[0]  # type: ignore[index,union-attr]
    banned = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1, temperature=0,
                                         logit_bias={str(_token_id(top.token)): -100})  # fmt: skip
    assert banned.choices[0].message.content != top.token


def _vocabulary() -> Llama:
    """The default model's tokenizer alone, as the engine tokenizes."""
    return Llama(model_path=str(find_bundled_gguf()), vocab_only=True, verbose=False)


def _token_id(token: str) -> int:
    ids = _vocabulary().tokenize(token.encode(), add_bos=False, special=True)
    assert len(ids) == 1, ids
    return ids[0]


def test_a_token_prompt_answers_as_its_text(oai: openai.OpenAI) -> None:
    ids = _vocabulary().tokenize(b"The capital of France is", add_bos=False, special=False)
    text = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    tokens = oai.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert tokens.choices[0].text == text.choices[0].text
    both = oai.completions.create(model=MODEL, prompt=[ids, ids], max_tokens=6, temperature=0)
    assert [c.text for c in both.choices] == [text.choices[0].text] * 2
    embedded = oai.embeddings.create(model=MODEL, input=[ids])
    as_text = oai.embeddings.create(model=MODEL, input=["The capital of France is"])
    assert len(embedded.data[0].embedding) == len(as_text.data[0].embedding)
    pairs = zip(embedded.data[0].embedding, as_text.data[0].embedding, strict=True)
    assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in pairs)


def test_ollama_logprobs(oll: ollama.Client, base_url: str) -> None:
    ask = {"model": MODEL, "prompt": "Hi", "stream": False, "logprobs": True, "top_logprobs": 2,
           "options": {"num_predict": 5, "temperature": 0}}  # fmt: skip
    r = httpx.post(f"{base_url}/api/generate", json=ask, timeout=60)
    body = r.json()
    assert r.status_code == 200 and len(body["logprobs"]) == body["eval_count"]
    assert "".join(e["token"] for e in body["logprobs"]) == body["response"]
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in body["logprobs"])
    bad = httpx.post(
        f"{base_url}/api/chat", json={"model": MODEL, "messages": ASK, "top_logprobs": 2}, timeout=30
    )
    assert bad.status_code == 400 and "logprobs" in bad.json()["error"]

"""Ollama's options, think and suffix: what the cluster applies is applied, the rest is refused by
name, through the official ollama client."""

from __future__ import annotations

import httpx
import ollama
import pytest
from hyperllama_gateway.ollama.protocol import UNSUPPORTED_OPTIONS

from e2e.conftest import MODEL


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_OPTIONS))
def test_a_documented_option_that_is_not_applied_is_refused_by_name(oll: ollama.Client, name: str) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oll.generate(model=MODEL, prompt="Hi", options={name: 1, "num_predict": 2})
    assert err.value.status_code == 400
    assert f"options.{name} is not supported" in err.value.error


def test_null_options_are_unset_and_applied_ones_work(base_url: str) -> None:
    # Clients such as LangChain send every option, unset ones as null.
    options = {name: None for name in UNSUPPORTED_OPTIONS}
    options.update(num_predict=3, temperature=0, top_k=1, seed=1, repeat_penalty=1.1, stop=["\n\n"])
    r = httpx.post(f"{base_url}/api/generate", json={"model": MODEL, "prompt": "Hi", "options": options,
                                                     "stream": False}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["eval_count"] <= 3 and r.json()["done"] is True


def test_think_is_refused_as_ollama_refuses_a_model_that_cannot_think(oll: ollama.Client) -> None:
    for call in (
        lambda: oll.generate(model=MODEL, prompt="Hi", think=True),
        lambda: oll.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], think=True),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 400 and err.value.error == f'"{MODEL}" does not support thinking'
    # think: false asks for nothing the model cannot do.
    assert oll.generate(model=MODEL, prompt="Hi", think=False, options={"num_predict": 2}).done


def test_a_suffix_is_refused_as_ollama_refuses_a_model_without_insert(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oll.generate(model=MODEL, prompt="def add(a, b):", suffix="    return c")
    assert err.value.status_code == 400 and err.value.error == f'"{MODEL}" does not support insert'


def test_num_ctx_past_the_served_context_is_refused_not_cut(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oll.generate(model=MODEL, prompt="Hi", options={"num_ctx": 100_000, "num_predict": 2})
    assert err.value.status_code == 400 and "num_ctx 100000 is more than the" in err.value.error
    # Within it, num_ctx is honoured: a prompt longer than it is refused by its own length.
    with pytest.raises(ollama.ResponseError) as short:
        oll.generate(model=MODEL, prompt="word " * 200, options={"num_ctx": 64, "num_predict": 2})
    assert short.value.status_code == 400 and "the context holds 64" in short.value.error
    assert oll.generate(model=MODEL, prompt="Hi", options={"num_ctx": 2048, "num_predict": 2}).done


def test_generate_returns_its_context_and_a_context_sent_back_goes_on_from_it(oll: ollama.Client) -> None:
    first = oll.generate(model=MODEL, prompt="My name is Zed.", options={"num_predict": 6, "temperature": 0})
    context = list(first.context or [])
    # The exchange as tokens: its prompt, then what was generated.
    assert len(context) == first.prompt_eval_count + first.eval_count
    alone = oll.generate(model=MODEL, prompt="What is my name?", options={"num_predict": 4, "temperature": 0})
    after = oll.generate(model=MODEL, prompt="What is my name?", context=context,
                         options={"num_predict": 4, "temperature": 0})  # fmt: skip
    assert after.prompt_eval_count == len(context) + alone.prompt_eval_count
    assert len(after.context or []) == after.prompt_eval_count + after.eval_count
    assert list(after.context or [])[: len(context)] == context
    # A raw prompt neither takes nor gives a context, as in Ollama.
    raw = oll.generate(model=MODEL, prompt="Hi", raw=True, context=context, options={"num_predict": 2})
    assert raw.context is None and raw.prompt_eval_count < len(context)


def test_a_context_that_is_not_the_models_tokens_is_refused(oll: ollama.Client, base_url: str) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oll.generate(model=MODEL, prompt="Hi", context=[1, 2, 10_000_000])
    assert (
        err.value.status_code == 400
        and "token id 10000000 is not in the model's vocabulary" in err.value.error
    )
    r = httpx.post(
        f"{base_url}/api/generate", json={"model": MODEL, "prompt": "Hi", "context": [-1]}, timeout=30
    )
    assert r.status_code == 400 and "context" in r.json()["error"]


def _texts(call, seeds: range) -> list[str]:  # type: ignore[no-untyped-def]
    return [call(seed) for seed in seeds]


def test_unset_sampling_gets_each_apis_own_defaults(oll: ollama.Client, base_url: str) -> None:
    """/api samples as Ollama does (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1) and /v1
    as OpenAI does (temperature 1, top_p 1, nothing else): with a seed, unset options give exactly
    what those values set explicitly give."""
    seeds = range(1, 5)
    prompt = "Write a short story about a cat."
    ollama_defaults = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1}

    def api(seed: int, **options: float) -> str:
        return oll.generate(
            model=MODEL, prompt=prompt, options={"seed": seed, "num_predict": 24, **options}
        ).response

    def v1(seed: int, **extra: float) -> str:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "seed": seed,
            "max_tokens": 24,
        }
        r = httpx.post(f"{base_url}/v1/chat/completions", json=body | extra, timeout=60)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])

    api_unset = _texts(api, seeds)
    assert api_unset == _texts(lambda s: api(s, **ollama_defaults), seeds)
    v1_unset = _texts(v1, seeds)
    openai_explicit = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
    assert v1_unset == _texts(lambda s: v1(s, **openai_explicit), seeds)
    # llama.cpp's own defaults (top_p 0.95, min_p 0.05) are neither.
    assert v1_unset != _texts(lambda s: v1(s, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05), seeds)


def test_a_models_own_parameters_sit_between_the_request_and_the_api_defaults(
    oll: ollama.Client, base_url: str
) -> None:
    oll.create(model="greedy-smol", from_=MODEL, parameters={"temperature": 0})
    try:

        def v1(seed: int, **extra: float) -> str:
            body = {"model": "greedy-smol", "messages": [{"role": "user", "content": "Tell me a joke."}],
                    "seed": seed, "max_tokens": 16} | extra  # fmt: skip
            r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["message"]["content"])

        # The model's temperature 0 wins over OpenAI's 1: every seed gives the greedy answer...
        unset = [v1(seed) for seed in (1, 2, 3)]
        assert unset == [v1(1, temperature=0)] * 3
        # ...and the request's own wins over the model's.
        assert len({v1(seed, temperature=1.5) for seed in (1, 2, 3)}) > 1
    finally:
        oll.delete("greedy-smol")


def test_the_context_after_a_stop_string_holds_the_text_sent(oll: ollama.Client) -> None:
    from hyperllama_worker_llamacpp.registry import _bundled_smollm2
    from llama_cpp import Llama  # the bundled model's vocabulary, to read the returned tokens

    vocab = Llama(model_path=str(_bundled_smollm2()), n_ctx=64, vocab_only=True, verbose=False)
    options = {"num_predict": 24, "temperature": 0}
    full = oll.generate(model=MODEL, prompt="Tell me a story about a fox.", options=options)
    stop = full.response[len(full.response) // 2 : len(full.response) // 2 + 4]
    cut = oll.generate(
        model=MODEL, prompt="Tell me a story about a fox.", options={**options, "stop": [stop]}
    )
    assert cut.done_reason == "stop" and cut.response == full.response[: full.response.find(stop)]
    generated = list(cut.context or [])[cut.prompt_eval_count :]
    assert vocab.detokenize(generated).decode() == cut.response
    # Without a stop string, the tokens are the ones generated.
    assert len(list(full.context or [])) == full.prompt_eval_count + full.eval_count

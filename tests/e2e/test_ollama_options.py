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

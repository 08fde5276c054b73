"""Input the llama.cpp engine cannot use, through the whole cluster: a 4xx in the API's envelope at
once, never a crashed worker or a request waiting for its deadline, and the next request served."""

from __future__ import annotations

import time

import httpx
import pytest

from e2e.conftest import MODEL

MSG = [{"role": "user", "content": "Describe a person."}]


@pytest.fixture(scope="module")
def http(base_url: str):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def schema_body(schema: object) -> dict:
    return {
        "model": MODEL,
        "messages": MSG,
        "max_tokens": 32,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }


BAD_SCHEMAS = {
    "empty enum": {"enum": []},
    "empty anyOf": {"anyOf": []},
    "minItems above maxItems": {"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 2},
    "huge minItems": {"type": "array", "items": {"type": "string"}, "minItems": 10**9},
    "ref to nowhere": {"$ref": "#/definitions/nowhere"},
    "lookahead pattern": {"type": "string", "pattern": "^(?=a)b$"},
    "class matching nothing": {"type": "string", "pattern": "^a[^\\x00-\\U0010FFFF]$"},
}


@pytest.mark.parametrize("schema", BAD_SCHEMAS.values(), ids=BAD_SCHEMAS.keys())
def test_a_schema_the_engine_cannot_use_is_a_400(http, schema):
    started = time.perf_counter()
    r = http.post("/v1/chat/completions", json=schema_body(schema))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "response_format"
    # Most are refused before a slot is taken; a dead end inside the grammar only once the output
    # reaches it. Either way long before any deadline.
    assert time.perf_counter() - started < 30
    # The worker is still there and serves the next request.
    ok = http.post("/v1/chat/completions", json={"model": MODEL, "messages": MSG, "max_tokens": 4})
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"]


def test_a_schema_that_works_still_works(http):
    r = http.post("/v1/chat/completions", json=schema_body({"enum": ["yes", "no"]}) | {"temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].strip() in ('"yes"', '"no"')


def test_an_empty_raw_prompt_is_answered_at_once(http):
    """Zero prompt tokens used to be seated and never fed, until the deadline. Now the gateway answers
    it as Ollama's preload, or the worker refuses it (400): either way at once."""
    started = time.perf_counter()
    r = http.post(
        "/api/generate", json={"model": MODEL, "raw": True, "prompt": "", "stream": False}, timeout=20
    )
    if r.status_code == 400:
        assert set(r.json()) == {"error"} and "empty" in r.json()["error"]
    else:
        assert r.status_code == 200 and r.json()["done"] is True, r.text
    assert time.perf_counter() - started < 5


def test_a_long_embedding_input_is_embedded_whole_or_refused(http):
    # More than the 512 tokens of llama.cpp's default batch, less than the 4096-token context.
    mid = http.post("/api/embed", json={"model": MODEL, "input": "hello " * 800, "truncate": False})
    assert mid.status_code == 200, mid.text
    assert mid.json()["prompt_eval_count"] > 512 and len(mid.json()["embeddings"]) == 1
    # Past the context: refused unless truncation is allowed, and then counted as cut.
    long = {"model": MODEL, "input": "hello " * 5000}
    refused = http.post("/api/embed", json=long | {"truncate": False})
    assert refused.status_code == 400, refused.text
    cut = http.post("/api/embed", json=long | {"truncate": True})
    assert cut.status_code == 200, cut.text
    assert cut.json()["prompt_eval_count"] == 4096

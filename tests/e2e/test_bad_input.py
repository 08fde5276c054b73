"""Every kind of bad input gets a 4xx with the family's error envelope, and serving goes on."""

from __future__ import annotations

import httpx
import pytest

from e2e.conftest import MAX_BODY_BYTES, MODEL

MSG = [{"role": "user", "content": "hi"}]
LONG_PROMPT = "hello " * 9000  # more tokens than the 4096-token context of a sequence


def openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def ollama_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


@pytest.fixture(scope="module")
def http(base_url: str):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


OPENAI_CASES = [
    ("/v1/chat/completions", b"{not json", 400),
    ("/v1/chat/completions", b"[1, 2]", 400),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400),
    ("/v1/chat/completions", {"messages": MSG}, 400),
    ("/v1/chat/completions", {"model": "", "messages": MSG}, 400),
    ("/v1/chat/completions", {"model": MODEL}, 400),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400),
    ("/v1/chat/completions", {"model": MODEL, "messages": MSG, "max_tokens": -5}, 400),
    ("/v1/chat/completions", {"model": MODEL, "messages": MSG, "max_tokens": 10**12}, 400),
    ("/v1/chat/completions", {"model": MODEL, "messages": MSG, "temperature": "hot"}, 400),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "no role"}]}, 400),
    ("/v1/chat/completions", {"model": "missing:1", "messages": MSG}, 404),
    ("/v1/completions", {"model": MODEL}, 400),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, 400),
    ("/v1/embeddings", {"model": MODEL, "input": []}, 400),
    ("/v1/embeddings", {"model": MODEL}, 400),
]


@pytest.mark.parametrize(("path", "body", "status"), OPENAI_CASES)
def test_openai_bad_input(http: httpx.Client, path: str, body, status: int):
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    err = openai_error(r, status)
    if status == 404:
        assert MODEL in err["message"]


OLLAMA_CASES = [
    ("/api/chat", b"{not json", 400),
    ("/api/chat", {"messages": MSG}, 400),
    ("/api/chat", {"model": "", "messages": MSG}, 400),
    ("/api/chat", {"model": MODEL, "messages": "hi"}, 400),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("/api/chat", {"model": MODEL, "messages": MSG, "options": {"num_predict": -7}}, 400),
    ("/api/chat", {"model": MODEL, "messages": MSG, "options": {"temperature": "hot"}}, 400),
    ("/api/chat", {"model": "missing:1", "messages": MSG}, 404),
    ("/api/generate", {"prompt": "hi"}, 400),
    ("/api/generate", {"model": "missing:1", "prompt": "hi"}, 404),
    ("/api/embed", {"model": MODEL, "input": []}, 400),
    ("/api/embed", {"model": "missing:1", "input": "x"}, 404),
    ("/api/embeddings", {"model": MODEL, "prompt": ""}, 400),
    ("/api/show", {}, 400),
    ("/api/show", {"model": "missing:1"}, 404),
]


@pytest.mark.parametrize(("path", "body", "status"), OLLAMA_CASES)
def test_ollama_bad_input(http: httpx.Client, path: str, body, status: int):
    if isinstance(body, bytes):
        r = http.post(path, content=body)
    else:
        r = http.post(path, json=body)
    message = ollama_error(r, status)
    if status == 404 and path != "/api/show":
        assert MODEL in message


def test_prompt_longer_than_the_context(http: httpx.Client):
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 5})
    assert openai_error(r, 400)["code"] == "context_length_exceeded"
    r = http.post(
        "/api/generate",
        json={"model": MODEL, "prompt": "hello " * 100, "stream": False, "options": {"num_ctx": 32}},
    )
    assert "context" in ollama_error(r, 400)


def test_streaming_request_with_bad_input_fails_before_the_stream(http: httpx.Client):
    r = http.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": LONG_PROMPT}]})
    assert "context" in ollama_error(r, 400)
    r = http.post("/v1/chat/completions", json={"model": "missing:1", "messages": MSG, "stream": True})
    openai_error(r, 404)


def test_body_over_the_limit_is_refused(http: httpx.Client):
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 10)}]}
    openai_error(http.post("/v1/chat/completions", json=big), 413)
    ollama_error(http.post("/api/chat", json=big), 413)

    def chunked():  # no Content-Length: the gateway counts as it reads and stops at the limit
        for _ in range(MAX_BODY_BYTES // 1024 + 10):
            yield b"x" * 1024

    ollama_error(http.post("/api/chat", content=chunked()), 413)


def test_unknown_route_and_method(http: httpx.Client):
    openai_error(http.get("/v1/nothing"), 404)
    ollama_error(http.get("/api/nothing"), 404)
    ollama_error(http.get("/api/chat"), 405)


def test_serving_goes_on_after_bad_input(http: httpx.Client):
    r = http.post(
        "/api/generate",
        json={
            "model": MODEL,
            "prompt": "Say hi",
            "stream": False,
            "options": {"num_predict": 4, "temperature": 0},
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["done"] is True and body["eval_count"] == 4 and body["response"]

"""Every kind of bad input gets a 4xx with the family's error envelope, and serving goes on."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

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


def post_raw(http: httpx.Client, path: str, text: str, **kw) -> httpx.Response:
    """POST JSON text as written: escapes such as \ud800 and NaN, which json.dumps would not emit."""
    return http.post(path, content=text.encode(), headers={"content-type": "application/json"}, **kw)


MSG_JSON = '[{"role": "user", "content": "hi"}]'


def chat_json(extra: str, messages: str = MSG_JSON) -> str:
    return f'{{"model": "{MODEL}", "messages": {messages}{", " if extra else ""}{extra}}}'


def with_model(extra: str) -> str:
    return f'{{"model": "{MODEL}", {extra}}}'


# (path, body as JSON text, the field the 400 names). Numbers protobuf cannot hold, non-finite numbers,
# lone surrogates anywhere, and unbounded sizes: each used to be a plain-text 500, a misleading 429/503
# or a hang.
EDGE_CASES = [
    ("/v1/chat/completions", chat_json('"top_k": 2147483648'), "top_k"),
    ("/v1/chat/completions", chat_json('"seed": 9223372036854775808'), "seed"),
    ("/v1/chat/completions", chat_json('"seed": -9223372036854775809'), "seed"),
    ("/v1/chat/completions", chat_json('"temperature": NaN'), "temperature"),
    ("/v1/chat/completions", chat_json('"top_p": 1e400'), "top_p"),
    (
        "/v1/chat/completions",
        chat_json("", '[{"role": "user", "content": "a\\ud800"}]'),
        "messages.0.content",
    ),
    ("/v1/chat/completions", chat_json("", '[{"role": "\\udfff", "content": "a"}]'), "messages.0.role"),
    ("/v1/chat/completions", chat_json('"stop": ["\\ud800"]'), "stop.0"),
    ("/v1/chat/completions", f'{{"model": "x\\ud800", "messages": {MSG_JSON}}}', "model"),
    ("/v1/completions", with_model('"prompt": "\\ud800"'), "prompt"),
    ("/v1/embeddings", with_model('"input": ["ok", "\\udc00"]'), "input.1"),
    ("/api/chat", chat_json('"options": {"top_k": 2147483648}'), "options.top_k"),
    ("/api/chat", chat_json('"options": {"num_ctx": 2147483648}'), "options.num_ctx"),
    ("/api/chat", chat_json('"options": {"seed": 9223372036854775808}'), "options.seed"),
    ("/api/chat", chat_json('"options": {"temperature": Infinity}'), "options.temperature"),
    ("/api/chat", chat_json("", '[{"role": "user", "content": "\\ud800"}]'), "messages.0.content"),
    ("/api/generate", with_model('"prompt": "\\ud800"'), "prompt"),
    ("/api/generate", with_model('"prompt": "hi", "system": "\\ud800"'), "system"),
    ("/api/generate", with_model('"prompt": "hi", "options": {"stop": ["\\ud800"]}'), "options.stop.0"),
    ("/api/generate", with_model('"prompt": "hi", "format": {"enum": ["\\ud800"]}'), "format.enum.0"),
    ("/api/embed", with_model('"input": "\\ud800"'), "input"),
    ("/api/embeddings", with_model('"prompt": "\\ud800"'), "prompt"),
    ("/api/show", '{"model": "\\ud800"}', "model"),
]


@pytest.mark.parametrize(("path", "text", "field"), EDGE_CASES)
def test_out_of_range_and_malformed_values_name_the_field(
    http: httpx.Client, path: str, text: str, field: str
):
    r = post_raw(http, path, text)
    if path.startswith("/v1"):
        err = openai_error(r, 400)
        assert err["param"] == field and err["message"].startswith(field), err
    else:
        assert ollama_error(r, 400).startswith(field)


def _big(n: int) -> list[dict]:
    return [{"role": "user", "content": "x"}] * n


BIG_SCHEMA = {"enum": ["x" * 100] * 700}  # 72 KB of JSON
# Sizes a client could send without bound (each under the e2e body limit of 256 KiB).
BOUND_CASES = [
    ("/v1/chat/completions", {"model": "m" * 200_000, "messages": MSG}, "model"),
    ("/api/chat", {"model": "m" * 200_000, "messages": MSG}, "model"),
    ("/api/generate", {"model": "m" * 300, "prompt": "hi"}, "model"),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "options": {"stop": ["x"] * 10_000}}, "options.stop"),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "options": {"stop": "s" * 1000}}, "options.stop"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stop": ["x" * 1000]}, "stop"),
    ("/api/chat", {"model": MODEL, "messages": _big(5000)}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": _big(5000)}, "messages"),
    ("/api/chat", {"model": MODEL, "messages": MSG, "format": BIG_SCHEMA}, "format"),
    ("/v1/chat/completions",
     {"model": MODEL, "messages": MSG,
      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": BIG_SCHEMA}}},
     "response_format"),
    ("/v1/embeddings", {"model": MODEL, "input": ["x"] * 3000}, "input"),
    ("/api/embed", {"model": MODEL, "input": ["x"] * 3000}, "input"),
    ("/api/chat", {"model": MODEL, "messages": MSG, "tools": json.loads("[" * 100 + "]" * 100)}, "tools"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "field"), BOUND_CASES)
def test_unbounded_sizes_are_a_clear_400(http: httpx.Client, path: str, body: dict, field: str):
    r = http.post(path, json=body)
    message = openai_error(r, 400)["message"] if path.startswith("/v1") else ollama_error(r, 400)
    assert message.startswith(field), message
    assert len(message) < 400  # what it echoes is cut


@pytest.mark.parametrize("value", [b"--1", b"\xd9\xa3", b"high", b"1.5"])
def test_bad_priority_header_is_a_400_naming_it(http: httpx.Client, value: bytes):
    headers = {"X-HyperLlama-Priority": value}
    err = openai_error(
        http.post("/v1/chat/completions", json={"model": MODEL, "messages": MSG}, headers=headers), 400
    )
    assert err["param"] == "X-HyperLlama-Priority"
    message = ollama_error(
        http.post("/api/chat", json={"model": MODEL, "messages": MSG}, headers=headers), 400
    )
    assert "X-HyperLlama-Priority" in message


@pytest.mark.parametrize("value", ["99999999999999999999", "-99999999999999999999", "12", "-3"])
def test_out_of_range_priority_is_clamped_and_served(http: httpx.Client, value: str):
    r = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": MSG, "max_tokens": 2},
        headers={"X-HyperLlama-Priority": value},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_raw_generate_with_an_empty_prompt_answers_load(http: httpx.Client):
    for stream in (False, True):
        r = http.post(
            "/api/generate", json={"model": MODEL, "raw": True, "prompt": "", "stream": stream}, timeout=10
        )
        assert r.status_code == 200, r.text
        last = [json.loads(line) for line in r.text.splitlines() if line][-1]
        assert last["done"] is True and last["done_reason"] == "load" and last["response"] == ""


def test_client_request_id_is_echoed_on_every_response(http: httpx.Client):
    rid = {"X-Request-Id": "corr-42"}
    ok = http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": MSG, "max_tokens": 2}, headers=rid
    )
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "corr-42"
    assert "corr-42" not in ok.json()["id"]  # the internal id is the gateway's own
    with http.stream(
        "POST",
        "/api/chat",
        json={"model": MODEL, "messages": MSG, "options": {"num_predict": 2}},
        headers=rid,
    ) as streamed:
        assert streamed.status_code == 200 and streamed.headers["x-request-id"] == "corr-42"
        assert json.loads(list(streamed.iter_lines())[-1])["done"] is True
    bad = http.post("/api/chat", json={"messages": MSG}, headers=rid)
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "corr-42"
    too_big = http.post("/v1/chat/completions", content=b"x" * (MAX_BODY_BYTES + 1), headers=rid)
    assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "corr-42"
    odd = http.post("/api/chat", json={"messages": MSG}, headers={"X-Request-Id": b"a\xffb" + b"c" * 500})
    assert odd.headers["x-request-id"] == "ab" + "c" * 126


def test_concurrent_requests_with_the_same_client_id_are_both_served(base_url: str):
    """Four streams on two slots: two run, two wait in the queue, all with one X-Request-Id. Each is its
    own request inside the cluster (the client's id is only echoed)."""

    def one(i: int) -> dict:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            r = client.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i + 5}"}],
                      "max_tokens": 24, "temperature": 0},
                headers={"X-Request-Id": "same-id"},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.headers["x-request-id"] == "same-id"
            return r.json()

    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(one, range(4)))
    assert len({b["id"] for b in bodies}) == 4
    assert all(b["choices"][0]["message"]["content"] for b in bodies)


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

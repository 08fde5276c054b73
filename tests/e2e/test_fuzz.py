"""Seeded fuzzing of every endpoint through the real cluster: mutated bodies and headers, streamed and
not. No response may be a 5xx, every error must be in its API's envelope, nothing may hang, a stream
must end with its one terminal marker, and a normal request must be answered right after."""

from __future__ import annotations

import copy
import json
import math
import random
from collections import Counter
from typing import Any

import httpx
import pytest

from e2e.conftest import MODEL

SEED = 20240808
CASES = 2000
# Valid generations are capped at a few tokens, so anything slower than this is a hang.
REQUEST_TIMEOUT = 15.0
MAX_TOKENS = 4

MSG = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}

# Valid bodies, one or more per endpoint; every case starts from one of them.
POST_BASES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": MODEL, "messages": MSG, "max_tokens": MAX_TOKENS}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, *MSG],
                              "temperature": 0.5, "top_p": 0.9, "top_k": 20, "seed": 3, "stop": ["\n"],
                              "max_tokens": MAX_TOKENS, "presence_penalty": 0.1,
                              "response_format": {"type": "json_object"}}),
    ("/v1/chat/completions", {"model": MODEL, "messages": MSG, "max_tokens": MAX_TOKENS,
                              "response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "x", "schema": SCHEMA}}}),
    ("/v1/completions", {"model": MODEL, "prompt": "Once upon a time", "max_tokens": MAX_TOKENS,
                         "echo": True}),
    ("/v1/embeddings", {"model": MODEL, "input": ["hello", "world"]}),
    ("/api/generate", {"model": MODEL, "prompt": "Why is the sky blue?",
                       "options": {"num_predict": MAX_TOKENS, "temperature": 0, "seed": 1}}),
    ("/api/generate", {"model": MODEL, "prompt": "Name a colour", "system": "Be brief.", "raw": False,
                       "format": SCHEMA, "options": {"num_predict": MAX_TOKENS, "stop": ["."]}}),
    ("/api/chat", {"model": MODEL, "messages": MSG, "options": {"num_predict": MAX_TOKENS, "top_k": 10},
                   "format": "json"}),
    ("/api/embed", {"model": MODEL, "input": "hello", "truncate": True}),
    ("/api/embeddings", {"model": MODEL, "prompt": "hello"}),
    ("/api/show", {"model": MODEL}),
]  # fmt: skip
GET_PATHS = [
    "/v1/models", f"/v1/models/{MODEL}", "/v1/models/missing%3A1", "/v1/models/%ff%fe%00", "/api/tags",
    "/api/ps", "/api/version", "/", "/health", "/ready", "/v1/nothing", "/api/nothing", "/api/chat",
    "/v1/chat/completions", "/api/../v1/models",
]  # fmt: skip
KEYS = [
    "model", "messages", "prompt", "input", "options", "stream", "format", "system", "raw", "stop", "seed",
    "top_k", "top_p", "temperature", "max_tokens", "num_predict", "num_ctx", "response_format", "role",
    "content", "n", "logprobs", "images", "keep_alive", "stream_options", "echo", "truncate", "name",
    "encoding_format", "dimensions", "tools", "max_completion_tokens", "min_p", "repeat_penalty", "",
]  # fmt: skip


def deep(n: int) -> Any:
    value: Any = "x"
    for _ in range(n):
        value = [value]
    return value


# Values that have broken parsers before: protobuf's integer widths, non-finite floats, lone
# surrogates, control characters, sizes past every bound.
INTERESTING: list[Any] = [
    None, True, False, 0, 1, -1, -2, 2, 4, 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63),
    -(2**63) - 1, 10**30, 0.0, -0.0, 0.5, 1.5, 2.0000001, 1e39, -1e39, 1e308, math.nan, math.inf, -math.inf,
    "", " ", "x", "\ud800", "a\udfffb", "\udc00\ud800", "\x00", "\u200b", "é", "😀", "\\", '"', "x" * 300,
    "hello " * 1500, MODEL, "missing:1", "json", "text", "json_schema", "user", "system", "assistant",
    "tool", "developer", "wizard", "llamacpp", "-1", "1e3", [], {}, [1, 2], ["a", "b"], ["\ud800"],
    ["x"] * 40, ["y" * 400], [{}], [{"role": "user"}], [{"role": "user", "content": "\ud800"}],
    [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}],
    {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": {"enum": []}}},
    {"type": "object", "properties": {"\ud800": {}}}, {"enum": []}, {"type": "string", "pattern": "("},
    {"num_predict": -1}, {"num_ctx": 2**31}, {"stop": ["x"] * 100}, {"top_k": 2**40}, {"seed": 2**64},
    deep(70), deep(40), {"a": {"b": {"c": {"d": []}}}},
]  # fmt: skip

PRIORITIES: list[bytes] = [
    b"0", b"5", b"9", b"10", b"-1", b"--1", b"+3", b"99999999999999999999", b"1" * 5000, b"\xd9\xa3", b"\xb2",
    b"", b"3 4", b"high", b"1.5", b"0x5", b"\xff\xfe",
]  # fmt: skip
ENGINES: list[bytes] = [
    b"llamacpp",
    b"LLAMACPP",
    b"vllm",
    b"max",
    b"tensorrt",
    b"",
    b"x" * 2000,
    b"\xff",
    b"a b",
]
REQUEST_IDS: list[bytes] = [b"abc", b"same", b"x" * 3000, b"\xff\xfe", b"a\tb", b"", b"\x80" * 100]
CONTENT_TYPES: list[bytes] = [
    b"application/json", b"text/plain", b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=x", b"application/json; charset=latin-1", b"\xff",
]  # fmt: skip


def mutate_value(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """One random change somewhere inside ``value``."""
    if isinstance(value, dict) and value and depth < 6 and rng.random() < 0.6:
        key = rng.choice(list(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.25:
            out[rng.choice(KEYS)] = rng.choice(INTERESTING)
        else:
            out[key] = mutate_value(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and depth < 6 and rng.random() < 0.6:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        roll = rng.random()
        if roll < 0.15:
            del out_list[i]
        elif roll < 0.3:
            out_list.append(copy.deepcopy(out_list[i]))
        else:
            out_list[i] = mutate_value(rng, out_list[i], depth + 1)
        return out_list
    if isinstance(value, str) and value and rng.random() < 0.3:
        i = rng.randrange(len(value) + 1)
        return value[:i] + rng.choice(["\ud800", "\x00", "é", "\U0001f600", '"', "\\n", "{"]) + value[i:]
    return copy.deepcopy(rng.choice(INTERESTING))


def cap_output(path: str, body: Any) -> Any:
    """Keep valid generations to a few tokens: a fuzz case must not run to the context's end."""
    if not isinstance(body, dict):
        return body
    if path.startswith("/v1/"):
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if value is None or (
                isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS
            ):
                body[key] = MAX_TOKENS
    elif path in ("/api/generate", "/api/chat"):
        options = body.get("options")
        if options is None:
            body["options"] = {"num_predict": MAX_TOKENS}
        elif isinstance(options, dict):
            value = options.get("num_predict")
            if value is None or (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and (value > MAX_TOKENS or value < 0)
            ):
                options["num_predict"] = MAX_TOKENS
    return body


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return data[: rng.randrange(len(data) + 1)]  # truncated
    if roll < 0.5:
        i = rng.randrange(len(data))
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]  # one byte changed
    if roll < 0.7:
        return rng.choice([b"", b"null", b"[]", b"1", b'"x"', b"{", b"\xff\xfe{}", b"{}" * 10, b"[" * 5000])
    return data.replace(b'"', b"'", 1)


def make_case(rng: random.Random) -> tuple[str, str, bytes | None, dict[str, bytes]]:
    """(method, path, body, headers) for one fuzz case."""
    headers: dict[str, bytes] = {}
    for name, pool, p in (
        ("X-HyperLlama-Priority", PRIORITIES, 0.15),
        ("X-HyperLlama-Engine", ENGINES, 0.1),
        ("X-Request-Id", REQUEST_IDS, 0.2),
        ("Content-Type", CONTENT_TYPES, 0.1),
        ("Accept", [b"text/event-stream", b"*/*", b"\xff"], 0.05),
        ("Authorization", [b"Bearer x", b"Basic \xff", b"x" * 2000], 0.05),
    ):
        if rng.random() < p:
            headers[name] = rng.choice(pool)
    if rng.random() < 0.08:
        return "GET", rng.choice(GET_PATHS), None, headers
    path, base = rng.choice(POST_BASES)
    body: Any = copy.deepcopy(base)
    if path in ("/v1/chat/completions", "/v1/completions", "/api/generate", "/api/chat"):
        body["stream"] = rng.random() < 0.5
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        body = mutate_value(rng, body)
    body = cap_output(path, body)
    if rng.random() < 0.03:
        path = rng.choice(["/v1/models", "/api/tags", "/api/version"])  # POST where only GET is served
    data = json.dumps(
        body
    ).encode()  # NaN, Infinity and "\ud800" escapes included, as Python's json reads them
    if rng.random() < 0.12:
        data = mutate_bytes(rng, data)
    return "POST", path, data, headers


def check_envelope(path: str, status: int, body: Any) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, (path, status, body)
    if path.startswith("/v1/") or path == "/v1":
        err = body["error"]
        assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, (path, body)
        assert isinstance(err["message"], str) and err["message"]
    else:
        assert isinstance(body["error"], str) and body["error"], (path, body)


def check_stream(path: str, text: str) -> str:
    """The outcome of a 200 stream: it must end with exactly one terminal marker."""
    if path.startswith("/v1/"):
        events = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
        assert events and events.count("[DONE]") <= 1, text[-500:]
        if events[-1] == "[DONE]":
            assert all("error" not in json.loads(e) for e in events[:-1]), text[-500:]
            return "stream_done"
        check_envelope(path, 200, json.loads(events[-1]))
        return "stream_error"
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, text
    assert sum(1 for x in lines if x.get("done")) <= 1, text[-500:]
    last = lines[-1]
    if last.get("done") is True:
        return "stream_done"
    check_envelope(path, 200, last)
    return "stream_error"


@pytest.mark.timeout(600)
def test_fuzz_every_endpoint(base_url: str):
    rng = random.Random(SEED)
    statuses: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    # One keep-alive connection: a case that makes the server drop it shows up as a transport error.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT, limits=limits) as client:
        for case in range(CASES):
            method, path, data, headers = make_case(rng)
            where = f"case {case}: {method} {path} headers={headers!r} body={(data or b'')[:300]!r}"
            try:
                with client.stream(method, path, content=data, headers=headers) as r:
                    text = r.read().decode("utf-8", "replace")
                    streamed = r.headers.get("content-type", "").split(";")[0] in (
                        "text/event-stream",
                        "application/x-ndjson",
                    )
            except httpx.HTTPError as err:
                failures.append(f"{where}: {type(err).__name__} {err}")
                outcomes["transport_error"] += 1
                continue
            statuses[r.status_code] += 1
            try:
                assert r.status_code < 500, text[:500]
                if r.status_code >= 400:
                    check_envelope(path.split("?")[0], r.status_code, json.loads(text))
                    outcomes["refused"] += 1
                elif streamed:
                    outcomes[check_stream(path, text)] += 1
                else:
                    outcomes["ok"] += 1
            except (AssertionError, ValueError) as err:
                failures.append(f"{where}: {r.status_code} {err!r}")
    print(f"\nfuzz: {CASES} cases, seed {SEED}")
    print("statuses:", dict(sorted(statuses.items())))
    print("outcomes:", dict(sorted(outcomes.items())))
    assert not failures, f"{len(failures)} failing cases:\n" + "\n".join(failures[:20])
    assert outcomes["stream_error"] == 0, "a stream ended in an error event"
    # Every family of outcome was reached: the fuzzer is not just bouncing off the JSON parser.
    assert statuses[200] > 50 and statuses[400] > 300 and outcomes["stream_done"] > 20

    # Serving goes on: a normal request answered right after, correctly.
    with httpx.Client(base_url=base_url, timeout=60) as client:
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"},
                ],
                "temperature": 0,
                "max_tokens": 30,
            },
        )
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]

"""Validation at the gateway's edge: whatever JSON a client sends, a request model either refuses it
(an error that names the field and renders in the envelope) or accepts something that translates into
a protobuf that serialises. Property-based over every request model, plus the cases from issue 8."""

from __future__ import annotations

import http.client
import json
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi.exceptions import RequestValidationError
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_cli.cluster import free_port
from hyperllama_common.errors import InvalidRequest
from hyperllama_gateway import limits
from hyperllama_gateway.app import create_app
from hyperllama_gateway.deps import parse_engine, parse_priority
from hyperllama_gateway.edge import client_request_id
from hyperllama_gateway.errors import describe_validation_error
from hyperllama_gateway.ollama import protocol as ollama_protocol
from hyperllama_gateway.ollama import service as ollama
from hyperllama_gateway.openai import protocol as openai_protocol
from hyperllama_gateway.openai import service as openai
from hyperllama_gateway.settings import GatewaySettings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

# --- strategies ------------------------------------------------------------------------------------

text = st.text(max_size=12)
# Text with anything a JSON string can hold, lone surrogates included ("\ud800" escapes).
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=12)
edge_ints = st.sampled_from(
    [0, 1, -1, -2, 2, 16, 40, limits.INT32_MAX, limits.INT32_MAX + 1, limits.INT32_MIN - 1,
     limits.INT64_MAX, limits.INT64_MAX + 1, limits.INT64_MIN, limits.INT64_MIN - 1, 10**30]
)  # fmt: skip
edge_floats = st.sampled_from([0.0, 0.5, 1.0, 2.0, -0.0, 1e39, -1e39, 1e300, math.nan, math.inf, -math.inf])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | edge_ints
    | st.floats()
    | edge_floats
    | text
    | any_text
    | st.sampled_from(["user", "system", "assistant", "json", "text", "m:1", "END"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text | any_text, inner, max_size=4),
    max_leaves=12,
)
junk = json_values | edge_ints | edge_floats


def mostly(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``plausible`` five times in six, any JSON value otherwise (one_of would weigh its flattened,
    deduplicated branches evenly)."""
    return st.integers(0, 5).flatmap(lambda i: junk if i == 0 else plausible)


messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer", "wizard"])}, optional={
        "content": mostly(text), "name": text, "images": junk,
    }),
    max_size=3,
)  # fmt: skip
options = st.fixed_dictionaries({}, optional={
    "num_ctx": mostly(st.integers(1, 1 << 16)), "num_predict": mostly(st.integers(-2, 64)),
    "temperature": mostly(st.floats(0, 2)), "top_k": mostly(st.integers(0, 100)),
    "top_p": mostly(st.floats(0, 1)), "seed": mostly(st.integers()),
    "stop": mostly(text | st.lists(text, max_size=20)), "repeat_penalty": mostly(st.floats(0.5, 2)),
    "presence_penalty": mostly(st.floats(-2, 2)),
})  # fmt: skip
schemas = st.dictionaries(
    st.sampled_from(["type", "enum", "properties", "x"]) | any_text, json_values, max_size=3
)
prompts = text | st.lists(text, max_size=3)


def body(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A body with mostly-plausible fields, any of which may be any JSON value instead."""
    maybe_any: Callable[[Any], Any] = lambda s: mostly(s)  # noqa: E731
    return st.fixed_dictionaries(
        {k: maybe_any(v) for k, v in required.items()},
        optional={**{k: maybe_any(v) for k, v in optional.items()}, "extra": json_values},
    )


model_names = st.sampled_from(["m:1", "smollm2:135m"]) | text
unit = st.floats(0, 1)
sampling = {
    "temperature": st.floats(0, 2), "top_p": unit, "min_p": unit, "top_k": st.integers(0, 100),
    "seed": st.integers(), "max_tokens": st.integers(1, 64), "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2), "repetition_penalty": st.floats(0.5, 2), "n": st.just(1),
    "logprobs": st.just(False),
}  # fmt: skip
stops = text | st.lists(text, max_size=20)


def _oai_chat(b: openai_protocol.ChatCompletionRequest) -> Any:
    return openai.chat_request(b, "rid")


def _oai_completion(b: openai_protocol.CompletionRequest) -> Any:
    return openai.completion_requests(b, "rid")[0]


def _oai_embedding(b: openai_protocol.EmbeddingRequest) -> Any:
    return openai.embedding_request(b, "rid")


def _oll_generate(b: ollama_protocol.GenerateRequest) -> Any:
    return ollama.generate_request(b, "rid")


def _oll_chat(b: ollama_protocol.ChatRequest) -> Any:
    return ollama.chat_request(b, "rid")


def _oll_embed(b: ollama_protocol.EmbedRequest) -> Any:
    return ollama.embed_request(b.model, b.input, b.truncate, "rid")


def _oll_embeddings(b: ollama_protocol.EmbeddingsRequest) -> Any:
    return ollama.embed_request(b.model, b.prompt, True, "rid")


CASES: list[tuple[type[BaseModel], Callable[[Any], Any], st.SearchStrategy[dict[str, Any]]]] = [
    (
        openai_protocol.ChatCompletionRequest,
        _oai_chat,
        body(
            {"model": model_names, "messages": messages},
            {
                **sampling,
                "stop": stops,
                "stream": st.booleans(),
                "max_completion_tokens": edge_ints,
                "response_format": st.fixed_dictionaries(
                    {"type": st.sampled_from(["json_schema", "json_object"])},
                    optional={
                        "json_schema": st.fixed_dictionaries({"schema": schemas}, optional={"name": text})
                    },
                ),
            },
        ),
    ),  # fmt: skip
    (
        openai_protocol.CompletionRequest,
        _oai_completion,
        body(
            {"model": model_names, "prompt": prompts},
            {**sampling, "stop": stops, "echo": st.booleans()},
        ),
    ),  # fmt: skip
    (
        openai_protocol.EmbeddingRequest,
        _oai_embedding,
        body(
            {"model": model_names, "input": prompts},
            {"encoding_format": st.sampled_from(["float", "base64"])},
        ),
    ),  # fmt: skip
    (
        ollama_protocol.GenerateRequest,
        _oll_generate,
        body(
            {"model": model_names},
            {
                "prompt": any_text,
                "system": any_text,
                "raw": st.booleans(),
                "options": options,
                "format": st.sampled_from(["json", ""]) | schemas,
                "images": json_values,
            },
        ),
    ),  # fmt: skip
    (
        ollama_protocol.ChatRequest,
        _oll_chat,
        body(
            {"model": model_names, "messages": messages},
            {"options": options, "format": st.sampled_from(["json", ""]) | schemas},
        ),
    ),  # fmt: skip
    (
        ollama_protocol.EmbedRequest,
        _oll_embed,
        body(
            {"model": model_names, "input": prompts},
            {"truncate": st.booleans(), "options": options},
        ),
    ),  # fmt: skip
    (
        ollama_protocol.EmbeddingsRequest,
        _oll_embeddings,
        body({"model": model_names, "prompt": text}, {"options": options}),
    ),
]


def renders(message: str, param: str | None) -> None:
    """What goes into an error envelope must be encodable as the JSON response is."""
    json.dumps({"error": {"message": message, "param": param}}, ensure_ascii=False).encode("utf-8")
    assert message


@pytest.mark.parametrize(("model", "translate", "bodies"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_any_body_is_refused_cleanly_or_serialises(model, translate, bodies):
    # No example database: nothing is written into the working tree, and each run is the same.
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(bodies)
    def check(data: dict[str, Any]) -> None:
        try:
            parsed = model.model_validate(data)
        except ValidationError as err:
            renders(*describe_validation_error(RequestValidationError(err.errors())))
            return
        try:
            request = translate(parsed)
        except InvalidRequest as err:
            renders(err.message, err.param)
            return
        if isinstance(request, worker_pb2.GenerateRequest):
            request = scheduler_pb2.AcquireRequest(request=request, priority=parse_priority("5"))
        assert request.SerializeToString()

    check()


# --- the cases from issue 8, one by one ---------------------------------------------------------------


def refusal(model: type[BaseModel], data: dict[str, Any]) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    message, param = describe_validation_error(RequestValidationError(err.value.errors()))
    renders(message, param)
    return message, param


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", 1 << 31),
        ("seed", 1 << 63),
        ("seed", -(1 << 63) - 1),
        ("temperature", math.nan),
        ("top_p", math.inf),
        ("max_tokens", 1 << 31),
    ],
)
def test_openai_numbers_out_of_range_name_the_field(field: str, value: Any):
    message, param = refusal(openai_protocol.ChatCompletionRequest, {**CHAT, field: value})
    assert param == field and field in message


def test_openai_numbers_at_the_edges_serialise():
    body = openai_protocol.ChatCompletionRequest.model_validate(
        {**CHAT, "top_k": limits.INT32_MAX, "seed": limits.INT64_MIN}
    )
    assert openai.chat_request(body, "r").SerializeToString()
    body = openai_protocol.ChatCompletionRequest.model_validate({**CHAT, "seed": limits.INT64_MAX})
    assert openai.chat_request(body, "r").sampling.seed == limits.INT64_MAX


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"top_k": 1 << 31}, "options.top_k"),
        ({"num_ctx": 1 << 31}, "options.num_ctx"),
        ({"num_ctx": 0}, "options.num_ctx"),
        ({"seed": 1 << 63}, "options.seed"),
        ({"temperature": 1e39}, "options.temperature"),
        ({"presence_penalty": -math.inf}, "options.presence_penalty"),
        ({"stop": ["x"] * 17}, "options.stop"),
        ({"stop": "x" * (limits.MAX_STOP_CHARS + 1)}, "options.stop"),
    ],
)
def test_ollama_options_out_of_range_name_the_field(options: dict[str, Any], field: str):
    message, _ = refusal(ollama_protocol.ChatRequest, {**CHAT, "options": options})
    assert message.startswith(field), message


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (openai_protocol.ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]},
         "messages.0.content"),
        (openai_protocol.ChatCompletionRequest, {**CHAT, "messages": [{"role": "\udfff", "content": "a"}]},
         "messages.0.role"),
        (openai_protocol.ChatCompletionRequest, {**CHAT, "stop": ["ok", "\ud800"]}, "stop.1"),
        (openai_protocol.ChatCompletionRequest, {**CHAT, "model": "m\ud800"}, "model"),
        (openai_protocol.CompletionRequest, {"model": "m", "prompt": "\ud800"}, "prompt"),
        (openai_protocol.EmbeddingRequest, {"model": "m", "input": ["a", "\ud800"]}, "input.1"),
        (ollama_protocol.GenerateRequest, {"model": "m", "prompt": "hi", "system": "\ud800"}, "system"),
        (ollama_protocol.GenerateRequest, {"model": "m", "format": {"enum": ["\ud800"]}}, "format.enum.0"),
        (ollama_protocol.ChatRequest, {**CHAT, "options": {"stop": "\ud800"}}, "options.stop"),
        (ollama_protocol.EmbedRequest, {"model": "m", "input": "\udc00x"}, "input"),
        (ollama_protocol.EmbeddingsRequest, {"model": "m", "prompt": "\udc00"}, "prompt"),
        (ollama_protocol.ChatRequest, {**CHAT, "tools": [{"\ud800": 1}]}, "tools.0"),
    ],
)  # fmt: skip
def test_lone_surrogates_are_refused_naming_the_field(
    model: type[BaseModel], data: dict[str, Any], field: str
):
    message, param = refusal(model, data)
    assert param == field and message.startswith(field) and "surrogate" in message


def test_bounds_are_clear_refusals():
    long_name = "m" * (limits.MAX_MODEL_NAME_CHARS + 1)
    assert refusal(openai_protocol.ChatCompletionRequest, {**CHAT, "model": long_name})[1] == "model"
    assert refusal(ollama_protocol.ShowRequest, {"model": long_name})[1] == "model"
    many = [{"role": "user", "content": "x"}] * (limits.MAX_MESSAGES + 1)
    assert refusal(ollama_protocol.ChatRequest, {"model": "m", "messages": many})[1] == "messages"
    assert refusal(openai_protocol.ChatCompletionRequest, {**CHAT, "stop": ["x"] * 17})[1] == "stop"
    big_schema = {"enum": ["x" * 100] * (limits.MAX_SCHEMA_CHARS // 100)}
    assert refusal(ollama_protocol.GenerateRequest, {"model": "m", "format": big_schema})[1] == "format"
    spec = {"type": "json_schema", "json_schema": {"name": "x", "schema": big_schema}}
    message, param = refusal(openai_protocol.ChatCompletionRequest, {**CHAT, "response_format": spec})
    assert param == "response_format" and "schema" in message
    inputs = ["x"] * (limits.MAX_EMBED_INPUTS + 1)
    assert refusal(openai_protocol.EmbeddingRequest, {"model": "m", "input": inputs})[1] == "input"
    assert refusal(ollama_protocol.EmbedRequest, {"model": "m", "input": inputs})[1] == "input"
    long_input = "x" * (limits.MAX_EMBED_INPUT_CHARS + 1)
    assert refusal(ollama_protocol.EmbedRequest, {"model": "m", "input": long_input})[1] == "input"
    deep: Any = "x"
    for _ in range(limits.MAX_JSON_DEPTH + 1):
        deep = [deep]
    message, _ = refusal(ollama_protocol.ChatRequest, {**CHAT, "tools": deep})
    assert "nested deeper" in message


def test_echoed_values_are_cut_in_error_messages():
    message, _ = refusal(
        openai_protocol.ChatCompletionRequest, {**CHAT, "response_format": {"type": "x" * 5000}}
    )
    assert len(message) < 400
    body = openai_protocol.ChatCompletionRequest.model_validate(
        {**CHAT, "messages": [{"role": "r" * 10_000, "content": "x"}]}
    )
    with pytest.raises(InvalidRequest) as err:
        openai.chat_request(body, "r")
    assert len(err.value.message) < 300 and err.value.param == "messages.0.role"


@pytest.mark.parametrize(
    ("raw", "priority"),
    [(None, 0), ("3", 3), (" 7 ", 7), ("+2", 2), ("-1", 0), ("12", 9), ("99999999999999999999", 9),
     ("-99999999999999999999", 0), ("1" * 10_000, 9), ("007", 7)],
)  # fmt: skip
def test_priority_header_is_parsed_and_clamped(raw: str | None, priority: int):
    assert parse_priority(raw) == priority


@pytest.mark.parametrize("raw", ["--1", "", "1.5", "high", "\u0663", "\u00b2", "1e3", "0x5", "+-1"])
def test_bad_priority_header_is_a_refusal_naming_it(raw: str):
    with pytest.raises(InvalidRequest) as err:
        parse_priority(raw)
    assert err.value.param == "X-HyperLlama-Priority" and "X-HyperLlama-Priority" in err.value.message


def test_engine_header():
    assert parse_engine(None) == "" and parse_engine(" LlamaCpp ") == "llamacpp"
    for raw in ("x" * 100, "llama cpp", "llamacpp\u00e9"):
        with pytest.raises(InvalidRequest):
            parse_engine(raw)


def test_client_request_id_is_bounded_printable_ascii():
    assert client_request_id(None) == "" and client_request_id(b"abc-123") == "abc-123"
    assert client_request_id(b"a\x00b\xffc\x7f") == "abc"
    assert client_request_id(b"x" * 1000) == "x" * limits.MAX_CLIENT_REQUEST_ID_CHARS


# --- the catch-all -----------------------------------------------------------------------------------


@pytest.fixture
def gateway_with_a_failing_route() -> Iterator[int]:
    """The real app under uvicorn, plus routes that raise what no handler expects."""
    app = create_app(GatewaySettings(scheduler_address="127.0.0.1:1"))

    async def fail() -> None:
        raise RuntimeError("unexpected")

    app.add_api_route("/v1/fail", fail, methods=["POST"])
    app.add_api_route("/api/fail", fail, methods=["POST"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        threading.Event().wait(0.01)
    yield port
    server.should_exit = True
    thread.join(10)


def test_unexpected_exception_is_a_500_in_the_envelope_and_the_connection_survives(
    gateway_with_a_failing_route: int, caplog: pytest.LogCaptureFixture
):
    conn = http.client.HTTPConnection("127.0.0.1", gateway_with_a_failing_route, timeout=10)
    conn.request("POST", "/v1/fail", body=b"{}", headers={"X-Request-Id": "corr-1"})
    r = conn.getresponse()
    body = json.loads(r.read())
    assert r.status == 500 and r.getheader("x-request-id") == "corr-1"
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "server_error"
    sock = conn.sock
    assert sock is not None
    conn.request("POST", "/api/fail", body=b"{}")
    r = conn.getresponse()
    body = json.loads(r.read())
    assert r.status == 500 and set(body) == {"error"} and isinstance(body["error"], str)
    assert r.getheader("x-request-id") is None
    conn.request("GET", "/api/version")
    r = conn.getresponse()
    assert r.status == 200 and "version" in json.loads(r.read())
    assert conn.sock is sock, "the keep-alive connection was closed"
    conn.close()
    assert any(
        rec.exc_info and "unexpected error serving POST /v1/fail" in rec.getMessage()
        for rec in caplog.records
    )

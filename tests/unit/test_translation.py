"""Translation of OpenAI and Ollama requests into the one internal request."""

import json

import pytest
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import InvalidRequest
from hyperllama_gateway.ollama import protocol as ollama_protocol
from hyperllama_gateway.ollama import service as ollama
from hyperllama_gateway.openai import protocol as openai_protocol
from hyperllama_gateway.openai import service as openai


def test_openai_chat_parameters_are_carried():
    body = openai_protocol.ChatCompletionRequest.model_validate(
        {
            "model": "m:1",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "temperature": 0,
            "top_p": 0.5,
            "seed": 7,
            "stop": "END",
            "max_completion_tokens": 12,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
        }
    )
    req = openai.chat_request(body, "rid")
    assert req.request_id == "rid"
    assert [(m.role, m.content) for m in req.chat.messages] == [("system", "be brief"), ("user", "hi there")]
    s = req.sampling
    assert (s.temperature, s.top_p, s.seed, list(s.stop), s.max_tokens) == (0, 0.5, 7, ["END"], 12)
    assert s.presence_penalty == pytest.approx(0.1) and s.frequency_penalty == pytest.approx(0.2)
    assert not s.HasField("top_k")
    assert req.response_format.kind == worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
    assert json.loads(req.response_format.json_schema) == {"type": "object"}


def test_openai_unknown_role_is_rejected_with_param():
    body = openai_protocol.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}
    )
    with pytest.raises(InvalidRequest) as err:
        openai.chat_request(body, "rid")
    assert err.value.param == "messages.0.role"


def test_openai_image_parts_are_rejected():
    body = openai_protocol.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    )
    with pytest.raises(InvalidRequest, match="image_url"):
        openai.chat_request(body, "rid")


@pytest.mark.parametrize(
    "bad", [{"max_tokens": -1}, {"max_tokens": 10**9}, {"n": 9}, {"n": 0}, {"temperature": 5}]
)
def test_openai_out_of_range_parameters_fail_validation(bad):
    with pytest.raises(ValueError):
        openai_protocol.ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], **bad}
        )


def test_legacy_completions_default_to_16_tokens():
    body = openai_protocol.CompletionRequest.model_validate({"model": "m", "prompt": "Once"})
    req = openai.completion_requests(body, "rid")[0]
    assert req.prompt == "Once" and req.sampling.max_tokens == 16


def test_ollama_options_are_carried():
    body = ollama_protocol.ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "format": "json",
            "options": {
                "num_ctx": 512,
                "num_predict": 9,
                "temperature": 0.1,
                "top_k": 3,
                "top_p": 0.7,
                "seed": 42,
                "stop": ["a", "b"],
                "repeat_penalty": 1.2,
            },
        }
    )
    req = ollama.chat_request(body, "rid")
    s = req.sampling
    assert req.num_ctx == 512
    assert (s.max_tokens, s.top_k, s.seed, list(s.stop)) == (9, 3, 42, ["a", "b"])
    assert s.temperature == pytest.approx(0.1) and s.repeat_penalty == pytest.approx(1.2)
    assert req.response_format.kind == worker_pb2.ResponseFormat.KIND_JSON_OBJECT


def test_ollama_unlimited_num_predict_sets_no_limit():
    body = ollama_protocol.GenerateRequest.model_validate(
        {"model": "m", "prompt": "x", "options": {"num_predict": -1}}
    )
    assert not ollama.generate_request(body, "rid").sampling.HasField("max_tokens")


def test_ollama_generate_system_uses_template_and_raw_skips_it():
    templated = ollama.generate_request(
        ollama_protocol.GenerateRequest.model_validate({"model": "m", "prompt": "hi", "system": "sys"}), "r"
    )
    assert [(m.role, m.content) for m in templated.chat.messages] == [("system", "sys"), ("user", "hi")]
    raw = ollama.generate_request(
        ollama_protocol.GenerateRequest.model_validate({"model": "m", "prompt": "<s>hi", "raw": True}), "r"
    )
    assert raw.WhichOneof("input") == "prompt" and raw.prompt == "<s>hi"


def test_ollama_json_schema_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = ollama.generate_request(
        ollama_protocol.GenerateRequest.model_validate({"model": "m", "prompt": "x", "format": schema}), "r"
    )
    assert req.response_format.kind == worker_pb2.ResponseFormat.KIND_JSON_SCHEMA
    assert json.loads(req.response_format.json_schema) == schema


def test_ollama_unknown_role_names_the_field_and_cuts_what_it_echoes():
    body = ollama_protocol.ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "w" * 5000, "content": "b"}]}
    )
    with pytest.raises(InvalidRequest) as err:
        ollama.chat_request(body, "rid")
    assert err.value.param == "messages.1.role" and len(err.value.message) < 300


def test_ollama_embed_request_takes_one_input_or_many():
    assert list(ollama.embed_request("m", "a", True, "rid").inputs) == ["a"]
    req = ollama.embed_request("m", ["a", "b"], False, "rid")
    assert (list(req.inputs), req.truncate, req.request_id) == (["a", "b"], False, "rid")
    with pytest.raises(InvalidRequest):
        ollama.embed_request("m", [], True, "rid")

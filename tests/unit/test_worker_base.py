"""Engine-server workers: device pools, request translation and engine error mapping."""

from __future__ import annotations

import json
import os

import pytest
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import BackendFailed, ContextLengthExceeded, InvalidRequest
from hyperllama_worker_base.adapter import SAMPLING_DEFAULTS
from hyperllama_worker_base.openai_client import error_from_status
from hyperllama_worker_base.pool import DevicePool, parse_ids
from hyperllama_worker_base.service import request_body, with_model_defaults
from support.engine_adapter import StubAdapter


def test_parse_ids():
    assert parse_ids("0-3,6") == [0, 1, 2, 3, 6]
    assert parse_ids("1, 1,2") == [1, 2]


def test_cpu_pool_hides_gpus_and_pins_cores():
    pool = DevicePool.from_settings("cpu", "0", "3", "")
    assert pool.cpus == [0] and pool.gpus == [] and pool.name == "cpu-0"
    assert pool.child_env() == {"CUDA_VISIBLE_DEVICES": ""}


def test_gpu_pool_selects_devices_by_the_same_path():
    pool = DevicePool.from_settings("gpu", "", "1,2", "")
    assert pool.gpus == [1, 2] and pool.name == "gpu-1,2"
    assert pool.child_env() == {"CUDA_VISIBLE_DEVICES": "1,2"}
    assert pool.cpus == sorted(os.sched_getaffinity(0))


def test_unknown_device_is_refused():
    with pytest.raises(InvalidRequest):
        DevicePool.from_settings("tpu", "", "", "")


def test_chat_request_body_with_defaults_stops_and_schema():
    req = worker_pb2.GenerateRequest(
        model="m",
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="user", content="hi")]),
        sampling=worker_pb2.SamplingParams(max_tokens=5, seed=7, stop=["\n\n"]),
        response_format=worker_pb2.ResponseFormat(
            kind=worker_pb2.ResponseFormat.KIND_JSON_SCHEMA, json_schema='{"type": "object"}'
        ),
    )
    path, body = request_body(req, StubAdapter("generate"), "/models/m")
    assert path == "/v1/chat/completions"
    assert body["model"] == "/models/m"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["temperature"] == SAMPLING_DEFAULTS["temperature"]
    assert (body["max_tokens"], body["seed"], body["stop"]) == (5, 7, ["\n\n"])
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert body["stream_options"] == {"include_usage": True}


def test_raw_prompt_goes_to_completions_and_bad_role_is_refused():
    path, body = request_body(worker_pb2.GenerateRequest(prompt="Once"), StubAdapter("generate"), "m")
    assert path == "/v1/completions" and body["prompt"] == "Once"
    bad = worker_pb2.GenerateRequest(
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="wizard", content="x")])
    )
    with pytest.raises(InvalidRequest, match="role"):
        request_body(bad, StubAdapter("generate"), "m")


def test_engine_errors_map_to_the_hierarchy():
    too_long = json.dumps({"error": {"message": "This model's maximum context length is 8192 tokens"}})
    assert isinstance(error_from_status(400, too_long.encode()), ContextLengthExceeded)
    assert isinstance(error_from_status(400, b'{"detail": "bad top_p"}'), InvalidRequest)
    failed = error_from_status(500, b"boom")
    assert isinstance(failed, BackendFailed) and "500" in failed.message


def test_a_store_model_s_system_and_parameters_are_defaults_under_the_request_s_own() -> None:
    req = worker_pb2.GenerateRequest(
        model="m",
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="user", content="hi")]),
        sampling=worker_pb2.SamplingParams(temperature=0.2),
    )
    out = with_model_defaults(
        req, "Be brief.", {"temperature": 0.9, "top_k": 7, "num_predict": 12, "stop": ["END"]}
    )
    assert [(m.role, m.content) for m in out.chat.messages] == [("system", "Be brief."), ("user", "hi")]
    assert out.sampling.temperature == pytest.approx(0.2)  # the request's own value wins
    assert (out.sampling.top_k, out.sampling.max_tokens, list(out.sampling.stop)) == (7, 12, ["END"])
    assert req.sampling.top_k == 0 and len(req.chat.messages) == 1  # the caller's request is untouched
    # A chat that has a system message keeps it; a prompt is left as it is.
    own = worker_pb2.GenerateRequest(
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="system", content="Mine.")])
    )
    assert [m.content for m in with_model_defaults(own, "Be brief.", {}).chat.messages] == ["Mine."]
    assert with_model_defaults(worker_pb2.GenerateRequest(prompt="x"), "Be brief.", {}).prompt == "x"

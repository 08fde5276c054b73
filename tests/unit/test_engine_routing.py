"""Which workers a request may go to: capabilities it needs and the X-HyperLlama-Engine pin."""

from __future__ import annotations

from hyperllama.worker.v1 import worker_pb2
from hyperllama_scheduler import routing

LLAMACPP = worker_pb2.WorkerInfo(
    engine="llamacpp", capabilities=["generate", "chat", "embed", "json_object", "json_schema"]
)
VLLM = worker_pb2.WorkerInfo(engine="vllm", capabilities=["generate", "chat", "json_object", "json_schema"])
PLAIN = worker_pb2.WorkerInfo(engine="max", capabilities=["generate", "chat"])


def _chat(kind: int = worker_pb2.ResponseFormat.KIND_UNSPECIFIED) -> worker_pb2.GenerateRequest:
    req = worker_pb2.GenerateRequest(chat=worker_pb2.ChatConversation(messages=[]))
    req.chat.SetInParent()
    req.response_format.kind = kind
    return req


def test_chat_needs_generate_and_chat_any_engine():
    needs = routing.for_generate(_chat())
    assert needs.capabilities == ("generate", "chat")
    assert all(needs.accepts(w) for w in (LLAMACPP, VLLM, PLAIN))


def test_raw_prompt_needs_only_generate():
    assert routing.for_generate(worker_pb2.GenerateRequest(prompt="hi")).capabilities == ("generate",)


def test_json_schema_excludes_workers_without_it_and_names_it():
    needs = routing.for_generate(_chat(worker_pb2.ResponseFormat.KIND_JSON_SCHEMA))
    assert [w.engine for w in (LLAMACPP, VLLM, PLAIN) if needs.accepts(w)] == ["llamacpp", "vllm"]
    assert needs.missing([PLAIN]) == "json_schema"


def test_engine_pin_filters_on_the_engine_field():
    needs = routing.for_generate(_chat(), engine="vllm")
    assert [w.engine for w in (LLAMACPP, VLLM, PLAIN) if needs.accepts(w)] == ["vllm"]


def test_embed_needs_embed():
    needs = routing.for_embed("vllm")
    assert not needs.accepts(VLLM)
    assert routing.for_embed().accepts(LLAMACPP)
    assert needs.missing([VLLM]) == "embed"


def test_logprobs_logit_bias_and_token_prompts_need_workers_that_offer_them() -> None:
    request = worker_pb2.GenerateRequest(tokens=worker_pb2.TokenPrompt(ids=[1, 2, 3]))
    request.sampling.logprobs = True
    request.sampling.logit_bias[5] = -100
    needs = routing.for_generate(request)
    assert needs.capabilities == ("generate", "token_prompt", "logprobs", "logit_bias")
    max_like = worker_pb2.WorkerInfo(capabilities=["generate", "chat", "token_prompt", "logprobs"])
    assert not needs.accepts(max_like) and needs.missing([max_like]) == "logit_bias"


def test_token_prompts_have_prefixes_of_their_own() -> None:
    from hyperllama_scheduler.placement import prefix_hashes

    long = list(range(1000, 1600))
    same = prefix_hashes(worker_pb2.GenerateRequest(tokens=worker_pb2.TokenPrompt(ids=long)))
    again = prefix_hashes(worker_pb2.GenerateRequest(tokens=worker_pb2.TokenPrompt(ids=[*long, 7, 8])))
    other = prefix_hashes(worker_pb2.GenerateRequest(tokens=worker_pb2.TokenPrompt(ids=long[::-1])))
    assert same and again[: len(same)] == same and not set(same) & set(other)

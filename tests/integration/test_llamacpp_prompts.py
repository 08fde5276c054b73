"""What the llama.cpp worker's model makes of a request's chat before decoding: tools through a
template that renders them or in the generic format, and an earlier exchange's context."""

from __future__ import annotations

import json

import pytest
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import InvalidRequest
from hyperllama_worker_llamacpp.model import LoadedModel
from hyperllama_worker_llamacpp.registry import ModelSpec, _bundled_smollm2
from support.models import GEMMA_GGUF

# A TEMPLATE that renders tools, as Ollama's library templates do (Qwen 2.5's shape, shortened).
TOOLS_TEMPLATE = """{{- if .Tools }}<|im_start|>system
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools><|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}</tool_call>{{ end }}<|im_end|>
{{ else if eq .Role "tool" }}<|im_start|>user
<tool_response name="{{ .ToolName }}">{{ .Content }}</tool_response><|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""  # noqa: E501

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def conversation() -> worker_pb2.ChatConversation:
    return worker_pb2.ChatConversation(
        messages=[
            worker_pb2.ChatMessage(role="user", content="Weather in Oslo?"),
            worker_pb2.ChatMessage(
                role="assistant",
                tool_calls=[
                    worker_pb2.ToolCall(id="call_1", name="get_weather", arguments_json='{"city": "Oslo"}')
                ],
            ),
            worker_pb2.ChatMessage(
                role="tool", content="-3C", tool_call_id="call_1", tool_name="get_weather"
            ),
        ],
        tools=[
            worker_pb2.Tool(name="get_weather", description="Weather", parameters_json=json.dumps(PARAMS))
        ],
        tools_prompt="GENERIC TOOLS TEXT",
    )


@pytest.fixture(scope="module")
def plain_model() -> LoadedModel:
    return LoadedModel(ModelSpec("smollm2:135m", _bundled_smollm2()), n_ctx=512, threads=1)


@pytest.fixture(scope="module")
def tools_model() -> LoadedModel:
    spec = ModelSpec("tooly:latest", _bundled_smollm2(), go_template=TOOLS_TEMPLATE)
    return LoadedModel(spec, n_ctx=512, threads=1)


def test_a_template_without_tools_gets_the_generic_format(plain_model: LoadedModel) -> None:
    assert not plain_model.knows_tools
    prompt = plain_model.render_chat(conversation())
    assert prompt.startswith("<|im_start|>system\nGENERIC TOOLS TEXT<|im_end|>\n")
    assert '<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Oslo"}}<|im_end|>' in prompt
    assert "<|im_start|>tool\n-3C<|im_end|>" in prompt


def test_a_template_with_tools_renders_them_and_the_calls(tools_model: LoadedModel) -> None:
    assert tools_model.knows_tools
    prompt = tools_model.render_chat(conversation())
    function = {"name": "get_weather", "description": "Weather", "parameters": {"type": "object",
                "required": ["city"], "properties": {"city": {"type": "string"}}}}  # fmt: skip
    assert prompt == (
        "<|im_start|>system\n<tools>\n"
        f'{{"type": "function", "function": {json.dumps(function, separators=(",", ":"))}}}\n'
        "</tools><|im_end|>\n"
        "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city":"Oslo"}}</tool_call><|im_end|>\n'  # noqa: E501
        '<|im_start|>user\n<tool_response name="get_weather">-3C</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    assert "GENERIC TOOLS TEXT" not in prompt


def test_a_context_goes_before_the_prompt_as_it_is(plain_model: LoadedModel) -> None:
    chat = worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="user", content="And then?")])
    alone = plain_model.prompt_tokens(worker_pb2.GenerateRequest(chat=chat))
    context = [1, 2, 3, 4000]
    after = plain_model.prompt_tokens(worker_pb2.GenerateRequest(chat=chat, context=context))
    # The model adds no BOS of its own, so the prompt's tokens follow the context unchanged.
    assert after == context + alone
    with pytest.raises(InvalidRequest) as err:
        plain_model.prompt_tokens(worker_pb2.GenerateRequest(chat=chat, context=[plain_model.n_vocab]))
    assert err.value.param == "context"


def test_after_a_context_a_model_that_adds_bos_adds_no_second_one() -> None:
    model = LoadedModel(ModelSpec("gemma3:270m", GEMMA_GGUF), n_ctx=512, threads=1)
    request = worker_pb2.GenerateRequest(prompt="The sky is")
    alone = model.prompt_tokens(request)
    bos = int(model.llm.token_bos())
    assert alone[0] == bos
    context = alone + [model.llm.tokenize(b" blue", add_bos=False)[0]]
    request.context.extend(context)
    assert model.prompt_tokens(request) == context + alone[1:]

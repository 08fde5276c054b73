"""What the vLLM and MAX workers send their engines: API sampling defaults under the model's own values,
an Ollama context before the prompt (and the exchange's ids back), and a chat's tools through the
model's template or in the generic format."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import InvalidRequest
from hyperllama_worker_base.adapter import SAMPLING_DEFAULTS
from hyperllama_worker_base.hf_model import chat_template, describe_hf_model, generation_defaults
from hyperllama_worker_base.pool import DevicePool
from hyperllama_worker_base.service import (
    generated_ids,
    prompt_ids,
    renders_prompt,
    request_body,
    with_model_defaults,
)
from support.engine_adapter import StubAdapter

REPO = Path(__file__).resolve().parents[2]
TOOLS_TEMPLATE = (
    "{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}"
    "{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# What an engine speaking only standard OpenAI claims, with context.
PLAIN = ("generate", "chat", "token_prompt", "context")
PLAIN_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, Any]]:
    """The real vLLM and MAX adapters on a CPU pool (their packages live in the engines' environments,
    but the adapters import only the worker base)."""
    paths = [str(REPO / "services" / f"worker-{e}" / "src") for e in ("vllm", "max")]
    sys.path[:0] = paths
    try:
        pool = DevicePool.from_settings("cpu", "", "", "")
        v = importlib.import_module("hyperllama_worker_vllm.engine")
        vs = importlib.import_module("hyperllama_worker_vllm.settings")
        m = importlib.import_module("hyperllama_worker_max.engine")
        ms = importlib.import_module("hyperllama_worker_max.settings")
        yield {
            "vllm": v.VllmEngine(vs.VllmWorkerSettings(), pool, Path("/m")),
            "max": m.MaxEngine(ms.MaxWorkerSettings(), pool, Path("/m")),
        }
    finally:
        for p in paths:
            sys.path.remove(p)


class FakeTokenizer:
    """Words to ids by a table; a chat is rendered as "<role>: text" lines, with a BOS (1) in front."""

    BOS, EOS = 1, 2

    def __init__(self) -> None:
        self.words: dict[str, int] = {}
        self.rendered: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None, bool]] = []

    def _id(self, word: str) -> int:
        return self.words.setdefault(word, 10 + len(self.words))

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, bos: bool
    ) -> list[int]:
        self.rendered.append((messages, tools, bos))
        text = " ".join(f"{m['role']}: {m['content']}" for m in messages) + " assistant:"
        return ([self.BOS] if bos else []) + self.encode(text, special=False)

    def encode(self, text: str, special: bool) -> list[int]:
        return ([self.BOS] if special else []) + [self._id(w) for w in text.split(" ") if w]

    def decode(self, ids: list[int]) -> str:
        names = {v: k for k, v in self.words.items()}
        return " ".join(names[i] for i in ids if i not in (self.BOS, self.EOS))

    def special_ids(self) -> frozenset[int]:
        return frozenset({self.BOS, self.EOS})


def chat(*messages: tuple[str, str], **fields: Any) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        model="m",
        chat=worker_pb2.ChatConversation(
            messages=[worker_pb2.ChatMessage(role=r, content=c) for r, c in messages]
        ),
        **fields,
    )


OPENAI_DEFAULTS = worker_pb2.SamplingParams(
    temperature=1, top_p=1, top_k=0, min_p=0, repeat_penalty=1, frequency_penalty=0, presence_penalty=0
)
OLLAMA_DEFAULTS = worker_pb2.SamplingParams(
    temperature=0.8, top_k=40, top_p=0.9, min_p=0, repeat_penalty=1.1, frequency_penalty=0, presence_penalty=0
)


# --- API sampling defaults -------------------------------------------------------------------------


def test_api_defaults_sit_under_the_request_the_store_and_generation_config() -> None:
    req = chat(("user", "hi"), sampling=worker_pb2.SamplingParams(temperature=0.2), defaults=OLLAMA_DEFAULTS)
    out = with_model_defaults(req, "", {"top_k": 7}, {"top_k": 50, "top_p": 0.5, "repeat_penalty": 1.3})
    s = out.sampling
    assert s.temperature == pytest.approx(0.2)  # the request's own
    assert s.top_k == 7  # the store's PARAMETERS over generation_config.json
    assert s.top_p == pytest.approx(0.5) and s.repeat_penalty == pytest.approx(1.3)  # generation_config
    assert s.min_p == 0 and s.HasField("min_p")  # the API's default
    assert s.HasField("frequency_penalty") and not s.HasField("seed") and not s.HasField("max_tokens")


def test_without_any_default_the_engine_s_own_apply() -> None:
    req = chat(("user", "hi"))
    assert with_model_defaults(req, "", {}, {}) is req
    _, body = request_body(req, StubAdapter(*PLAIN), "m")
    assert body["temperature"] == SAMPLING_DEFAULTS["temperature"]
    assert body["top_p"] == SAMPLING_DEFAULTS["top_p"]


@pytest.mark.parametrize("engine", ["vllm", "max"])
def test_openai_defaults_reach_each_engine_as_meant(engines: dict[str, Any], engine: str) -> None:
    adapter = engines[engine]
    req = with_model_defaults(chat(("user", "hi"), defaults=OPENAI_DEFAULTS), "", {}, {})
    _, body = request_body(req, adapter, "m")
    # top_k 0 is "no cut" to both vLLM 0.32 (0 disables) and MAX 26.7 (0 becomes its -1).
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"]) == (1, 1, 0, 0)
    assert body["repetition_penalty"] == 1
    assert body["frequency_penalty"] == 0 and body["presence_penalty"] == 0


@pytest.mark.parametrize("engine", ["vllm", "max"])
def test_ollama_defaults_reach_each_engine(engines: dict[str, Any], engine: str) -> None:
    adapter = engines[engine]
    req = with_model_defaults(chat(("user", "hi"), defaults=OLLAMA_DEFAULTS), "", {"temperature": 0}, {})
    _, body = request_body(req, adapter, "m")
    assert body["temperature"] == 0  # the model's PARAMETERS win over Ollama's 0.8
    assert body["top_k"] == 40 and body["top_p"] == pytest.approx(0.9)
    assert body["repetition_penalty"] == pytest.approx(1.1)


def test_generation_config_and_chat_template_are_read_from_the_model_directory(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.05,
                    "do_sample": True, "max_new_tokens": 9, "eos_token_id": 2})
    )  # fmt: skip
    assert generation_defaults(tmp_path) == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "repeat_penalty": 1.05,
    }
    assert chat_template(tmp_path) == ""
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {"chat_template": [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}]}
        )
    )
    assert chat_template(tmp_path) == "A\nB"
    # transformers reads chat_template.jinja first, as the engines do.
    (tmp_path / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    assert chat_template(tmp_path) == TOOLS_TEMPLATE


def test_the_test_model_s_template_is_described() -> None:
    directory = REPO / ".cache" / "models" / "smollm2-135m-hf"
    if not directory.is_dir():
        pytest.skip("run `make models`")
    assert "<|im_start|>" in describe_hf_model("m", directory, 0).chat_template


# --- Ollama context ---------------------------------------------------------------------------------


def test_a_context_goes_before_the_rendered_chat_without_a_second_bos() -> None:
    tok = FakeTokenizer()
    fresh = prompt_ids(chat(("user", "hello there")), tok, "", 0)
    assert fresh[0] == FakeTokenizer.BOS
    req = chat(("user", "and then?"), context=[1, 11, 12], return_context=True)
    ids = prompt_ids(req, tok, "", 0)
    assert ids[:3] == [1, 11, 12] and FakeTokenizer.BOS not in ids[3:]
    assert tok.rendered[-1][2] is False


def test_a_text_prompt_after_a_context_is_tokenized_without_special_tokens() -> None:
    tok = FakeTokenizer()
    assert prompt_ids(worker_pb2.GenerateRequest(prompt="a b"), tok, "", 0)[0] == FakeTokenizer.BOS
    ids = prompt_ids(worker_pb2.GenerateRequest(prompt="a b", context=[5]), tok, "", 0)
    assert ids == [5, tok.words["a"], tok.words["b"]]
    tokens = worker_pb2.GenerateRequest(tokens=worker_pb2.TokenPrompt(ids=[7, 8]), context=[5])
    assert prompt_ids(tokens, tok, "", 0) == [5, 7, 8]


@pytest.mark.parametrize("context", [[-1], [5, 100]])
def test_context_ids_outside_the_vocabulary_are_refused(context: list[int]) -> None:
    with pytest.raises(InvalidRequest, match="vocabulary") as err:
        prompt_ids(chat(("user", "x"), context=context), FakeTokenizer(), "", 100)
    assert err.value.param == "context"


def test_a_context_needs_an_engine_that_claims_it() -> None:
    no_context = StubAdapter("generate", "chat", "token_prompt")
    with pytest.raises(InvalidRequest, match="context"):
        request_body(chat(("user", "x"), context=[1]), no_context, "m", prompt=[1, 2])
    # Asking for the exchange back is no error there: it stays with the worker.
    asked = chat(("user", "x"), return_context=True)
    assert not renders_prompt(asked, no_context, "")
    path, body = request_body(asked, no_context, "m")
    assert path == "/v1/chat/completions" and "return_token_ids" not in body


def test_rendered_ids_go_to_completions_or_to_max_s_chat_prompt_tokens(
    engines: dict[str, Any],
) -> None:
    req = chat(("user", "x"), context=[3], return_context=True)
    for adapter in (engines["vllm"], engines["max"]):
        assert renders_prompt(req, adapter, "")
    path, body = request_body(req, engines["vllm"], "m", prompt=[3, 4, 5])
    assert path == "/v1/completions" and body["prompt"] == [3, 4, 5] and body["return_token_ids"] is True
    assert "messages" not in body
    path, body = request_body(req, engines["max"], "m", prompt=[3, 4, 5])
    assert path == "/v1/chat/completions" and body["prompt_tokens"] == [3, 4, 5]
    assert body["return_token_ids"] is True and body["messages"] == [{"role": "user", "content": "x"}]
    # Without context the chat is the engine's to render.
    assert not renders_prompt(chat(("user", "x")), engines["vllm"], "")


def test_logprobs_follow_the_endpoint_not_the_input() -> None:
    req = chat(("user", "x"), context=[3], sampling=worker_pb2.SamplingParams(logprobs=True, top_logprobs=2))

    _, body = request_body(req, StubAdapter(*PLAIN, "logprobs"), "m", prompt=[3, 4])
    assert body["logprobs"] == 2 and "top_logprobs" not in body  # completions' integer


def test_generated_ids_are_the_engine_s_less_the_end_of_sequence() -> None:
    tok = FakeTokenizer()
    ids = tok.encode("Paris is nice", special=False)
    assert generated_ids([*ids, FakeTokenizer.EOS], "Paris is nice", tok) == ids
    # A stop string cut the text the engine's last ids still hold: the text as sent, tokenized.
    assert generated_ids(ids, "Paris is", tok) == ids[:2]
    assert generated_ids(None, "Paris", tok) == ids[:1]
    assert generated_ids(None, "", tok) == []


# --- tools ------------------------------------------------------------------------------------------


def tool_chat() -> worker_pb2.GenerateRequest:
    conversation = worker_pb2.ChatConversation(
        messages=[
            worker_pb2.ChatMessage(role="system", content="Be brief."),
            worker_pb2.ChatMessage(role="user", content="Weather in Paris?"),
            worker_pb2.ChatMessage(
                role="assistant",
                tool_calls=[
                    worker_pb2.ToolCall(id="c1", name="get_weather", arguments_json='{"city": "Paris"}')
                ],
            ),
            worker_pb2.ChatMessage(role="tool", content="sunny", tool_call_id="c1", tool_name="get_weather"),
        ],
        tools=[
            worker_pb2.Tool(
                name="get_weather", description="Weather of a city", parameters_json='{"type": "object"}'
            )
        ],
        tools_prompt="You can call get_weather.",
    )
    return worker_pb2.GenerateRequest(model="m", chat=conversation)


@pytest.mark.parametrize("engine", ["vllm", "max"])
def test_tools_in_the_generic_format_when_the_template_knows_none(
    engines: dict[str, Any], engine: str
) -> None:
    adapter = engines[engine]
    req = tool_chat()
    assert not renders_prompt(req, adapter, PLAIN_TEMPLATE)
    path, body = request_body(req, adapter, "m", template=PLAIN_TEMPLATE)
    assert path == "/v1/chat/completions" and "tools" not in body and "tool_choice" not in body
    messages = body["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief.\n\nYou can call get_weather."}
    assert json.loads(messages[2]["content"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert messages[3] == {"role": "tool", "content": "sunny"}


def test_vllm_renders_tools_through_the_template_and_parses_no_calls(engines: dict[str, Any]) -> None:
    adapter = engines["vllm"]
    req = tool_chat()
    assert not renders_prompt(req, adapter, TOOLS_TEMPLATE)
    _, body = request_body(req, adapter, "m", template=TOOLS_TEMPLATE)
    assert body["tool_choice"] == "none"
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}  # no generic tools text
    call = body["messages"][2]["tool_calls"][0]
    assert call["id"] == "c1" and call["function"]["arguments"] == '{"city": "Paris"}'  # OpenAI's text
    assert body["messages"][3] == {
        "role": "tool",
        "content": "sunny",
        "tool_call_id": "c1",
        "name": "get_weather",
    }


def test_max_gets_a_chat_with_tools_rendered_by_the_worker(engines: dict[str, Any]) -> None:
    adapter = engines["max"]
    req = tool_chat()
    assert renders_prompt(req, adapter, TOOLS_TEMPLATE)  # MAX would drop tools under tool_choice none
    tok = FakeTokenizer()
    ids = prompt_ids(req, tok, TOOLS_TEMPLATE, 0)
    messages, tools, bos = tok.rendered[-1]
    assert tools is not None and tools[0]["function"]["parameters"] == {"type": "object"}
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # an object for HF
    assert bos is True
    path, body = request_body(req, adapter, "m", prompt=ids, template=TOOLS_TEMPLATE)
    assert path == "/v1/chat/completions" and body["prompt_tokens"] == ids and "tools" not in body

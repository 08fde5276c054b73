"""What the vLLM and MAX workers make of API sampling defaults, an Ollama context and a chat's tools,
against the real engines on CPU with smollm2.

Each engine gets two workers: one on smollm2's own directory (its chat template knows no tools, so tools
travel in the generic format) and one on a copy whose template renders tools and whose
generation_config.json makes the model greedy. The prompt the engine saw is read back from its usage:
``prompt_tokens`` equals the expected rendering's token count, counted with the model's GGUF vocabulary
(the Hugging Face directory was converted from it, so the ids agree).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_cli.cluster import MODEL_HF_DIR, LocalCluster, free_port, wait_for
from hyperllama_worker_llamacpp.registry import load_registry, select
from llama_cpp import Llama
from support.cluster_state import reported

from engines.conftest import MODEL

# Four engine starts (the first MAX start on a directory compiles for minutes on 2 cores).
pytestmark = pytest.mark.timeout(1800)

# smollm2's template, and the tools (with their descriptions) and earlier calls in front of it.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>tools\n"
    "{% for t in tools %}{{ t.function.name }}: {{ t.function.description }}\n{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{{ message['content'] or '' }}"
    "{% for c in message.tool_calls or [] %}CALL {{ c.function.name }} city={{ c.function.arguments.city }}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOL_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)
OPENAI_DEFAULTS = worker_pb2.SamplingParams(
    temperature=1, top_p=1, top_k=0, min_p=0, repeat_penalty=1, frequency_penalty=0, presence_penalty=0
)
OLLAMA_DEFAULTS = worker_pb2.SamplingParams(
    temperature=0.8, top_k=40, top_p=0.9, min_p=0, repeat_penalty=1.1, frequency_penalty=0, presence_penalty=0
)
STORY = [worker_pb2.ChatMessage(role="user", content="Write a long story about a dragon and a knight.")]


@dataclass
class Workers:
    engine: str
    plain: worker_pb2_grpc.WorkerServiceStub  # smollm2's own directory
    tools: worker_pb2_grpc.WorkerServiceStub  # the copy: a template with tools, greedy generation_config


@functools.cache
def _vocab() -> Llama:
    return Llama(model_path=str(select(load_registry(""), MODEL)[0].path), vocab_only=True, verbose=False)


def count(text: str) -> int:
    return len(_vocab().tokenize(text.encode(), add_bos=False, special=True))


def detokenize(ids: list[int]) -> str:
    return _vocab().detokenize(ids).decode()


def _copy_model(to: Path) -> Path:
    to.mkdir()
    for path in MODEL_HF_DIR.iterdir():
        if path.suffix == ".safetensors":
            os.link(path, to / path.name)
        elif path.name != "chat_template.jinja":
            shutil.copy(path, to / path.name)
    (to / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    config = json.loads((to / "generation_config.json").read_text())
    (to / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.0}))
    return to


def _address(scheduler: str, worker_id: str) -> str:
    with grpc.insecure_channel(scheduler) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        workers = stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5).workers
    return next((w.address for w in workers if w.worker_id == worker_id and w.ready), "")


@pytest.fixture(scope="module", params=["vllm", "max"])
def workers(
    request: pytest.FixtureRequest, redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    engine = request.param
    copy = _copy_model(tmp_path_factory.mktemp("model") / "smollm2-tools")
    log_dir = logs_dir / f"engine-requests-{engine}"
    log_dir.mkdir(exist_ok=True)
    c = LocalCluster(gateway_port=free_port(), log_dir=log_dir, redis_url=redis_url.rsplit("/", 1)[0] + "/6")
    with reported(c):
        c.start_scheduler()
        c.start_engine_worker(engine, f"{engine}-plain", heartbeat_seconds="0.5", max_model_len="2048")
        c.start_engine_worker(
            engine, f"{engine}-tools", heartbeat_seconds="0.5", max_model_len="2048", model_path=str(copy)
        )
        addresses = {}
        for name in ("plain", "tools"):
            wait_for(
                lambda n=name: _address(c.scheduler_address, f"{engine}-{n}"), f"{engine}-{name}", None, 900
            )
            addresses[name] = _address(c.scheduler_address, f"{engine}-{name}")
        channels = [grpc.insecure_channel(addresses[n]) for n in ("plain", "tools")]
        yield Workers(engine, *(worker_pb2_grpc.WorkerServiceStub(ch) for ch in channels))
        for ch in channels:
            ch.close()


def generate(stub: worker_pb2_grpc.WorkerServiceStub, **fields) -> tuple[str, worker_pb2.GenerateChunk]:
    chunks = list(
        stub.Generate(worker_pb2.GenerateRequest(request_id=uuid.uuid4().hex, model=MODEL, **fields))
    )
    assert chunks[-1].finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED
    return "".join(c.text for c in chunks), chunks[-1]


def conversation(*messages: worker_pb2.ChatMessage, **fields) -> worker_pb2.ChatConversation:
    return worker_pb2.ChatConversation(messages=messages, **fields)


def user(text: str) -> worker_pb2.ChatMessage:
    return worker_pb2.ChatMessage(role="user", content=text)


# ---- API sampling defaults ----------------------------------------------------------------------


@pytest.mark.parametrize("defaults", [OPENAI_DEFAULTS, OLLAMA_DEFAULTS], ids=["openai", "ollama"])
def test_a_request_with_only_the_api_s_defaults_is_served(workers: Workers, defaults) -> None:
    text, last = generate(
        workers.plain,
        chat=conversation(*STORY),
        defaults=defaults,
        sampling=worker_pb2.SamplingParams(max_tokens=12),
    )
    assert text and last.usage.completion_tokens == 12


def test_the_model_s_generation_config_sits_over_the_api_s_defaults(workers: Workers) -> None:
    """The copy's generation_config.json says temperature 0: Ollama's 0.8 does not apply, so the
    answer is the greedy one, every time."""
    greedy, _ = generate(
        workers.tools,
        chat=conversation(*STORY),
        defaults=OLLAMA_DEFAULTS,  # its other values (repeat_penalty 1.1) apply all the same
        sampling=worker_pb2.SamplingParams(max_tokens=24, temperature=0),
    )
    for _ in range(2):
        text, _ = generate(
            workers.tools,
            chat=conversation(*STORY),
            defaults=OLLAMA_DEFAULTS,
            sampling=worker_pb2.SamplingParams(max_tokens=24),
        )
        assert text == greedy
    # The request's own value still wins over the model's: sampled at 1.5, the answers differ.
    hot = {
        generate(
            workers.tools,
            chat=conversation(*STORY),
            defaults=OLLAMA_DEFAULTS,
            sampling=worker_pb2.SamplingParams(max_tokens=24, temperature=1.5, seed=seed),
        )[0]
        for seed in (1, 2, 3)
    }
    assert len(hot) > 1


# ---- Ollama context -------------------------------------------------------------------------------


def test_a_context_continues_the_conversation(workers: Workers) -> None:
    first_chat = conversation(user("My name is Ada. Say hello to me."))
    sampling = worker_pb2.SamplingParams(max_tokens=10, temperature=0)
    text, first = generate(workers.plain, chat=first_chat, sampling=sampling, return_context=True)
    context = list(first.context)
    prompt = first.usage.prompt_tokens
    assert prompt == count(
        SMOL_SYSTEM + "<|im_start|>user\nMy name is Ada. Say hello to me.<|im_end|>\n<|im_start|>assistant\n"
    )
    # The exchange: the prompt the engine saw, then the ids of the text sent (no end-of-sequence).
    assert len(context) > prompt and detokenize(context[prompt:]) == text
    assert len(context) - prompt <= first.usage.completion_tokens

    second_chat = conversation(user("What is my name?"))
    _, alone = generate(workers.plain, chat=second_chat, sampling=sampling, return_context=True)
    _, second = generate(
        workers.plain, chat=second_chat, sampling=sampling, context=context, return_context=True
    )
    assert second.usage.prompt_tokens == len(context) + alone.usage.prompt_tokens
    assert list(second.context)[: len(context)] == context
    assert (
        list(second.context)[len(context) : second.usage.prompt_tokens]
        == list(alone.context)[: alone.usage.prompt_tokens]
    )


def test_a_context_is_decoded_as_if_the_exchange_were_the_prompt(workers: Workers) -> None:
    sampling = worker_pb2.SamplingParams(max_tokens=4, temperature=0)
    _, first = generate(
        workers.plain, prompt="The capital of France is", sampling=sampling, return_context=True
    )
    follow = " The capital of Germany is"
    text, after = generate(workers.plain, prompt=follow, context=list(first.context), sampling=sampling)
    ids = _vocab().tokenize(follow.encode(), add_bos=False, special=True)
    assert after.usage.prompt_tokens == len(first.context) + len(ids)
    same, _ = generate(
        workers.plain, tokens=worker_pb2.TokenPrompt(ids=[*first.context, *ids]), sampling=sampling
    )
    assert text == same


def test_the_exchange_holds_the_text_sent_when_a_stop_string_cut_it(workers: Workers) -> None:
    story = conversation(*STORY)
    full, _ = generate(
        workers.plain, chat=story, sampling=worker_pb2.SamplingParams(max_tokens=24, temperature=0)
    )
    stop = full[len(full) // 2 : len(full) // 2 + 5]
    sampling = worker_pb2.SamplingParams(max_tokens=24, temperature=0, stop=[stop])
    text, last = generate(workers.plain, chat=story, sampling=sampling, return_context=True)
    assert text == full[: full.find(stop)]
    assert detokenize(list(last.context)[last.usage.prompt_tokens :]) == text


def test_a_context_outside_the_vocabulary_is_refused(workers: Workers) -> None:
    with pytest.raises(grpc.RpcError) as err:
        generate(workers.plain, chat=conversation(user("hi")), context=[5, 10_000_000])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000000" in err.value.details()


# ---- tools ----------------------------------------------------------------------------------------

TOOLS_PROMPT = 'You may call get_weather. To call it, answer {"name": ..., "arguments": {...}}.'


def tool_conversation() -> worker_pb2.ChatConversation:
    return conversation(
        worker_pb2.ChatMessage(role="system", content="Be brief."),
        user("Weather in Paris?"),
        worker_pb2.ChatMessage(
            role="assistant",
            tool_calls=[worker_pb2.ToolCall(id="c1", name="get_weather", arguments_json='{"city": "Paris"}')],
        ),
        worker_pb2.ChatMessage(role="tool", content="sunny", tool_call_id="c1", tool_name="get_weather"),
        tools=[
            worker_pb2.Tool(
                name="get_weather", description="Weather of a city", parameters_json='{"type": "object"}'
            )
        ],
        tools_prompt=TOOLS_PROMPT,
    )


def test_tools_travel_in_the_generic_format_to_a_template_without_tools(workers: Workers) -> None:
    _, last = generate(
        workers.plain, chat=tool_conversation(), sampling=worker_pb2.SamplingParams(max_tokens=8)
    )
    expected = (
        f"<|im_start|>system\nBe brief.\n\n{TOOLS_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Paris"}}<|im_end|>\n'
        "<|im_start|>tool\nsunny<|im_end|>\n<|im_start|>assistant\n"
    )
    assert last.usage.prompt_tokens == count(expected)


def test_tools_go_through_a_template_that_renders_them(workers: Workers) -> None:
    _, last = generate(
        workers.tools, chat=tool_conversation(), sampling=worker_pb2.SamplingParams(max_tokens=8)
    )
    expected = (
        "<|im_start|>tools\nget_weather: Weather of a city\n<|im_end|>\n"
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\nCALL get_weather city=Paris<|im_end|>\n"
        "<|im_start|>tool\nsunny<|im_end|>\n<|im_start|>assistant\n"
    )
    assert last.usage.prompt_tokens == count(expected)

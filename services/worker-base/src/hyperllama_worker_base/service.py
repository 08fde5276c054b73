"""WorkerService backed by an engine's OpenAI-compatible server.

Text from the engine passes through StopStringFilter even though the engine is given the stop strings
too: the engine stops early (saves compute) and the filter guarantees that no part of a stop string
reaches the client, whatever the engine's streaming does with partial matches. Logprob entries travel
with their event's text (HeldWithText): held while it is, never sent for text a stop string withholds.

Logprobs are the engine's own: vLLM's are of the raw logits (before logit_bias, penalties and
temperature), MAX's of what its sampler saw; the llama.cpp worker counts logit_bias in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common import chat_tools
from hyperllama_common.errors import (
    BackendFailed,
    Cancelled,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from hyperllama_common.sampling_checks import check_logprobs
from hyperllama_common.textstream import HeldWithText, StopStringFilter, Utf8Assembler
from hyperllama_common.worker_metrics import ModelMetrics, WorkerMetrics

from hyperllama_worker_base.adapter import EngineAdapter
from hyperllama_worker_base.model_host import ModelHost
from hyperllama_worker_base.openai_client import EngineClient
from hyperllama_worker_base.tokenizer import Tokenizer

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant", "tool"}
# Tokens read past a stop string the worker saw first, waiting for the engine to stop by itself.
_DRAIN_AFTER_STOP = 8
FINISH = {"stop": worker_pb2.FINISH_REASON_STOP, "length": worker_pb2.FINISH_REASON_LENGTH}


@dataclass
class Running:
    task: asyncio.Task[Any] | None
    cancel_requested: bool = False


@dataclass
class Progress:
    """What one generation has seen of the engine's stream so far."""

    produced: int = 0
    prompt_tokens: int = 0
    engine_completion_tokens: int | None = None
    finish: int = worker_pb2.FINISH_REASON_UNSPECIFIED
    first_token_ns: int = 0
    texts: list[str] = field(default_factory=list)  # as sent
    token_ids: list[int] | None = None  # the engine's ids of what it generated, where it gives them

    def completion_tokens(self) -> int:
        return self.engine_completion_tokens if self.engine_completion_tokens is not None else self.produced


# A model's PARAMETERS (Ollama's names) and the request field each is the default of.
_PARAMETER_FIELDS = {
    "temperature": float, "top_p": float, "top_k": int, "seed": int, "num_predict": int,
    "frequency_penalty": float, "presence_penalty": float, "repeat_penalty": float, "min_p": float,
}  # fmt: skip
# SamplingParams' fields that are set or not (the API defaults fill those a request leaves unset).
_OPTIONAL_SAMPLING = (
    "temperature", "top_p", "top_k", "seed", "max_tokens",
    "frequency_penalty", "presence_penalty", "repeat_penalty", "min_p",
)  # fmt: skip


def with_model_defaults(
    req: worker_pb2.GenerateRequest,
    system: str,
    parameters: dict[str, object],
    generation: dict[str, float | int] | None = None,
) -> worker_pb2.GenerateRequest:
    """The request with its model's SYSTEM and PARAMETERS (from the store) where it sets none, as Ollama
    applies them: a chat without a system message gets the model's; an unset option gets its value.
    Below those, the sampling values of the model's generation_config.json (``generation``), then the
    API's defaults (``req.defaults``); the engine's own apply only to what all of these leave unset."""
    if not system and not parameters and not generation and not req.HasField("defaults"):
        return req
    out = worker_pb2.GenerateRequest()
    out.CopyFrom(req)
    s = out.sampling
    for name, kind in _PARAMETER_FIELDS.items():
        value = parameters.get(name)
        field = "max_tokens" if name == "num_predict" else name
        if isinstance(value, int | float) and not isinstance(value, bool) and not s.HasField(field):  # type: ignore[arg-type]
            setattr(s, field, kind(value))
    stops = parameters.get("stop")
    if not s.stop and stops:
        s.stop.extend(str(x) for x in (stops if isinstance(stops, list) else [stops]))
    for name, value in (generation or {}).items():
        if not s.HasField(name):  # type: ignore[arg-type]
            setattr(s, name, value)
    defaults = out.defaults
    for name in _OPTIONAL_SAMPLING:
        if defaults.HasField(name) and not s.HasField(name):  # type: ignore[arg-type]
            setattr(s, name, getattr(defaults, name))
    if not s.stop and defaults.stop:
        s.stop.extend(defaults.stop)
    if system and out.HasField("chat") and not any(m.role == "system" for m in out.chat.messages):
        messages = list(out.chat.messages)
        del out.chat.messages[:]
        out.chat.messages.add(role="system", content=system)
        out.chat.messages.extend(messages)
    return out


def _claimed(engine: EngineAdapter, capability: str, param: str, what: str) -> None:
    """Refuse what this worker does not claim, rather than let its engine ignore it silently."""
    if capability not in engine.capabilities:
        raise InvalidRequest(
            f"the {engine.name} worker cannot honour {what}; use a worker with the '{capability}' capability",
            param=param,
        )


def _check_ids(ids: list[int], vocab_size: int, param: str) -> None:
    """Token ids must index the model's embedding table (an engine may not check: MAX does not)."""
    bad = next((t for t in ids if t < 0 or (vocab_size and t >= vocab_size)), None)
    if bad is not None:
        known = f" (ids 0-{vocab_size - 1})" if vocab_size else ""
        raise InvalidRequest(f"token id {bad} is not in the model's vocabulary{known}", param=param)


def _token_fields(
    req: worker_pb2.GenerateRequest, engine: EngineAdapter, vocab_size: int, chat: bool
) -> dict[str, Any]:
    """logprobs and logit_bias in the OpenAI dialect of the endpoint the request goes to (``chat``)."""
    s = req.sampling
    body: dict[str, Any] = {}
    check_logprobs(s)
    if s.logprobs:
        _claimed(engine, "logprobs", "logprobs", "logprobs")
        # At least one alternative: MAX computes no logprobs at all for 0. The relay cuts the
        # alternatives back to what was asked.
        top = max(1, s.top_logprobs)
        if chat:
            body.update(logprobs=True, top_logprobs=top)
        else:
            body["logprobs"] = top  # completions: the number of alternatives
    if s.logit_bias:
        _claimed(engine, "logit_bias", "logit_bias", "logit_bias")
        _check_ids(list(s.logit_bias), vocab_size, "logit_bias")
        if not all(math.isfinite(b) for b in s.logit_bias.values()):
            raise InvalidRequest("logit_bias values must be finite numbers", param="logit_bias")
        body["logit_bias"] = {str(t): b for t, b in sorted(s.logit_bias.items())}
    return body


def _check_roles(conversation: worker_pb2.ChatConversation) -> None:
    for m in conversation.messages:
        if m.role not in ROLES:
            raise InvalidRequest(
                f"unknown role '{m.role}'; expected one of {sorted(ROLES)}", param="messages"
            )


def template_tools(conversation: worker_pb2.ChatConversation, template: str) -> bool:
    """Whether the chat's tools (or its earlier calls and their results) go through the model's own
    template: it renders tools. Otherwise they take the generic format (chat_tools.plain)."""
    uses_tools = bool(conversation.tools) or any(
        m.tool_calls or m.tool_call_id or m.tool_name for m in conversation.messages
    )
    return uses_tools and chat_tools.knows_tools(template)


def renders_prompt(req: worker_pb2.GenerateRequest, engine: EngineAdapter, template: str) -> bool:
    """Whether the worker must turn the request's input into token ids itself (prompt_ids): to put an
    Ollama context before it or return one, or to render tools the engine's endpoint would drop."""
    if req.context or (req.return_context and "context" in engine.capabilities):
        return True
    return req.HasField("chat") and template_tools(req.chat, template) and not engine.dialect.renders_tools


def prompt_ids(
    req: worker_pb2.GenerateRequest, tokenizer: Tokenizer, template: str, vocab_size: int
) -> list[int]:
    """The request's context and then its input as token ids: a chat through the model's template (up
    to the assistant's turn), a text prompt tokenized as the engine would, token ids as they are. After
    a context nothing adds a second beginning-of-sequence token. Blocks (tokenizes): run in a thread."""
    context = list(req.context)
    _check_ids(context, vocab_size, "context")
    if req.HasField("chat"):
        _check_roles(req.chat)
        if template_tools(req.chat, template):
            messages = chat_tools.structured(req.chat)
            ids = tokenizer.render_chat(messages, chat_tools.tool_list(req.chat), bos=not context)
        else:
            ids = tokenizer.render_chat(chat_tools.plain(req.chat), None, bos=not context)
    elif req.HasField("tokens"):
        ids = list(req.tokens.ids)
        _check_ids(ids, vocab_size, "prompt")
    else:
        ids = tokenizer.encode(req.prompt, special=not context) if req.prompt else []
    if not ids and not context:
        raise InvalidRequest("the prompt is empty", param="prompt")
    return context + ids


def generated_ids(engine_ids: list[int] | None, text: str, tokenizer: Tokenizer) -> list[int]:
    """The ids of the text a generation sent: the engine's own ids when they are that text (less the
    end-of-sequence token that ends it), else the text tokenized (a stop string cut the engine's last
    tokens, or the engine gave no ids)."""
    if engine_ids:
        ids = list(engine_ids)
        specials = tokenizer.special_ids()
        while ids and ids[-1] in specials:
            ids.pop()
        if tokenizer.decode(ids) == text:
            return ids
    return tokenizer.encode(text, special=False) if text else []


def request_body(
    req: worker_pb2.GenerateRequest,
    engine: EngineAdapter,
    model_id: str,
    vocab_size: int = 0,
    *,
    prompt: list[int] | None = None,
    template: str = "",
) -> tuple[str, dict]:
    """The engine endpoint and body for a request: chat goes to the engine's chat template, a prompt
    (text or token ids) to completions. ``vocab_size``: the model's, to check token ids (0: unknown).
    ``prompt``: the input as the worker rendered it (prompt_ids), sent as token ids. ``template``: the
    model's chat template, which decides how tools travel."""
    dialect = engine.dialect
    chat_input = req.HasField("chat")
    if chat_input:
        _check_roles(req.chat)
    if req.context:
        # return_context alone is only a wish (every /api/generate asks): a worker that cannot keeps
        # the exchange to itself.
        _claimed(engine, "context", "context", "an Ollama context")
    chat = chat_input and (prompt is None or bool(dialect.chat_token_field))
    body: dict[str, Any] = {
        "model": model_id,
        "stream_options": {"include_usage": True},
        **engine.sampling(req.sampling),
        **_token_fields(req, engine, vocab_size, chat),
    }
    if prompt is not None and req.return_context and dialect.returns_token_ids:
        body["return_token_ids"] = True
    kind = req.response_format.kind
    if kind == worker_pb2.ResponseFormat.KIND_JSON_OBJECT:
        body["response_format"] = {"type": "json_object"}
    elif kind == worker_pb2.ResponseFormat.KIND_JSON_SCHEMA:
        try:
            schema = json.loads(req.response_format.json_schema)
        except ValueError as err:
            raise InvalidRequest(
                f"the JSON schema is not valid JSON: {err}", param="response_format"
            ) from err
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    if chat:
        conversation = req.chat
        if prompt is not None:
            # The engine reads the ids; the messages only satisfy its schema.
            body["messages"] = chat_tools.plain(conversation)
            body[dialect.chat_token_field] = prompt
        elif template_tools(conversation, template) and dialect.renders_tools:
            # The engine renders the tools through the template but must not parse calls out of the
            # answer: the gateway reads them from the text, the same way for every engine.
            body["messages"] = chat_tools.structured(conversation, arguments_as_text=True)
            if conversation.tools:
                body["tools"] = chat_tools.tool_list(conversation)
                body["tool_choice"] = "none"
        else:
            body["messages"] = chat_tools.plain(conversation)
        return "/v1/chat/completions", body
    if prompt is not None:
        body["prompt"] = prompt
    elif req.HasField("tokens"):
        _claimed(engine, "token_prompt", "prompt", "a prompt of token ids")
        if not req.tokens.ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        _check_ids(list(req.tokens.ids), vocab_size, "prompt")
        body["prompt"] = list(req.tokens.ids)
    else:
        body["prompt"] = req.prompt
    return "/v1/completions", body


def _top(alternatives: list[tuple[str, float, bytes]], n: int) -> list[worker_pb2.TopLogprob]:
    alternatives.sort(key=lambda a: -a[1])
    return [worker_pb2.TopLogprob(token=t, logprob=v, bytes=b) for t, v, b in alternatives[:n]]


def _logprob(value: object) -> float:
    return float(value) if isinstance(value, int | float) else -math.inf


def engine_logprobs(choice: dict[str, Any], chat: bool, top: int) -> list[worker_pb2.TokenLogprob]:
    """A streamed choice's logprobs as entries: chat's ``logprobs.content`` (token, logprob, bytes,
    top_logprobs) or completions' parallel ``tokens`` / ``token_logprobs`` / ``top_logprobs`` (a dict
    per token, which may hold the sampled token besides the top ``n``: cut to ``top``, best first)."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return []
    out = []
    if chat:
        for item in lp.get("content") or ():
            token = str(item.get("token") or "")
            entry = worker_pb2.TokenLogprob(
                token=token,
                logprob=_logprob(item.get("logprob")),
                bytes=bytes(item.get("bytes") or token.encode()),
            )
            alts = [
                (
                    str(a.get("token") or ""),
                    _logprob(a.get("logprob")),
                    bytes(a.get("bytes") or str(a.get("token") or "").encode()),
                )
                for a in item.get("top_logprobs") or ()
            ]
            entry.top_logprobs.extend(_top(alts, top))
            out.append(entry)
        return out
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or []
    tokens = lp.get("tokens") or _split_text(str(choice.get("text") or ""), values, tops)
    for i, token in enumerate(tokens):
        entry = worker_pb2.TokenLogprob(
            token=token, logprob=_logprob(values[i] if i < len(values) else None), bytes=token.encode()
        )
        alts = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        entry.top_logprobs.extend(_top([(t, _logprob(v), t.encode()) for t, v in alts.items()], top))
        out.append(entry)
    return out


def _split_text(text: str, values: list[Any], tops: list[Any]) -> list[str]:
    """Tokens for a completions event that gives none (MAX 26.7): its text, which is one token's in
    practice; were it several, each is the alternative with its logprob that the text starts with."""
    tokens = []
    for i, value in enumerate(values):
        if i == len(values) - 1:
            tokens.append(text)
            break
        alts = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        token = next((t for t, v in alts.items() if v == value and t and text.startswith(t)), "")
        tokens.append(token)
        text = text[len(token) :]
    return tokens


def _refused_field(err: InvalidRequest, s: worker_pb2.SamplingParams) -> InvalidRequest:
    """An engine's refusal of a field the request set, named as that field (the engine names it in
    words of its own: "Log probabilities are not supported ...")."""
    if type(err) is not InvalidRequest:
        return err
    message = err.message.lower()
    if s.top_logprobs and "top_logprobs" in message:
        return InvalidRequest(err.message, param="top_logprobs")
    if s.logprobs and ("logprob" in message or "log prob" in message):
        return InvalidRequest(err.message, param="logprobs")
    if s.logit_bias and ("logit_bias" in message or "logit bias" in message):
        return InvalidRequest(err.message, param="logit_bias")
    return err


class EngineServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self,
        engine: EngineAdapter,
        client: EngineClient,
        host: ModelHost,
        info: worker_pb2.WorkerInfo,
        metrics: WorkerMetrics,
    ):
        self.engine = engine
        self.worker_metrics = metrics
        # Generations streaming from the engine now. The engine runs at most slots_total sequences
        # (its --max-num-seqs / --max-batch-size) and queues the rest where nobody can see them:
        # past that the worker answers busy, so the scheduler can ask another worker.
        self._admitted = 0
        self.client = client
        self.host = host
        self.info = info
        self._running: dict[str, Running] = {}
        self.metrics: ModelMetrics | None = None
        if host.model is not None:
            self._measure(host.model.name)

    def _measure(self, model: str) -> None:
        self.metrics = self.worker_metrics.for_model(model)
        self.metrics.slots_total.set(self.info.slots_total)
        self.metrics.slots_in_use.set_function(lambda: self._admitted)

    def snapshot(self) -> worker_pb2.WorkerInfo:
        info = worker_pb2.WorkerInfo()
        info.CopyFrom(self.info)
        host = self.host
        if host.model is not None:
            info.models.append(host.model)
        if host.loading is not None:
            info.loading.append(host.loading)
        info.ready = host.ready
        info.slots_in_use = self._admitted
        info.memory_budget_bytes = host.budget_bytes
        info.memory_used_bytes = host.used_bytes
        info.overhead_bytes_per_model = host.engine_bytes
        if host.source is not None:
            info.blobs.extend(host.source.cached_digests())
        return info

    def _check_model(self, name: str) -> None:
        model = self.host.model
        if model is None or model.name != name:
            served = [model.name] if model is not None else []
            raise ModelNotFound(f"model '{name}' is not served by this worker; it serves {served}")

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateChunk]:
        self._check_model(request.model)
        served = self.host.model.context_length if self.host.model is not None else 0
        if served and request.num_ctx > served:
            # The engine's context is fixed when it starts: a larger one is refused, never cut silently.
            raise InvalidRequest(
                f"num_ctx {request.num_ctx} is more than the {served} tokens the {self.engine.name} engine "
                "serves (HYPERLLAMA_WORKER_MAX_MODEL_LEN)",
                param="options.num_ctx",
            )
        host = self.host
        request = with_model_defaults(request, host.system, host.parameters, host.generation)
        prompt: list[int] | None = None
        if renders_prompt(request, self.engine, host.chat_template) and host.tokenizer is not None:
            prompt = await asyncio.to_thread(
                prompt_ids, request, host.tokenizer, host.chat_template, host.vocab_size
            )
        # The engine's server knows the model by the directory it loaded.
        path, body = request_body(
            request,
            self.engine,
            str(host.model_dir),
            host.vocab_size,
            prompt=prompt,
            template=host.chat_template,
        )
        metrics = self.metrics
        if not self.host.ready or metrics is None:
            raise Unavailable(f"the {self.engine.name} engine is not ready: {self.host.last_problem}")
        if self._admitted >= self.info.slots_total:
            raise Overloaded(
                f"model '{request.model}' on worker {self.info.worker_id} is busy: all "
                f"{self.info.slots_total} slots are taken; ask again"
            )
        self._admitted += 1
        running = Running(asyncio.current_task())
        self._running[request.request_id] = running
        arrived = time.perf_counter_ns()
        progress = Progress()
        outcome = "failed"
        try:
            async for chunk in self._relay(path, body, request, progress):
                yield chunk
            outcome = "ok"
        except InvalidRequest as err:
            outcome = "client_error"
            named = _refused_field(err, request.sampling)
            if named is err:
                raise
            raise named from err
        except asyncio.CancelledError:
            outcome = "cancelled"
            if running.cancel_requested:
                raise Cancelled(f"request {request.request_id} was cancelled") from None
            raise
        except GeneratorExit:
            outcome = "cancelled"
            raise
        finally:
            # Before the final chunk goes out: its caller may send the next request at once.
            self._admitted -= 1
            if self._running.get(request.request_id) is running:
                self._running.pop(request.request_id)
            metrics.request(outcome)
        done = time.perf_counter_ns()
        first = progress.first_token_ns or done
        if progress.first_token_ns:
            metrics.ttft.observe((progress.first_token_ns - arrived) / 1e9)
        metrics.prompt_tokens.inc(progress.prompt_tokens)
        metrics.output_tokens.inc(progress.completion_tokens())
        exchange: list[int] = []
        if request.return_context and prompt is not None and host.tokenizer is not None:
            generated = await asyncio.to_thread(
                generated_ids, progress.token_ids, "".join(progress.texts), host.tokenizer
            )
            exchange = prompt + generated
        yield worker_pb2.GenerateChunk(
            context=exchange,
            finish_reason=progress.finish,
            usage=worker_pb2.Usage(
                prompt_tokens=progress.prompt_tokens, completion_tokens=progress.completion_tokens()
            ),
            timings=worker_pb2.Timings(
                load_duration_ns=0, prompt_eval_duration_ns=first - arrived, eval_duration_ns=done - first
            ),
        )

    async def _relay(
        self, path: str, body: dict[str, Any], request: worker_pb2.GenerateRequest, progress: Progress
    ) -> AsyncIterator[worker_pb2.GenerateChunk]:
        chat = path.endswith("/chat/completions")
        stops = StopStringFilter(list(request.sampling.stop))
        held: HeldWithText[worker_pb2.TokenLogprob] | None = (
            HeldWithText() if request.sampling.logprobs else None
        )
        top = request.sampling.top_logprobs
        # Characters of the entries' tokens so far: an entry ends where its token's text does, or
        # where its event's text does if later. vLLM holds text back while it may begin a stop string
        # but sends the tokens' entries at once.
        token_text, token_chars = Utf8Assembler(), 0
        engine_stopped = False  # on a stop string of its own finding
        after_stop = 0
        async for event in self.client.stream(path, body, param="messages" if chat else "prompt"):
            usage = event.get("usage")
            if usage:
                progress.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                progress.engine_completion_tokens = int(usage.get("completion_tokens") or 0)
            for choice in event.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                ids = choice.get("token_ids")
                if isinstance(ids, list):
                    if progress.token_ids is None:
                        progress.token_ids = []
                    progress.token_ids.extend(int(t) for t in ids)
                text = ""
                if piece:
                    if not progress.produced:
                        progress.first_token_ns = time.perf_counter_ns()
                    progress.produced += 1
                    if stops.stopped:
                        after_stop += 1
                    text, hit = stops.feed(piece)
                    if hit:
                        progress.finish = worker_pb2.FINISH_REASON_STOP
                entries: list[worker_pb2.TokenLogprob] = []
                if held is not None and not after_stop:
                    # The event's entries end where its text ends. The end-of-sequence token that
                    # ends the stream has none, as on the llama.cpp worker (vLLM would send one),
                    # nor has the token in which the engine found a stop string (vLLM names it
                    # in stop_reason and sends the token's entry with the text before the stop).
                    held.text(len(piece or ""))
                    ending = choice.get("finish_reason") == "stop"
                    engine_stopped = ending and isinstance(choice.get("stop_reason"), str)
                    if not engine_stopped:
                        for entry in engine_logprobs(choice, chat, top):
                            if not (ending and entry.token in self.host.end_tokens):
                                token_chars += len(token_text.feed(entry.bytes))
                                held.add(entry, 0, pending=max(0, token_chars - held.fed))
                    entries = held.release(len(text))
                if text or entries:
                    progress.texts.append(text)
                    yield worker_pb2.GenerateChunk(text=text, token_count=1 if text else 0, logprobs=entries)
                reason = choice.get("finish_reason")
                if reason and not stops.stopped:
                    if reason not in FINISH:
                        raise BackendFailed(f"the engine ended the request with finish_reason '{reason}'")
                    progress.finish = FINISH[reason]
            # Some engines emit a stop string before they act on it. The engine has the stop strings
            # too, so it ends within a few tokens and its final usage still arrives; an engine that
            # does not is cut off (leaving the stream closes the connection, which aborts it there).
            if after_stop > _DRAIN_AFTER_STOP:
                return
        tail = stops.flush()
        entries = []
        if held is not None:
            # Left: entries whose text never came (a stop string), or that show more than the text
            # (a special token); only the latter are sent.
            entries = held.release(len(tail)) + ([] if stops.stopped or engine_stopped else held.flush())
        if tail or entries:
            progress.texts.append(tail)
            yield worker_pb2.GenerateChunk(text=tail, logprobs=entries)
        if progress.finish == worker_pb2.FINISH_REASON_UNSPECIFIED:
            raise BackendFailed("the engine's stream ended without a finish_reason")

    async def Embed(
        self, request: worker_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EmbedResponse:
        self._check_model(request.model)
        raise InvalidRequest(
            f"the {self.engine.name} worker does not serve embeddings for '{request.model}' "
            "(its engine runs the model for generation); use a worker with the 'embed' capability",
            param="model",
        )

    async def Info(
        self, request: worker_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.WorkerInfo:
        return self.snapshot()

    async def Cancel(
        self, request: worker_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.CancelResponse:
        running = self._running.get(request.request_id)
        if running is not None and running.task is not None:
            running.cancel_requested = True
            running.task.cancel()
        return worker_pb2.CancelResponse(cancelled=running is not None)

    async def Load(
        self, request: worker_pb2.LoadRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.LoadResponse:
        if not request.model:
            raise InvalidRequest("model is required", param="model")
        await self.host.load(request.model, request.digest)
        if self.host.model is not None:
            self._measure(self.host.model.name)
        return worker_pb2.LoadResponse(worker=self.snapshot())

    async def Unload(
        self, request: worker_pb2.UnloadRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.UnloadResponse:
        await self.host.unload(request.model, self._admitted)
        return worker_pb2.UnloadResponse(worker=self.snapshot())

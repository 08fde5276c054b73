"""Request models of the OpenAI API. Unknown fields are ignored, as OpenAI clients send many.

Bounds and their reasons are in ``limits``; every number fits the protobuf field it travels in."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from hyperllama_common.errors import quote
from pydantic import BaseModel, Field, field_validator, model_validator

from hyperllama_gateway.limits import (
    INT32_MAX,
    MAX_CHOICES,
    MAX_EMBED_INPUTS,
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_PROMPT_TOKENS,
    MAX_TOKENS_LIMIT,
    Float32,
    Int32,
    Int64,
    JsonSchema,
    ModelName,
    StopList,
    check_embed_inputs,
)
from hyperllama_gateway.wellformed import RequestBody


class TextPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    # An assistant's earlier calls, and the call a "tool" message answers.
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text":
                raise ValueError(f"content part type '{quote(part.type)}' is not supported; only 'text' is")
            parts.append(part.text or "")
        return "".join(parts)


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaSpec(BaseModel):
    name: str = "response"
    schema_: JsonSchema = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class _Sampling(RequestBody):
    model: ModelName
    temperature: Float32 | None = Field(default=None, ge=0, le=2)
    top_p: Float32 | None = Field(default=None, ge=0, le=1)
    top_k: Int32 | None = Field(default=None, ge=0)
    min_p: Float32 | None = Field(default=None, ge=0, le=1)
    seed: Int64 | None = None
    stop: StopList = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    presence_penalty: Float32 | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: Float32 | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: Float32 | None = Field(default=None, gt=0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    # Accepted and ignored, as a tenant comes from the API key (OpenAI uses it for abuse monitoring).
    user: str | None = Field(default=None, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    # Token id (as a string, as JSON keys are) -> bias added to its logit, -100 to 100.
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens ({len(v)} given)")
        for key in v:
            if not key.isascii() or not key.isdigit() or int(key) > INT32_MAX:
                raise ValueError(f"keys are token ids (non-negative integers); got '{quote(key, 20)}'")
        return v

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class CompletionRequest(_Sampling):
    # Text, texts, token ids, or lists of token ids.
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    # The log-probabilities of each token and of this many alternatives (0-5, as OpenAI).
    logprobs: int | None = Field(default=None, ge=0, le=5)
    # The legacy completions API stops at 16 tokens unless told otherwise.
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS_LIMIT)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str] | list[int] | list[list[int]]) -> Any:
        prompts = _prompts(v)
        if not prompts or len(prompts) > MAX_CHOICES:
            raise ValueError(f"give 1 to {MAX_CHOICES} prompts ({len(prompts)} given)")
        if not all(prompts):
            raise ValueError("prompt must not be empty")
        for tokens in _token_lists(prompts):
            _check_tokens(tokens)
        return v

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: its text, or its token ids."""
        return _prompts(self.prompt)

    @model_validator(mode="after")
    def _choices(self) -> CompletionRequest:
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise ValueError(
                f"prompts x n is at most {MAX_CHOICES} choices per request ({len(self.prompts())} x {self.n})"
            )
        return self


def _token_lists(values: list[str | list[int]]) -> list[list[int]]:
    return [v for v in values if isinstance(v, list)]


def _check_tokens(tokens: list[int]) -> None:
    if not tokens or len(tokens) > MAX_PROMPT_TOKENS or not 0 <= min(tokens) <= max(tokens) <= INT32_MAX:
        raise ValueError(f"token ids: 1 to {MAX_PROMPT_TOKENS} of them, each 0 or more")


def _prompts(v: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(v, str):
        return [v]
    if v and all(isinstance(x, int) for x in v):
        return [list(v)]  # type: ignore[arg-type]
    return list(v)  # type: ignore[arg-type]


class EmbeddingRequest(RequestBody):
    model: ModelName
    # Text, texts, token ids, or lists of token ids (LangChain sends token ids by default).
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _input(cls, v: str | list[str] | list[int] | list[list[int]]) -> Any:
        inputs = _prompts(v)
        if not inputs or not all(isinstance(i, list) for i in inputs):
            return check_embed_inputs(v)  # type: ignore[arg-type]
        if len(inputs) > MAX_EMBED_INPUTS:
            raise ValueError(f"at most {MAX_EMBED_INPUTS} inputs per request ({len(inputs)} given)")
        for tokens in _token_lists(inputs):
            _check_tokens(tokens)
        return v

    def token_inputs(self) -> list[list[int]]:
        """The inputs given as token ids (empty when they are text)."""
        return _token_lists(_prompts(self.input))

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, v: int | None) -> int | None:
        if v is not None:
            raise ValueError("dimensions is not supported; the model's full embedding is returned")
        return v

"""Request models of the OpenAI API. Unknown fields are ignored, as OpenAI clients send many.

Bounds and their reasons are in ``limits``; every number fits the protobuf field it travels in."""

from __future__ import annotations

from typing import Any, Literal

from hyperllama_common.errors import quote
from pydantic import BaseModel, Field, field_validator, model_validator

from hyperllama_gateway.limits import (
    MAX_CHOICES,
    MAX_MESSAGES,
    MAX_TOKENS_LIMIT,
    EmbedInputs,
    Float32,
    Int32,
    Int64,
    JsonSchema,
    ModelName,
    StopList,
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
    logprobs: bool | int | None = None

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: bool | int | None) -> bool | int | None:
        if v:
            raise ValueError("logprobs are not supported")
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


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    # The legacy completions API stops at 16 tokens unless told otherwise.
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS_LIMIT)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        prompts = [v] if isinstance(v, str) else v
        if not prompts or len(prompts) > MAX_CHOICES:
            raise ValueError(f"give 1 to {MAX_CHOICES} prompts ({len(prompts)} given)")
        if not all(prompts):
            raise ValueError("prompt must not be empty")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @model_validator(mode="after")
    def _choices(self) -> CompletionRequest:
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise ValueError(
                f"prompts x n is at most {MAX_CHOICES} choices per request ({len(self.prompts())} x {self.n})"
            )
        return self


class EmbeddingRequest(RequestBody):
    model: ModelName
    input: EmbedInputs
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, v: int | None) -> int | None:
        if v is not None:
            raise ValueError("dimensions is not supported; the model's full embedding is returned")
        return v

"""Request models of the Ollama API. Unknown fields are ignored, as Ollama does."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Options(_Request):
    num_ctx: int | None = Field(default=None, ge=1)
    # -1 = no limit, -2 = fill the context.
    num_predict: int | None = Field(default=None, ge=-2, le=1 << 20)
    temperature: float | None = Field(default=None, ge=0)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    repeat_penalty: float | None = Field(default=None, gt=0)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


Format = Literal["json", ""] | dict[str, Any] | None


class GenerateRequest(_Request):
    model: str = Field(min_length=1)
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    stream: bool = True
    format: Format = None
    options: Options | None = None
    images: list[str] | None = None
    keep_alive: str | int | float | None = None


class Message(_Request):
    role: str
    content: str = ""
    images: list[str] | None = None


class ChatRequest(_Request):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(default_factory=list)
    stream: bool = True
    format: Format = None
    options: Options | None = None
    keep_alive: str | int | float | None = None


class EmbedRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    options: Options | None = None
    keep_alive: str | int | float | None = None


class EmbeddingsRequest(_Request):
    """The legacy single-prompt embeddings endpoint."""

    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    options: Options | None = None


class ShowRequest(_Request):
    model: str | None = None
    name: str | None = None  # the field's older name

    def target(self) -> str:
        return self.model or self.name or ""

"""Request models of the Ollama API. Unknown fields are ignored, as Ollama does.

Bounds and their reasons are in ``limits``; every number fits the protobuf field it travels in."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hyperllama_gateway.limits import (
    INT32_MAX,
    MAX_MESSAGES,
    MAX_MODEL_NAME_CHARS,
    MAX_TOKENS_LIMIT,
    EmbedInputs,
    Float32,
    Int32,
    Int64,
    ModelName,
    StopList,
    check_embed_inputs,
    check_schema,
)
from hyperllama_gateway.wellformed import RequestBody


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


# Options Ollama documents that the cluster does not apply to a request: a value for one is refused by
# name rather than dropped. Sampling ones the engines here do not offer, and load-time ones that a
# worker's own settings decide (HYPERLLAMA_WORKER_*), since a request does not load the model.
UNSUPPORTED_OPTIONS = {
    "num_keep": "the engines keep no tokens aside when the context fills",
    "typical_p": "typical sampling is not offered",
    "repeat_last_n": "the repeat penalty window is the engine's",
    "penalize_newline": "newlines are penalised like any token",
    "mirostat": "mirostat sampling is not offered",
    "mirostat_tau": "mirostat sampling is not offered",
    "mirostat_eta": "mirostat sampling is not offered",
    "tfs_z": "tail-free sampling is not offered",
    "numa": "a worker's settings decide it (HYPERLLAMA_WORKER_*)",
    "num_batch": "a worker's settings decide it (HYPERLLAMA_WORKER_BATCH_TOKENS)",
    "num_gpu": "a worker's settings decide it (HYPERLLAMA_WORKER_GPUS)",
    "main_gpu": "a worker's settings decide it (HYPERLLAMA_WORKER_GPUS)",
    "num_thread": "a worker's settings decide it (HYPERLLAMA_WORKER_THREADS)",
    "low_vram": "a worker's settings decide it",
    "f16_kv": "a worker's settings decide it",
    "vocab_only": "a worker's settings decide it",
    "use_mmap": "a worker's settings decide it",
    "use_mlock": "a worker's settings decide it",
    "logits_all": "a worker's settings decide it",
}


class Options(_Part):
    num_ctx: int | None = Field(default=None, ge=1, le=INT32_MAX)
    # -1 = no limit, -2 = fill the context.
    num_predict: int | None = Field(default=None, ge=-2, le=MAX_TOKENS_LIMIT)
    temperature: Float32 | None = Field(default=None, ge=0)
    top_k: Int32 | None = Field(default=None, ge=0)
    top_p: Float32 | None = Field(default=None, ge=0, le=1)
    min_p: Float32 | None = Field(default=None, ge=0, le=1)
    seed: Int64 | None = None
    stop: StopList = None
    repeat_penalty: Float32 | None = Field(default=None, gt=0)
    frequency_penalty: Float32 | None = None
    presence_penalty: Float32 | None = None

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in UNSUPPORTED_OPTIONS.items():
                if data.get(name) is not None:  # null means unset: clients send every field
                    raise PydanticCustomError(
                        "unsupported_option",
                        "options.{name} is not supported: {why}",
                        {"name": name, "why": why, "param": f"options.{name}"},
                    )
        return data


def _schema_format(v: Any) -> Any:
    return check_schema(v) if isinstance(v, dict) else v


Format = Annotated[Literal["json", ""] | dict[str, Any] | None, AfterValidator(_schema_format)]


class GenerateRequest(RequestBody):
    model: ModelName
    prompt: str = ""
    # Fill-in-the-middle: refused (no model template here renders a suffix), as Ollama refuses it
    # for a model whose template does not.
    suffix: str | None = None
    # Token ids of an earlier exchange (a response's `context`), which the prompt goes on from.
    context: list[Annotated[int, Field(ge=0, le=INT32_MAX)]] | None = None
    think: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    system: str | None = None
    raw: bool = False
    stream: bool = True
    format: Format = None
    options: Options | None = None
    images: list[str] | None = None
    keep_alive: str | int | float | None = None


class Message(_Part):
    role: str
    content: str = ""
    images: list[str] | None = None
    # An assistant's earlier calls ({"id", "function": {"name", "arguments": {...}}}), and the function
    # and call a "tool" message answers.
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ChatRequest(RequestBody):
    model: ModelName
    messages: list[Message] = Field(default_factory=list, max_length=MAX_MESSAGES)
    think: bool | None = None
    tools: list[dict[str, Any]] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool = True
    format: Format = None
    options: Options | None = None
    keep_alive: str | int | float | None = None


class EmbedRequest(RequestBody):
    model: ModelName
    input: EmbedInputs
    truncate: bool = True
    options: Options | None = None
    keep_alive: str | int | float | None = None


class EmbeddingsRequest(RequestBody):
    """The legacy single-prompt embeddings endpoint."""

    model: ModelName
    prompt: str = Field(min_length=1)
    options: Options | None = None
    keep_alive: str | int | float | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return check_embed_inputs(v)  # type: ignore[return-value]


class ShowRequest(RequestBody):
    model: str | None = Field(default=None, max_length=MAX_MODEL_NAME_CHARS)
    name: str | None = Field(default=None, max_length=MAX_MODEL_NAME_CHARS)  # the field's older name

    def target(self) -> str:
        return self.model or self.name or ""


# --- model management: the bodies are checked here and handed to the model store as they are ---------


class _Named(RequestBody):
    """A body naming one model as ``model``, or ``name`` (the field's older name, still sent)."""

    model: str | None = Field(default=None, max_length=MAX_MODEL_NAME_CHARS)
    name: str | None = Field(default=None, max_length=MAX_MODEL_NAME_CHARS)

    def target(self) -> str:
        return self.model or self.name or ""


class DeleteRequest(_Named):
    pass


class PullRequest(_Named):
    insecure: bool = False
    stream: bool = True

    def store_body(self) -> dict[str, Any]:
        return {"model": self.target(), "insecure": self.insecure, "stream": self.stream}


class PushRequest(PullRequest):
    pass


class CopyRequest(RequestBody):
    source: str = Field(default="", max_length=MAX_MODEL_NAME_CHARS)
    destination: str = Field(default="", max_length=MAX_MODEL_NAME_CHARS)


class CreateRequest(_Named):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    from_: str | None = Field(default=None, alias="from", max_length=MAX_MODEL_NAME_CHARS)
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    license: str | list[str] | None = None
    quantize: str | None = None
    quantization: str | None = None
    stream: bool = True

    def store_body(self) -> dict[str, Any]:
        body = self.model_dump(by_alias=True, exclude_none=True, exclude={"name", "model"})
        return {**body, "model": self.target()}

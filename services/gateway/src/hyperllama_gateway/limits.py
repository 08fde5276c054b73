"""Every bound the gateway puts on a request, in one place, and the field types that carry them.

A value that passes these fits the internal protobuf request (int32/int64/float fields) and cannot
make one request cost the cluster more than its share. The body size limit (settings.max_body_bytes)
bounds everything else, including fields the gateway ignores (tools, keep_alive …).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, Field

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# Largest finite 32-bit float: sampling parameters travel as protobuf `float`.
FLOAT32_MAX = 3.4028234663852886e38

# Model names travel in gRPC metadata and are echoed in errors; real names ("library/model:tag",
# "hf.co/org/repo:quant") are far shorter.
MAX_MODEL_NAME_CHARS = 256
# Each stop list is compiled into an automaton per request (memory grows with its length); OpenAI
# allows 4, we allow a few more.
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
# A chat template renders every message; context length is checked only after rendering.
MAX_MESSAGES = 4096
# A schema becomes a grammar that the engine compiles before the request takes a slot.
MAX_SCHEMA_CHARS = 64 * 1024
# Deeper JSON than any real schema or message list; also keeps recursive code far from its limit.
MAX_JSON_DEPTH = 64
# OpenAI's bound on inputs per embedding request.
MAX_EMBED_INPUTS = 2048
# Longer than any embedding model's context (32k tokens at about 4 characters a token).
MAX_EMBED_INPUT_CHARS = 128 * 1024
# Choices in one request (OpenAI's n, times the prompts of a completions request): each is a stream
# of its own, and one request should not take more than a worker's slots.
MAX_CHOICES = 8
# Tokens a logit_bias may name (OpenAI allows 300; the map is applied on every decoding step).
MAX_LOGIT_BIAS = 1024
# Token ids in one token prompt: longer than any context served here.
MAX_PROMPT_TOKENS = 1 << 17
# Largest output length a client may ask for.
MAX_TOKENS_LIMIT = 1 << 20
# Echoed X-Request-Id: printable ASCII only (it goes back as a header and into logs).
MAX_CLIENT_REQUEST_ID_CHARS = 128
# X-HyperLlama-Engine names an engine (llamacpp, vllm, max); anything longer is not one.
MAX_ENGINE_CHARS = 32
# The scheduler's priority band (services/scheduler queue.rank clamps to the same range).
PRIORITY_MIN = 0
PRIORITY_MAX = 9

Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Float32 = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME_CHARS)]


def _check_texts(items: list[str], max_items: int, many: str, max_chars: int, one: str) -> None:
    if len(items) > max_items:
        raise ValueError(f"at most {max_items} {many} ({len(items)} given)")
    for s in items:
        if len(s) > max_chars:
            raise ValueError(f"{one} is at most {max_chars} characters ({len(s)} given)")


def check_stops(stop: str | list[str] | None) -> str | list[str] | None:
    """``stop`` on both APIs; raises ValueError naming the bound."""
    stops = [stop] if isinstance(stop, str) else (stop or [])
    _check_texts(stops, MAX_STOP_SEQUENCES, "stop sequences", MAX_STOP_CHARS, "a stop sequence")
    return stop


def check_embed_inputs(inputs: str | list[str]) -> str | list[str]:
    """An embedding request's inputs."""
    items = [inputs] if isinstance(inputs, str) else inputs
    if not items or any(not s for s in items):
        raise ValueError("input must be a non-empty string or a list of non-empty strings")
    _check_texts(items, MAX_EMBED_INPUTS, "inputs per request", MAX_EMBED_INPUT_CHARS, "an input")
    return inputs


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema (OpenAI json_schema.schema, Ollama format)."""
    size = len(json.dumps(schema))
    if size > MAX_SCHEMA_CHARS:
        raise ValueError(f"the schema is at most {MAX_SCHEMA_CHARS} characters of JSON ({size} given)")
    return schema


# Field types carrying the checks above, so each API declares them once per field.
StopList = Annotated[str | list[str] | None, AfterValidator(check_stops)]
EmbedInputs = Annotated[str | list[str], AfterValidator(check_embed_inputs)]
JsonSchema = Annotated[dict[str, Any], AfterValidator(check_schema)]

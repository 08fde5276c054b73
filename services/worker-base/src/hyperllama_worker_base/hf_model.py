"""Describing a Hugging Face model directory the way Ollama's /api/show and /api/tags do."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.hf_files import human_parameter_count, weights_of


def describe_hf_model(name: str, directory: Path, context_length: int) -> worker_pb2.ModelInfo:
    """ModelInfo for ``directory`` (config.json, *.safetensors, its chat template)."""
    config = json.loads((directory / "config.json").read_text())
    weights = sorted(directory.glob("*.safetensors"))
    summary = weights_of({path.name: path for path in weights})
    digest = hashlib.sha256()
    for path in weights:
        # The header and first tensors plus the config identify the weights without hashing
        # hundreds of megabytes at every start.
        with path.open("rb") as f:
            digest.update(f.read(1 << 20))
    digest.update((directory / "config.json").read_bytes())
    context = int(config.get("max_position_embeddings", 0))
    return worker_pb2.ModelInfo(
        name=name,
        family=str(config.get("model_type", "")),
        format="safetensors",
        parameter_size=human_parameter_count(summary.parameter_count),
        parameter_count=summary.parameter_count,
        quantization_level=summary.quantization,
        size_bytes=sum(p.stat().st_size for p in directory.iterdir() if p.is_file()),
        context_length=min(context_length, context) if context_length > 0 and context else context,
        digest="sha256:" + digest.hexdigest(),
        chat_template=chat_template(directory),
        embedding_length=int(config.get("hidden_size", 0)),
        modified_at_unix=int(max((p.stat().st_mtime for p in weights), default=0)),
        metadata={
            "general.architecture": str(config.get("model_type", "")),
            "source": str(directory),
        },
    )


def vocab_size(directory: Path) -> int:
    """Rows of the model's embedding table (config.json's vocab_size); 0 when it does not say."""
    config = json.loads((directory / "config.json").read_text())
    return int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size") or 0)


def end_tokens(directory: Path) -> frozenset[str]:
    """The text of the model's end-of-sequence tokens: the tokenizer's eos_token and the tokens that
    config.json and generation_config.json name by id."""

    def read(name: str) -> dict[str, Any]:
        path = directory / name
        data = json.loads(path.read_text()) if path.is_file() else {}
        return data if isinstance(data, dict) else {}

    ids: set[int] = set()
    for config in (read("config.json"), read("generation_config.json")):
        eos = config.get("eos_token_id")
        ids.update(t for t in (eos if isinstance(eos, list) else [eos]) if isinstance(t, int))
    texts = {
        str(a.get("content")) for a in read("tokenizer.json").get("added_tokens") or () if a.get("id") in ids
    }
    eos_token = read("tokenizer_config.json").get("eos_token")
    if isinstance(eos_token, dict):
        eos_token = eos_token.get("content")
    if isinstance(eos_token, str):
        texts.add(eos_token)
    return frozenset(texts)


def chat_template(directory: Path) -> str:
    """The model's chat template text as transformers finds it: chat_template.jinja, else
    tokenizer_config.json's (one template, or several by name, joined); "" when it has none."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):
        return "\n".join(str(t.get("template") or "") for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else ""


# generation_config.json's sampling fields, by the SamplingParams field each is the default of.
_GENERATION_FIELDS = {
    "temperature": ("temperature", float), "top_p": ("top_p", float), "top_k": ("top_k", int),
    "min_p": ("min_p", float), "repetition_penalty": ("repeat_penalty", float),
}  # fmt: skip


def generation_defaults(directory: Path) -> dict[str, float | int]:
    """The sampling values the model's generation_config.json sets, named as SamplingParams fields
    (repetition_penalty as repeat_penalty). Its do_sample is not read: vLLM ignores it too."""
    path = directory / "generation_config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    out: dict[str, float | int] = {}
    for key, (name, kind) in _GENERATION_FIELDS.items():
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = kind(value)
    return out

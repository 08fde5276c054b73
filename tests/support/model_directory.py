"""A tiny Hugging Face model directory laid out as real tools write one (config.json, a safetensors file
with a real header, tokenizer files), for the store's and the workers' handling of model directories.
It is no model an engine could run: the engines' own tests use the real smollm2 directory that
`make models` prepares."""

from __future__ import annotations

import json
import math


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A safetensors file: its JSON header, then zeroed tensor data (4 bytes an element)."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(offset)


TINY_MODEL_DIRECTORY = {
    "config.json": json.dumps({"model_type": "llama", "max_position_embeddings": 2048}).encode(),
    "model.safetensors": safetensors_bytes({"a": ("F32", [10, 100]), "b": ("F32", [24])}),
    "tokenizer.json": b'{"version": "1.0"}',
    "chat_template.jinja": b"{% for m in messages %}{{ m.content }}{% endfor %}",
}

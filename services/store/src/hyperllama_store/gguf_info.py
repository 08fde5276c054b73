"""GGUF metadata for the catalog, read with llama.cpp's ``gguf`` package.

The reader maps the file rather than reading it; only the header pages (key/values and tensor infos) are
touched, never tensor data. Parsing a header with a large vocabulary still takes a while, so results are
cached per blob digest: a blob's content never changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

GGUF_MAGIC = b"GGUF"
# Ollama's /api/show leaves out arrays longer than this unless asked to be verbose (vocabularies, merges).
_MAX_ARRAY_ITEMS = 5
# Architectures whose GGUF carries no pooling_type key but that only embed.
_EMBEDDING_ARCHES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder"})


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    file_type: str
    parameter_count: int
    context_length: int | None
    chat_template: str | None
    kind: str
    model_info: dict[str, Any] = field(default_factory=dict)
    # What one token's K and V take in an f16 KV cache over all layers; 0 when the metadata does not say.
    kv_bytes_per_token: int = 0

    @property
    def parameter_size(self) -> str:
        return human_number(self.parameter_count)

    @property
    def embedding_only(self) -> bool:
        return (
            f"{self.architecture}.pooling_type" in self.model_info or self.architecture in _EMBEDDING_ARCHES
        )


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def human_number(n: int) -> str:
    """A parameter count as Ollama writes it: 134515008 → "134.52M", 7000000000 → "7B"."""
    for scale, suffix, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.{decimals}f}{suffix}"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


def file_type_name(value: int | None) -> str:
    """general.file_type as Ollama names it ("Q4_1", "Q4_K_M", "F16")."""
    if value is None:
        return "unknown"
    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return "unknown"
    return name.removeprefix("ALL_").removeprefix("MOSTLY_")


def read_gguf_info(path: Path) -> GGUFInfo:
    reader = gguf.GGUFReader(path, "r")
    kv: dict[str, Any] = {}
    # Every key of the architecture in full: a per-layer head_count_kv array is longer than model_info keeps.
    arch_kv: dict[str, Any] = {}
    arch = _architecture(reader)
    arch_prefix = arch + "."
    for key, fld in reader.fields.items():
        # The reader reports the file header (version, counts) as fields of its own; they are no metadata.
        if key.startswith("GGUF.") or not fld.types:
            continue
        if key.startswith(arch_prefix):
            arch_kv[key.removeprefix(arch_prefix)] = _plain(fld.contents())
        if fld.types[0] == gguf.GGUFValueType.ARRAY and len(fld.data) > _MAX_ARRAY_ITEMS:
            kv[key] = None
            continue
        kv[key] = _plain(fld.contents())
    count = kv.get("general.parameter_count")
    if not isinstance(count, int):
        count = sum(int(tensor.n_elements) for tensor in reader.tensors)
    kv["general.parameter_count"] = count
    file_type = kv.get("general.file_type")
    template = kv.get("tokenizer.chat_template")
    ctx = kv.get(f"{arch}.context_length")
    return GGUFInfo(
        architecture=arch,
        file_type=file_type_name(file_type if isinstance(file_type, int) else None),
        parameter_count=count,
        context_length=ctx if isinstance(ctx, int) else None,
        chat_template=template if isinstance(template, str) else None,
        kind=str(kv.get("general.type") or "model"),
        model_info=dict(sorted(kv.items())),
        kv_bytes_per_token=kv_bytes_per_token(arch_kv),
    )


def _architecture(reader: gguf.GGUFReader) -> str:
    fld = reader.fields.get("general.architecture")
    value = _plain(fld.contents()) if fld is not None and fld.types else None
    return value if isinstance(value, str) and value else "unknown"


def kv_bytes_per_token(arch: dict[str, Any]) -> int:
    """Bytes one token's K and V take in an f16 KV cache over all layers, from an architecture's keys
    (``block_count``, ``attention.head_count``...; the ``<arch>.`` prefix taken off). 0 when unknown.

    Sliding-window and shared-KV layers are counted as full ones: an upper bound, which is what a memory
    estimate wants."""
    layers = arch.get("block_count")
    if not isinstance(layers, int) or layers <= 0:
        return 0
    heads = _per_layer(arch.get("attention.head_count"), layers)
    kv_heads = _per_layer(arch.get("attention.head_count_kv"), layers) or heads
    if not kv_heads:
        return 0
    key_length = arch.get("attention.key_length")
    value_length = arch.get("attention.value_length")
    if isinstance(key_length, int) and key_length > 0:
        kv_width = key_length + (
            value_length if isinstance(value_length, int) and value_length > 0 else key_length
        )
    else:
        embedding = arch.get("embedding_length")
        # head_count may vary per layer too (0 for a layer without attention): the first real one splits it.
        first = next((h for h in heads if h > 0), 0)
        if not isinstance(embedding, int) or not first:
            return 0
        kv_width = 2 * (embedding // first)
    f16 = 2
    return f16 * kv_width * sum(kv_heads)


def _per_layer(value: Any, layers: int) -> list[int]:
    """A per-layer count as one int per layer: a scalar repeats, an array is taken as it is."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value] * layers if value >= 0 else []
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return [int(v) for v in value]
    return []


def _plain(value: Any) -> Any:
    # numpy scalars do not serialise to JSON; bytes of a non-UTF-8 string are shown as text anyway.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class GGUFCache:
    """Parsed metadata per blob digest, for the process's lifetime."""

    def __init__(self) -> None:
        self._infos: dict[str, GGUFInfo] = {}
        self._lock = threading.Lock()

    def get(self, digest: str, path: Path) -> GGUFInfo:
        with self._lock:
            found = self._infos.get(digest)
        if found is not None:
            return found
        info = read_gguf_info(path)
        with self._lock:
            self._infos[digest] = info
        return info

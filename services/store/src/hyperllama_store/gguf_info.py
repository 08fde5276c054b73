"""GGUF metadata for the catalog, read from the file's header (read_header).

The file is mapped rather than read; only the header pages (key/values and tensor infos) are touched,
never tensor data. Results are cached per blob digest: a blob's content never changes.
"""

from __future__ import annotations

import math
import mmap
import struct
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
    header = read_header(path)
    kv: dict[str, Any] = {}
    # Every key of the architecture in full: a per-layer head_count_kv array is longer than model_info keeps.
    arch_kv: dict[str, Any] = {}
    found = header.kv.get("general.architecture")
    arch = found if isinstance(found, str) and found else "unknown"
    arch_prefix = arch + "."
    for key, value in header.kv.items():
        if key.startswith(arch_prefix):
            arch_kv[key.removeprefix(arch_prefix)] = value
        # Ollama's /api/show leaves long arrays out (null) unless asked to be verbose.
        long = isinstance(value, Skipped) or (isinstance(value, list) and len(value) > _MAX_ARRAY_ITEMS)
        kv[key] = None if long else value
    count = kv.get("general.parameter_count")
    if not isinstance(count, int):
        count = header.parameter_count
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


@dataclass(frozen=True)
class Skipped:
    """An array stepped over (a vocabulary, merges, scores): its length only."""

    length: int


@dataclass(frozen=True)
class Header:
    kv: dict[str, Any]
    parameter_count: int


# GGUF value types (gguf.GGUFValueType) of fixed size, as struct formats.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Numeric arrays up to this long are read whole: per-layer counts (head_count_kv of a model with
# hundreds of layers) feed the KV estimate. Longer ones (token scores, types) are stepped over.
_MAX_NUMERIC_ARRAY_READ = 4096


def read_header(path: Path) -> Header:
    """A GGUF file's key/values and its parameter count, from its header alone.

    gguf.GGUFReader builds an object for every element of every array: Gemma 3's 262k-token vocabulary
    took it about 20 s. Here long arrays are stepped over (strings by their lengths, numbers in one
    step), so a header takes a fraction of a second. Raises ValueError for a malformed header."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        try:
            return _parse(m)
        except struct.error as err:  # a count or length that runs past the file
            raise ValueError(f"malformed GGUF header: {err}") from None


def _parse(m: mmap.mmap) -> Header:
    if m[:4] != GGUF_MAGIC:
        raise ValueError("not a GGUF file")
    version, tensors, count = struct.unpack_from("<IQQ", m, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} is not supported")
    pos = 24
    kv: dict[str, Any] = {}
    for _ in range(count):
        key, pos = _string(m, pos)
        (kind,) = struct.unpack_from("<I", m, pos)
        kv[key], pos = _value(m, pos + 4, kind, key)
    parameters = 0
    for _ in range(tensors):
        _, pos = _string(m, pos)
        (dims,) = struct.unpack_from("<I", m, pos)
        parameters += math.prod(struct.unpack_from(f"<{dims}Q", m, pos + 4))
        pos += 4 + 8 * dims + 4 + 8  # the dimensions, then the tensor's type and offset
    return Header(kv, parameters)


def _string(m: mmap.mmap, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", m, pos)
    end = pos + 8 + length
    if end > len(m):
        raise ValueError("malformed GGUF header: a string runs past the end of the file")
    return m[pos + 8 : end].decode("utf-8", "replace"), end


def _value(m: mmap.mmap, pos: int, kind: int, key: str) -> tuple[Any, int]:
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        (value,) = struct.unpack_from(fmt, m, pos)
        return value, pos + struct.calcsize(fmt)
    if kind == _STRING:
        return _string(m, pos)
    if kind != _ARRAY:
        raise ValueError(f"malformed GGUF header: key {key} has an unknown value type {kind}")
    item, length = struct.unpack_from("<IQ", m, pos)
    pos += 12
    if item in _SCALARS:
        end = pos + struct.calcsize("<" + _SCALARS[item]) * length
        if end > len(m):
            raise ValueError(f"malformed GGUF header: array {key} runs past the end of the file")
        if length > _MAX_NUMERIC_ARRAY_READ:
            return Skipped(length), end
        return list(struct.unpack_from(f"<{length}{_SCALARS[item]}", m, pos)), end
    if item == _STRING:
        if length <= _MAX_ARRAY_ITEMS:
            strings = []
            for _ in range(length):
                text, pos = _string(m, pos)
                strings.append(text)
            return strings, pos
        for _ in range(length):  # each string stepped over by its length
            (size,) = struct.unpack_from("<Q", m, pos)
            pos += 8 + size
        return Skipped(length), pos
    raise ValueError(f"malformed GGUF header: array {key} holds items of an unsupported type {item}")


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

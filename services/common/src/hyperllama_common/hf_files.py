"""What a Hugging Face model directory says about itself: its files' names, its safetensors headers, its
parameter count. Shared by the model store (which keeps such a directory as one layer per file) and the
engine workers (which load it)."""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

# A file of the directory: a plain name, never a path (it becomes a file name in a worker's cache).
FILENAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A safetensors header is JSON before the tensors; a "header" larger than this is not one.
_MAX_HEADER = 100 * 2**20


def valid_filename(name: str) -> bool:
    return bool(FILENAME_RE.fullmatch(name)) and ".." not in name


def human_parameter_count(n: int) -> str:
    """134515008 -> '134.52M', as Ollama prints parameter sizes."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(n)


def safetensors_header(path: Path, name: str = "") -> dict[str, dict[str, object]]:
    """The tensors a safetensors file holds (name -> dtype, shape, offsets); ValueError if it is not one.
    ``name``: what to call the file in errors (a blob's own name is its digest)."""
    name = name or path.name
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{name} is not a safetensors file: it is {len(raw)} bytes long")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise ValueError(f"{name} is not a safetensors file: its header claims {size} bytes")
        try:
            header = json.loads(f.read(size))
        except ValueError as err:
            raise ValueError(f"{name} is not a safetensors file: {err}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{name} is not a safetensors file: its header is not a JSON object")
    header.pop("__metadata__", None)
    return header


@dataclass(frozen=True)
class Weights:
    parameter_count: int
    dtypes: tuple[str, ...]

    @property
    def quantization(self) -> str:
        return "/".join(self.dtypes)


def weights_of(files: dict[str, Path]) -> Weights:
    """Parameter count and dtypes over the safetensors ``files`` (file name -> path); ValueError for a
    file that is not one."""
    count = 0
    dtypes: set[str] = set()
    for filename, path in files.items():
        for name, tensor in safetensors_header(path, filename).items():
            try:
                shape: list[int] = [int(d) for d in tensor["shape"]]  # type: ignore[attr-defined]
                count += math.prod(shape)
                dtypes.add(str(tensor["dtype"]))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{filename}: tensor {name!r} has no dtype and shape") from None
    return Weights(count, tuple(sorted(dtypes)))

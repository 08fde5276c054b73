"""Describing a loaded GGUF model the way Ollama's /api/show and /api/tags do."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.hf_files import human_parameter_count

# llama.cpp's LLAMA_FTYPE values (general.file_type) and the names Ollama shows for them.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}  # fmt: skip


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def describe(
    name: str, path: Path, metadata: dict[str, str], n_params: int, n_ctx: int, digest: str = ""
) -> worker_pb2.ModelInfo:
    arch = metadata.get("general.architecture", "")
    file_type = metadata.get("general.file_type", "")
    quant = _FILE_TYPES.get(int(file_type), f"type{file_type}") if file_type.isdigit() else ""
    stat = path.stat()
    return worker_pb2.ModelInfo(
        name=name,
        family=arch,
        format="gguf",
        parameter_size=human_parameter_count(n_params),
        parameter_count=n_params,
        quantization_level=quant,
        size_bytes=stat.st_size,
        context_length=n_ctx,
        digest=digest or file_digest(path),
        chat_template=metadata.get("tokenizer.chat_template", ""),
        embedding_length=int(metadata.get(f"{arch}.embedding_length", "0") or 0),
        modified_at_unix=int(stat.st_mtime),
        metadata={k: v for k, v in metadata.items() if not k.startswith("tokenizer.") and len(v) < 256},
    )

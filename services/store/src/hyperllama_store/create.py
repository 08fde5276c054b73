"""Ollama's JSON create: a new manifest from an existing model and/or uploaded files (one GGUF blob, or the
files of a Hugging Face safetensors directory for the engines that load those), with template,
system, parameters, messages and license layers, and the NDJSON status lines Ollama's create streams.

Everything a client can get wrong is checked in ``plan_create`` before the first line is sent, so those
errors keep their status code; only failures while writing end the stream with an error line. A ``from``
model that is not in the store is pulled inside the create stream, as Ollama does; its progress comes first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hyperllama_common.errors import InvalidRequest, ModelNotFound, quote
from hyperllama_common.hf_files import human_parameter_count, valid_filename, weights_of
from pydantic import BaseModel, ConfigDict, Field

from hyperllama_store.catalog import CatalogEntry
from hyperllama_store.gguf_info import GGUFInfo, is_gguf
from hyperllama_store.gojson import go_json
from hyperllama_store.manifest import (
    CONFIG_MEDIA_TYPE,
    MEDIA_HF_FILE,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
)
from hyperllama_store.names import ModelName, parse_digest
from hyperllama_store.registry import resolve
from hyperllama_store.store import Store


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str = ""


class CreateRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    model: str = Field(min_length=1)
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    license: str | list[str] | None = None
    quantize: str | None = None
    quantization: str | None = None
    stream: bool | None = None
    # For a ``from`` that has to be pulled from a plain-http registry.
    insecure: bool = False


@dataclass
class _Base:
    layer: Layer
    info: GGUFInfo | None = None
    status: str | None = None


@dataclass
class CreatePlan:
    name: ModelName
    request: CreateRequest
    base: list[_Base]
    config: dict[str, Any]
    parsed_gguf: bool = False
    existing_params: dict[str, Any] = field(default_factory=dict)
    # Set when ``from`` is not in the store: pulled first, then read as the base.
    pull_from: ModelName | None = None
    # The uploaded GGUF, or the files of a model directory, that replace the base's model layers.
    model_files: list[_Base] = field(default_factory=list)
    # What the uploaded model directory says of itself (format, family, size, dtypes), for the config.
    model_config: dict[str, Any] = field(default_factory=dict)


async def plan_create(store: Store, req: CreateRequest) -> CreatePlan:
    name = ModelName.parse(req.model)
    if req.quantize or req.quantization:
        raise InvalidRequest(
            "quantize is not supported yet: import a quantized GGUF instead", param="quantize"
        )
    if req.adapters:
        raise InvalidRequest("adapters are not supported yet", param="adapters")
    if not req.from_ and not req.files:
        raise InvalidRequest("neither 'from' or 'files' was specified", param="from")
    plan = CreatePlan(name, req, [], {})
    if req.from_:
        # A scheme or plain http without insecure is refused here, before the stream starts.
        source, _ = resolve(req.from_, insecure=req.insecure)
        try:
            entry = await asyncio.to_thread(store.catalog.get, source)
        except ModelNotFound:
            plan.pull_from = source
        else:
            await _use_base(store, plan, entry)
    if req.files:
        if len(req.files) == 1 and not _directory_file(next(iter(req.files))):
            await _plan_gguf(store, plan, *next(iter(req.files.items())))
        else:
            await asyncio.to_thread(_plan_directory, store, plan, req.files)
    return plan


def _directory_file(filename: str) -> bool:
    """A file that only makes sense in a model directory (a lone GGUF may have any name)."""
    return filename.endswith((".safetensors", ".json", ".jinja"))


def _blob(store: Store, filename: str, raw: str) -> tuple[str, Path]:
    digest = parse_digest(raw)
    path = store.layout.blob_path(digest)
    if not path.is_file():
        raise InvalidRequest(
            f"blob {digest} for {quote(filename)!r} not found: upload it first", param="files"
        )
    return digest, path


async def _plan_gguf(store: Store, plan: CreatePlan, filename: str, raw: str) -> None:
    digest, path = _blob(store, filename, raw)
    if not await asyncio.to_thread(is_gguf, path):
        raise InvalidRequest(f"{quote(filename)!r} is not a GGUF file", param="files")
    info = await asyncio.to_thread(_gguf_info, store, digest)
    layer = Layer(MEDIA_MODEL, digest, path.stat().st_size)
    plan.model_files = [_Base(layer, info, f"using existing layer {digest}")]
    plan.parsed_gguf = True


def _plan_directory(store: Store, plan: CreatePlan, files: dict[str, str]) -> None:
    """A Hugging Face model directory: config.json and safetensors weights (and tokenizer files), kept
    as they are, one layer per file, for the engines that load such a directory (vLLM, MAX)."""
    paths: dict[str, Path] = {}
    for filename, raw in sorted(files.items()):
        if not valid_filename(filename):
            raise InvalidRequest(
                f"{quote(filename)!r} is not a plain file name (letters, digits, '.', '_', '-')",
                param="files",
            )
        digest, path = _blob(store, filename, raw)
        paths[filename] = path
        layer = Layer(MEDIA_HF_FILE, digest, path.stat().st_size, filename)
        plan.model_files.append(_Base(layer, None, f"using existing layer {digest}"))
    if "config.json" not in paths:
        raise InvalidRequest(
            "a model directory needs its config.json (or give a single GGUF file)", param="files"
        )
    try:
        config = json.loads(paths["config.json"].read_bytes())
    except (OSError, ValueError) as err:
        raise InvalidRequest(f"config.json is not valid JSON: {err}", param="files") from None
    if not isinstance(config, dict):
        raise InvalidRequest("config.json is not a JSON object", param="files")
    weights = {name: path for name, path in paths.items() if name.endswith(".safetensors")}
    if not weights:
        raise InvalidRequest("a model directory needs its *.safetensors weights", param="files")
    try:
        summary = weights_of(weights)
    except (OSError, ValueError) as err:
        raise InvalidRequest(str(err), param="files") from None
    family = str(config.get("model_type") or "")
    plan.model_config = {
        "model_format": "safetensors",
        "model_family": family,
        "model_families": [family] if family else [],
        "model_type": human_parameter_count(summary.parameter_count),
        "file_type": summary.quantization,
    }


async def _use_base(store: Store, plan: CreatePlan, entry: CatalogEntry) -> None:
    for layer in entry.manifest.layers:
        info = None
        if layer.media_type == MEDIA_MODEL and entry.model_blob == layer.digest:
            info = await asyncio.to_thread(_gguf_info, store, layer.digest)
        plan.base.append(_Base(layer, info, f"using existing layer {layer.digest}"))
    plan.config = {k: v for k, v in entry.config.items() if k != "rootfs"}
    plan.existing_params = dict(entry.parameters)


def _with_model_file(plan: CreatePlan) -> CreatePlan:
    """Uploaded model files replace the base's; their metadata describes the model from now on."""
    if not plan.model_files:
        return plan
    kept = [b for b in plan.base if b.layer.media_type not in (MEDIA_MODEL, MEDIA_HF_FILE)]
    known = ("model_format", "model_family", "model_families", "model_type", "file_type")
    config = {k: v for k, v in plan.config.items() if k not in known}
    return replace(plan, base=[*plan.model_files, *kept], config={**plan.model_config, **config})


def _gguf_info(store: Store, digest: str) -> GGUFInfo | None:
    path = store.layout.blob_path(digest)
    try:
        if not is_gguf(path):
            return None
        return store.catalog.gguf.get(digest, path)
    except (OSError, ValueError) as err:
        raise InvalidRequest(f"cannot read the GGUF blob {digest}: {err}") from err


async def run_create(
    store: Store, plan: CreatePlan, pulled: AsyncIterator[dict[str, Any]] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Yield Ollama's status objects; the caller turns a raised error after the first into an error line.
    ``pulled`` is the progress of the pull of ``plan.pull_from``, passed on before the create's own."""
    if pulled is not None:
        async for event in pulled:
            yield event
    if plan.pull_from is not None:
        try:
            entry = await asyncio.to_thread(store.catalog.get, plan.pull_from)
        except ModelNotFound:
            raise ModelNotFound(f"model '{quote(plan.pull_from.display)}' not found", param="from") from None
        await _use_base(store, plan, entry)
    plan = _with_model_file(plan)
    if plan.parsed_gguf:
        yield {"status": "parsing GGUF"}
    # The lock is not held across a yield: a client that stops reading must not stall other writers.
    async with store.lock:
        statuses = _write(store, plan)
    for status in statuses:
        yield {"status": status}
    yield {"status": "success"}


def _write(store: Store, plan: CreatePlan) -> list[str]:
    """Write the new layers, the config and the manifest; the status lines that tell what was done."""
    req = plan.request
    layers = [b.layer for b in plan.base]
    statuses = {b.layer.digest: b.status for b in plan.base if b.status}
    config = dict(plan.config)
    for b in plan.base:
        if b.info is not None and b.layer.media_type == MEDIA_MODEL:
            config.setdefault("model_format", "gguf")
            config.setdefault("model_family", b.info.architecture)
            config.setdefault("model_families", [b.info.architecture])
            config.setdefault("model_type", b.info.parameter_size)
            config.setdefault("file_type", b.info.file_type)

    def add(media_type: str, data: bytes, replace: bool = True) -> None:
        nonlocal layers
        if replace:
            layers = [layer for layer in layers if layer.media_type != media_type]
        blob = store.blobs.write_small(data)
        layer = Layer(media_type, blob.digest, blob.size)
        layers.append(layer)
        verb = "creating new" if blob.created else "using existing"
        statuses[layer.digest] = f"{verb} layer {layer.digest}"

    if req.template:
        add(MEDIA_TEMPLATE, req.template.encode())
    if req.system:
        add(MEDIA_SYSTEM, req.system.encode())
    licenses = [req.license] if isinstance(req.license, str) else req.license or []
    for text in licenses:
        if text:
            add(MEDIA_LICENSE, text.encode(), replace=False)
    # New parameters override the base's, which are kept otherwise (as in Ollama).
    params = {**plan.existing_params, **(req.parameters or {})}
    if params:
        add(MEDIA_PARAMS, go_json(params, sort_keys=True))
    if req.messages:
        add(MEDIA_MESSAGES, go_json([m.model_dump() for m in req.messages]))

    config_blob = store.blobs.write_small(go_json(_config_json(config, [layer.digest for layer in layers])))
    manifest = Manifest(Layer(CONFIG_MEDIA_TYPE, config_blob.digest, config_blob.size), tuple(layers))
    store.layout.write_manifest(plan.name, manifest.encode())
    done = [status for layer in layers if (status := statuses.get(layer.digest))]
    return [*done, "writing manifest"]


def _config_json(config: dict[str, Any], diff_ids: list[str]) -> dict[str, Any]:
    # Ollama's ConfigV2 field order; keys a base model's config has beyond these are kept before the
    # platform fields.
    known = ("model_format", "model_family", "model_families", "model_type", "file_type")
    body = {key: config.get(key, [] if key == "model_families" else "") for key in known}
    for key, value in config.items():
        if key not in body and key not in ("architecture", "os", "rootfs"):
            body[key] = value
    body["architecture"] = config.get("architecture") or "amd64"
    body["os"] = config.get("os") or "linux"
    body["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    return body

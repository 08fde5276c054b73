"""Ollama's JSON create: a new manifest from an existing model and/or an uploaded GGUF blob, with template,
system, parameters, messages and license layers, and the NDJSON status lines Ollama's create streams.

Everything a client can get wrong is checked in ``plan_create`` before the first line is sent, so those
errors keep their status code; only failures while writing end the stream with an error line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from hyperllama_common.errors import InvalidRequest, ModelNotFound, quote
from pydantic import BaseModel, ConfigDict, Field

from hyperllama_store.gguf_info import GGUFInfo, is_gguf
from hyperllama_store.gojson import go_json
from hyperllama_store.manifest import (
    CONFIG_MEDIA_TYPE,
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
    base: list[_Base] = []
    config: dict[str, Any] = {}
    existing_params: dict[str, Any] = {}
    if req.from_:
        source = ModelName.parse(req.from_)
        try:
            entry = store.catalog.get(source)
        except ModelNotFound:
            # Pulling a missing base inside the create stream comes with the registry client.
            raise ModelNotFound(f"model '{quote(req.from_)}' not found", param="from") from None
        for layer in entry.manifest.layers:
            info = None
            if layer.media_type == MEDIA_MODEL and entry.model_blob == layer.digest:
                info = await asyncio.to_thread(_gguf_info, store, layer.digest)
            base.append(_Base(layer, info, f"using existing layer {layer.digest}"))
        config = {k: v for k, v in entry.config.items() if k != "rootfs"}
        existing_params = dict(entry.parameters)
    parsed = False
    if req.files:
        if len(req.files) != 1:
            raise InvalidRequest("only one GGUF file is supported", param="files")
        (filename, raw), *_ = req.files.items()
        digest = parse_digest(raw)
        path = store.layout.blob_path(digest)
        if not path.is_file():
            raise InvalidRequest(
                f"blob {digest} for {quote(filename)!r} not found: upload it first", param="files"
            )
        if not await asyncio.to_thread(is_gguf, path):
            raise InvalidRequest(f"{quote(filename)!r} is not a GGUF file", param="files")
        info = await asyncio.to_thread(_gguf_info, store, digest)
        # A new model file replaces the base's; its metadata describes the model from now on.
        base = [b for b in base if b.layer.media_type != MEDIA_MODEL]
        base.insert(
            0, _Base(Layer(MEDIA_MODEL, digest, path.stat().st_size), info, f"using existing layer {digest}")
        )
        for key in ("model_format", "model_family", "model_families", "model_type", "file_type"):
            config.pop(key, None)
        parsed = True
    return CreatePlan(name, req, base, config, parsed, existing_params)


def _gguf_info(store: Store, digest: str) -> GGUFInfo | None:
    path = store.layout.blob_path(digest)
    try:
        if not is_gguf(path):
            return None
        return store.catalog.gguf.get(digest, path)
    except (OSError, ValueError) as err:
        raise InvalidRequest(f"cannot read the GGUF blob {digest}: {err}") from err


async def run_create(store: Store, plan: CreatePlan) -> AsyncIterator[dict[str, Any]]:
    """Yield Ollama's status objects; the caller turns a raised error after the first into an error line."""
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

"""The catalog: one entry per manifest with what /api/tags, /api/show and /v1/models report."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from hyperllama_common.errors import ModelNotFound, quote

from hyperllama_store.gguf_info import GGUFCache, GGUFInfo, is_gguf
from hyperllama_store.layout import Layout
from hyperllama_store.manifest import (
    MEDIA_HF_FILE,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Manifest,
    digest_of,
)
from hyperllama_store.names import ModelName

log = logging.getLogger(__name__)

# Text layers are small; one far larger than this is not read into a catalog entry.
_MAX_TEXT_LAYER = 1024 * 1024


@dataclass(frozen=True)
class CatalogEntry:
    name: ModelName
    digest: str
    manifest: Manifest
    modified_at: datetime
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str
    context_length: int | None
    template: str | None
    template_from_layer: bool
    system: str | None
    parameters: dict[str, Any]
    license: list[str]
    messages: list[dict[str, Any]]
    model_info: dict[str, Any]
    capabilities: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    # f16 K and V of one token over all layers (0: not a GGUF, or its metadata does not say).
    kv_bytes_per_token: int = 0

    @property
    def size(self) -> int:
        return self.manifest.size

    @property
    def model_blob(self) -> str | None:
        layer = self.manifest.layer(MEDIA_MODEL)
        return layer.digest if layer else None

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": self.families or None,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def summary(self) -> dict[str, Any]:
        """An /api/tags item."""
        return {
            "name": self.name.display,
            "model": self.name.display,
            "modified_at": self.modified_at.isoformat(),
            "size": self.size,
            "digest": self.digest.removeprefix("sha256:"),
            "details": self.details(),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "full_name": str(self.name),
            "context_length": self.context_length,
            "template": self.template,
            "system": self.system,
            "parameters": self.parameters,
            "license": self.license,
            "messages": self.messages,
            "capabilities": self.capabilities,
            "layers": [layer.to_json() for layer in self.manifest.layers],
        }


class Catalog:
    def __init__(self, layout: Layout, gguf_cache: GGUFCache | None = None) -> None:
        self.layout = layout
        self.gguf = gguf_cache or GGUFCache()
        # Entries keyed by manifest digest: a manifest's bytes fix everything in its entry but the mtime.
        self._entries: dict[str, CatalogEntry] = {}
        self._lock = threading.Lock()

    def list(self) -> list[CatalogEntry]:
        entries = []
        for name, path in self.layout.list_manifests():
            try:
                entries.append(self._entry(name, path.read_bytes(), path.stat().st_mtime))
            except (OSError, ValueError) as err:
                log.warning("skipping model %s: %s", name, err)
        return entries

    def get(self, name: ModelName) -> CatalogEntry:
        path = self.layout.manifest_path(name)
        try:
            data = path.read_bytes()
            mtime = path.stat().st_mtime
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ModelNotFound(f"model '{quote(name.display)}' not found", param="model") from None
        # The name as stored, whatever case the request used.
        stored = ModelName(*path.relative_to(self.layout.manifests).parts)
        return self._entry(stored, data, mtime)

    def _entry(self, name: ModelName, data: bytes, mtime: float) -> CatalogEntry:
        digest = digest_of(data)
        modified = datetime.fromtimestamp(mtime, UTC)
        with self._lock:
            cached = self._entries.get(digest)
        if cached is not None:
            # A copy has the same manifest bytes under another name.
            return replace(cached, name=name, modified_at=modified)
        entry = self._build(name, digest, Manifest.decode(data), modified)
        with self._lock:
            self._entries[digest] = entry
        return entry

    def _build(self, name: ModelName, digest: str, manifest: Manifest, modified: datetime) -> CatalogEntry:
        config = self._json_blob(manifest.config.digest) or {}
        info = self._gguf(manifest)
        template = self._text(manifest, MEDIA_TEMPLATE)
        params = self._json_layer(manifest, MEDIA_PARAMS)
        messages = self._json_layer(manifest, MEDIA_MESSAGES)
        licenses = [
            text
            for layer in manifest.layers
            if layer.media_type == MEDIA_LICENSE and (text := self._read_text(layer.digest)) is not None
        ]
        # A model directory's own config.json and tokenizer_config.json (small JSON files).
        hf_config = self._hf_json(manifest, "config.json")
        hf_template = self._hf_text(manifest, "chat_template.jinja") or self._hf_json(
            manifest, "tokenizer_config.json"
        ).get("chat_template")
        fmt = str(config.get("model_format") or ("gguf" if info else "safetensors"))
        family = str(config.get("model_family") or (info.architecture if info else ""))
        families = config.get("model_families") or ([family] if family else [])
        return CatalogEntry(
            name=name,
            digest=digest,
            manifest=manifest,
            modified_at=modified,
            format=fmt,
            family=family,
            families=[str(f) for f in families],
            parameter_size=str(config.get("model_type") or (info.parameter_size if info else "")),
            quantization_level=str(config.get("file_type") or (info.file_type if info else "")),
            context_length=info.context_length if info else _int(hf_config.get("max_position_embeddings")),
            template=template if template is not None else _own_template(info, hf_template),
            template_from_layer=template is not None,
            system=self._text(manifest, MEDIA_SYSTEM),
            parameters=params if isinstance(params, dict) else {},
            license=licenses,
            messages=messages if isinstance(messages, list) else [],
            model_info=info.model_info if info else {},
            capabilities=_capabilities(info),
            config=config,
            kv_bytes_per_token=info.kv_bytes_per_token if info else 0,
        )

    def _gguf(self, manifest: Manifest) -> GGUFInfo | None:
        layer = manifest.layer(MEDIA_MODEL)
        if layer is None:
            return None
        path = self.layout.blob_path(layer.digest)
        try:
            if not is_gguf(path):
                return None
            return self.gguf.get(layer.digest, path)
        except Exception as err:
            # One unreadable blob must not take the whole listing down with it.
            log.warning("cannot read GGUF metadata of %s: %s", layer.digest, err)
            return None

    def _read_text(self, digest: str) -> str | None:
        try:
            path = self.layout.blob_path(digest)
            if path.stat().st_size > _MAX_TEXT_LAYER:
                return None
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def _text(self, manifest: Manifest, media_type: str) -> str | None:
        layer = manifest.layer(media_type)
        return self._read_text(layer.digest) if layer else None

    def _json_blob(self, digest: str) -> Any:
        text = self._read_text(digest)
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def _hf_text(self, manifest: Manifest, filename: str) -> str | None:
        layer = next(
            (x for x in manifest.layers if x.media_type == MEDIA_HF_FILE and x.filename == filename), None
        )
        return self._read_text(layer.digest) if layer else None

    def _hf_json(self, manifest: Manifest, filename: str) -> dict[str, Any]:
        text = self._hf_text(manifest, filename)
        try:
            value = json.loads(text) if text else None
        except ValueError:
            value = None
        return value if isinstance(value, dict) else {}

    def _json_layer(self, manifest: Manifest, media_type: str) -> Any:
        layer = manifest.layer(media_type)
        return self._json_blob(layer.digest) if layer else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _own_template(info: GGUFInfo | None, directory_template: Any) -> str | None:
    """The model's own (Jinja) chat template: the GGUF's, or a model directory's (chat_template.jinja,
    else tokenizer_config.json's chat_template)."""
    if info is not None:
        return info.chat_template
    return directory_template if isinstance(directory_template, str) else None


def _capabilities(info: GGUFInfo | None) -> list[str]:
    # As Ollama: a model with a pooling type embeds and does not complete.
    if info is not None and info.embedding_only:
        return ["embedding"]
    # Tools work with every model that completes: the gateway describes them in a generic format and
    # constrains a required call to the functions' schemas (hyperllama_gateway.tools).
    return ["completion", "tools"]

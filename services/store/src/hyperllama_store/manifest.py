"""The image manifest as Ollama writes it: Docker's schema 2 manifest with Ollama's layer media types."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from hyperllama_common.errors import InvalidRequest

from hyperllama_store.names import parse_digest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
# One file of a Hugging Face model directory (config.json, tokenizer files, *.safetensors) for the engines
# that load such a directory (vLLM, MAX); its file name is the layer's OCI title annotation.
MEDIA_HF_FILE = "application/vnd.hyperllama.huggingface.file"
TITLE_ANNOTATION = "org.opencontainers.image.title"


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int
    # The file name a layer of a model directory has there (empty for Ollama's layers).
    filename: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.filename:
            body["annotations"] = {TITLE_ANNOTATION: self.filename}
        return body


@dataclass(frozen=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...]
    media_type: str = MANIFEST_MEDIA_TYPE

    @property
    def size(self) -> int:
        """What Ollama reports as a model's size: its layers and its config."""
        return self.config.size + sum(layer.size for layer in self.layers)

    @property
    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    def layer(self, media_type: str) -> Layer | None:
        """The last layer of a kind: Ollama lets a later layer override an earlier one."""
        found = None
        for layer in self.layers:
            if layer.media_type == media_type:
                found = layer
        return found

    def encode(self) -> bytes:
        """Compact JSON with a trailing newline, key order as Ollama's encoder writes it."""
        body = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data)
            config = _layer(body["config"])
            layers = tuple(_layer(item) for item in body.get("layers") or ())
            media_type = body.get("mediaType") or MANIFEST_MEDIA_TYPE
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InvalidRequest(f"invalid manifest: {err}") from err
        return cls(config=config, layers=layers, media_type=str(media_type))


def _layer(item: dict[str, Any]) -> Layer:
    annotations = item.get("annotations") or {}
    filename = str(annotations.get(TITLE_ANNOTATION) or "") if isinstance(annotations, dict) else ""
    return Layer(str(item["mediaType"]), parse_digest(str(item["digest"])), int(item["size"]), filename)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()

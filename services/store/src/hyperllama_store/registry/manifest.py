"""Image manifests as the registry transfers them: checked for shape, kept as the exact bytes received."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..names import InvalidName, parse_digest
from .errors import RegistryError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"
_INDEXES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
# A model manifest is a few KiB; anything far larger is not one.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Manifest:
    data: bytes
    media_type: str
    config: Layer | None
    layers: tuple[Layer, ...]

    @property
    def blobs(self) -> list[Layer]:
        """Layers then the config, each digest once: what a pull fetches and a push uploads."""
        seen: set[str] = set()
        result = []
        for layer in (*self.layers, *([self.config] if self.config else [])):
            if layer.digest not in seen:
                seen.add(layer.digest)
                result.append(layer)
        return result


def _layer(value: object, where: str) -> Layer:
    if not isinstance(value, dict):
        raise RegistryError(f"invalid manifest: {where} is not an object")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"invalid manifest: {where} has no valid size")
    try:
        digest = parse_digest(value.get("digest", ""))
    except InvalidName as err:
        raise RegistryError(f"invalid manifest: {where} has no valid sha256 digest") from err
    media_type = value.get("mediaType", "")
    return Layer(digest, size, media_type if isinstance(media_type, str) else "")


def parse_manifest(data: bytes, content_type: str = "") -> Manifest:
    """Check ``data`` is a schema-2 image manifest (Docker or OCI) and read its blobs."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise RegistryError("invalid manifest: too large")
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise RegistryError("invalid manifest: not JSON") from err
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise RegistryError("invalid manifest: not a schema version 2 manifest")
    media_type = doc.get("mediaType") or content_type.split(";")[0].strip() or DOCKER_MANIFEST
    if media_type in _INDEXES or "manifests" in doc:
        raise RegistryError("unsupported manifest: an image index, not a model manifest")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise RegistryError("invalid manifest: no layers")
    config = _layer(doc["config"], "config") if doc.get("config") is not None else None
    return Manifest(data, media_type, config, tuple(_layer(v, f"layer {i}") for i, v in enumerate(layers)))

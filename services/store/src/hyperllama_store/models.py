"""Copy and delete: a copy is a second manifest naming the same blobs; a delete removes the manifest, then
the blobs no other manifest uses."""

from __future__ import annotations

from hyperllama_common.errors import ModelNotFound, quote

from hyperllama_store.manifest import Manifest
from hyperllama_store.names import ModelName
from hyperllama_store.store import Store


async def copy_model(store: Store, source: str, destination: str) -> ModelName:
    src = ModelName.parse(source)
    dst = ModelName.parse(destination)
    async with store.lock:
        data = store.layout.read_manifest(src)
        if data is None:
            raise ModelNotFound(f"model '{quote(source)}' not found", param="source")
        store.layout.write_manifest(dst, data)
    return dst


async def delete_model(store: Store, model: str) -> list[str]:
    """Remove ``model``; the digests of the blobs that went with it."""
    name = ModelName.parse(model)
    async with store.lock:
        data = store.layout.read_manifest(name)
        if data is None:
            raise ModelNotFound(f"model '{quote(model)}' not found", param="model")
        store.layout.delete_manifest(name)
        try:
            used = Manifest.decode(data).digests
        except ValueError:
            return []
        # Only this model's blobs are candidates: an uploaded blob waiting for its create stays.
        return store.layout.remove_unused_blobs(used)

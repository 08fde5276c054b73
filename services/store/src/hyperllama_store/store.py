"""The store's state, built once in ``main()`` and passed down: layout, blob writer, catalog and the lock
that keeps a blob sweep from racing a manifest write."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hyperllama_store.blobs import BlobWriter
from hyperllama_store.catalog import Catalog
from hyperllama_store.layout import Layout


@dataclass
class Store:
    layout: Layout
    blobs: BlobWriter
    catalog: Catalog
    # Held while manifests are written or blobs swept; a create's new blobs are only safe from a sweep
    # once its manifest names them.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def open(cls, layout: Layout, quota_bytes: int = 0) -> Store:
        return cls(layout=layout, blobs=BlobWriter(layout, quota_bytes), catalog=Catalog(layout))

"""What the model store holds, as placement needs it: asked only for models no worker serves, and
never cached, so a model deleted a moment ago is not loaded again."""

from __future__ import annotations

import httpx
from hyperllama_common.errors import InvalidRequest, ModelNotFound, Unavailable, quote
from hyperllama_common.model_source import MEDIA_DIRECTORY_FILE, MEDIA_MODEL

from hyperllama_scheduler.load_placement import CatalogModel

# The layers a worker fetches to load a model: a GGUF, or the files of a model directory.
_MODEL_MEDIA = (MEDIA_MODEL, MEDIA_DIRECTORY_FILE)


class StoreCatalog:
    def __init__(self, store_url: str, timeout: float = 10.0):
        self._http = httpx.AsyncClient(base_url=store_url.rstrip("/"), timeout=timeout)

    async def describe(self, name: str) -> CatalogModel:
        """The store's model by any name Ollama accepts for it; ModelNotFound if it has none."""
        try:
            reply = await self._http.post("/store/show", json={"model": name})
        except httpx.HTTPError as err:
            raise Unavailable(f"the model store cannot be reached: {type(err).__name__}") from None
        if reply.status_code == 404:
            raise ModelNotFound(f"model '{quote(name)}' not found", param="model")
        if reply.status_code == 400:
            raise InvalidRequest(_error_text(reply), param="model")
        if reply.status_code != 200:
            raise Unavailable(f"the model store answered {reply.status_code}: {_error_text(reply)}")
        body = reply.json()
        return CatalogModel(
            name=str(body["name"]),
            digest="sha256:" + str(body.get("digest", "")).removeprefix("sha256:"),
            format=str(body.get("details", {}).get("format") or ""),
            size=int(body.get("size") or 0),
            kv_bytes_per_token=int(body.get("kv_bytes_per_token") or 0),
            blobs=tuple(
                str(layer["digest"])
                for layer in body.get("layers", [])
                if layer.get("mediaType") in _MODEL_MEDIA
            ),
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def _error_text(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("error") or reply.text)[:300]
    except (ValueError, AttributeError):
        return reply.text[:300]

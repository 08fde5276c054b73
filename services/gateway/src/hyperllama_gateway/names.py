"""One spelling per model name, for comparing names the way Ollama resolves them."""

from __future__ import annotations

_DEFAULT_PREFIX = "registry.ollama.ai/library/"


def name_key(name: str) -> str:
    """Without the default registry and namespace, with its tag (``latest`` if none), lower case."""
    name = name.lower().removeprefix(_DEFAULT_PREFIX)
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"

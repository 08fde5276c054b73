"""Ollama's Modelfile: parsed into the JSON body of ``/api/create``, and the typed model options that
``PARAMETER`` and the REPL's ``/set parameter`` take."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every option Ollama's API takes, by type; a name outside these is an error, as in Ollama.
_INTS = {
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "num_predict", "seed",
    "top_k", "repeat_last_n", "mirostat", "num_gqa",
}  # fmt: skip
_FLOATS = {
    "temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
    "frequency_penalty", "mirostat_tau", "mirostat_eta", "tfs_z",
}  # fmt: skip
_BOOLS = {"penalize_newline", "use_mmap", "use_mlock", "numa", "low_vram", "vocab_only", "f16_kv"}
_LISTS = {"stop"}
ROLES = ("system", "user", "assistant", "tool")


class ModelfileError(ValueError):
    pass


def typed_parameter(name: str, values: list[str]) -> Any:
    """A PARAMETER's value as the API wants it: ``num_ctx 4096`` -> 4096, ``stop`` -> a list."""
    if name in _LISTS:
        return list(values)
    if len(values) != 1:
        raise ModelfileError(f"parameter '{name}' takes one value, got {len(values)}")
    raw = values[0]
    try:
        if name in _INTS:
            return int(raw)
        if name in _FLOATS:
            return float(raw)
    except ValueError:
        kind = "an integer" if name in _INTS else "a number"
        raise ModelfileError(f"parameter '{name}' must be {kind}, not '{raw}'") from None
    if name in _BOOLS:
        if raw.lower() not in ("true", "false"):
            raise ModelfileError(f"parameter '{name}' must be true or false, not '{raw}'")
        return raw.lower() == "true"
    raise ModelfileError(f"unknown parameter '{name}'")


@dataclass
class Modelfile:
    source: str = ""  # FROM: a model name, or a GGUF file or a safetensors directory on this machine
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)


def _read_value(lines: list[str], i: int, rest: str) -> tuple[str, int]:
    """The value after an instruction: ``\"\"\"...\"\"\"`` (may span lines), ``"..."``, or the rest of the
    line. Returns it and the index of the next line."""
    if rest.startswith('"""'):
        body = rest[3:]
        parts = []
        while True:
            end = body.find('"""')
            if end >= 0:
                parts.append(body[:end])
                if body[end + 3 :].strip():
                    raise ModelfileError(f'line {i + 1}: text after the closing """')
                return "\n".join(parts), i + 1
            parts.append(body)
            i += 1
            if i >= len(lines):
                raise ModelfileError('unterminated """ at the end of the Modelfile')
            body = lines[i]
    if rest.startswith('"'):
        if len(rest) < 2 or not rest.endswith('"'):
            raise ModelfileError(f"line {i + 1}: unterminated quote")
        return rest[1:-1], i + 1
    return rest, i + 1


def parse(text: str) -> Modelfile:
    mf = Modelfile()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        word, _, rest = line.partition(" ")
        instruction, rest = word.upper(), rest.strip()
        number = i + 1
        if not rest:
            raise ModelfileError(f"line {number}: {instruction} needs a value")
        if instruction == "PARAMETER":
            name, _, raw = rest.partition(" ")
            value, i = _read_value(lines, i, raw.strip())
            try:
                # One value a line; each `PARAMETER stop` line adds a stop sequence.
                typed = typed_parameter(name.lower(), [value])
            except ModelfileError as err:
                raise ModelfileError(f"line {number}: {err}") from None
            if name.lower() in _LISTS:
                mf.parameters.setdefault(name.lower(), []).extend(typed)
            else:
                mf.parameters[name.lower()] = typed
            continue
        if instruction == "MESSAGE":
            role, _, raw = rest.partition(" ")
            if role.lower() not in ROLES:
                raise ModelfileError(f"line {number}: MESSAGE role must be one of {', '.join(ROLES)}")
            content, i = _read_value(lines, i, raw.strip())
            mf.messages.append({"role": role.lower(), "content": content})
            continue
        value, i = _read_value(lines, i, rest)
        if instruction == "FROM":
            mf.source = value
        elif instruction == "TEMPLATE":
            mf.template = value
        elif instruction == "SYSTEM":
            mf.system = value
        elif instruction == "LICENSE":
            mf.license.append(value)
        elif instruction == "ADAPTER":
            raise ModelfileError(
                f"line {number}: ADAPTER is not supported: HyperLlama's engines load no LoRA adapters"
            )
        else:
            raise ModelfileError(f"line {number}: unknown instruction '{word}'")
    if not mf.source:
        raise ModelfileError("no FROM line: a Modelfile names the model or the file it builds on")
    return mf


# What a safetensors directory holds that the model needs; anything else in it (README, images, other
# weights formats) stays behind.
_DIRECTORY_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".tiktoken")


def directory_files(directory: Path) -> list[Path]:
    files = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix in _DIRECTORY_SUFFIXES and p.name != "README.txt"
    )
    if not any(p.suffix == ".safetensors" for p in files):
        raise ModelfileError(f"{directory} holds no .safetensors weights")
    return files


def local_source(source: str, base: Path) -> Path | None:
    """The file or directory FROM names on this machine (relative to the Modelfile), or None for a model
    name."""
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.exists():
        return path
    if source.startswith(("/", "./", "../", "~")) or source.endswith((".gguf", ".bin")):
        raise ModelfileError(f"FROM {source}: no such file or directory")
    return None


def create_body(name: str, mf: Modelfile) -> dict[str, Any]:
    """The /api/create body, less ``from``/``files`` (the caller resolves the source)."""
    body: dict[str, Any] = {"model": name}
    if mf.parameters:
        body["parameters"] = mf.parameters
    if mf.template is not None:
        body["template"] = mf.template
    if mf.system is not None:
        body["system"] = mf.system
    if mf.license:
        body["license"] = mf.license
    if mf.messages:
        body["messages"] = mf.messages
    return body

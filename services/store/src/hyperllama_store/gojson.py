"""JSON as Go's encoding/json writes it, so a blob built here has the bytes (and digest) Ollama would give
the same content: compact, a trailing newline, and <, >, & escaped as Go's HTML-safe encoder does."""

from __future__ import annotations

import json
from typing import Any

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """``sort_keys`` as Go does for maps; a struct keeps its field order (the dict's order here)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    # These characters only ever occur inside JSON strings, so replacing them everywhere is safe.
    for char, escaped in _GO_ESCAPES.items():
        text = text.replace(char, escaped)
    return text.encode() + b"\n"

"""One check over a whole request body before its fields are validated: text that protobuf can
carry (no lone UTF-16 surrogates, which JSON's "\\ud800" escapes produce), finite numbers (Python's
json reads NaN, Infinity and 1e400), and bounded nesting. Each failure names the field it found."""

from __future__ import annotations

import math
from typing import Any

from hyperllama_common.errors import quote
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from hyperllama_gateway.limits import MAX_JSON_DEPTH

# A path is built only when a problem is found: each node keeps (parent node, key).
_Path = tuple[Any, str | int] | None


def _dotted(node: _Path) -> str:
    parts: list[str] = []
    while node is not None:
        node, key = node
        parts.append(str(key))
    return ".".join(reversed(parts))


def is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text (encodes to UTF-8)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_problem(data: Any) -> tuple[str, str] | None:
    """The first field (dotted path) of ``data`` that is not well-formed, and why; None if all are."""
    stack: list[tuple[Any, _Path, int]] = [(data, None, 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if not is_text(value):
                return _dotted(path), "contains a lone UTF-16 surrogate (not valid Unicode text)"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return _dotted(path), "must be a finite number"
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return _dotted(path), f"is nested deeper than {MAX_JSON_DEPTH} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            children = []
            for key, child in items:
                if isinstance(key, str) and not is_text(key):
                    return _dotted(path), "has a key with a lone UTF-16 surrogate (not valid Unicode text)"
                if isinstance(child, str | float | dict | list):
                    children.append((child, (path, key), depth + 1))
            stack.extend(reversed(children))  # depth first, in document order
    return None


class RequestBody(BaseModel):
    """Base of every top-level request model. Unknown fields are ignored (clients send many), but
    they are checked like the rest: the whole body must be well-formed."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _well_formed(cls, data: Any) -> Any:
        problem = find_problem(data)
        if problem is not None:
            where, why = problem
            where = quote(where)
            # "param" is read by the HTTP error handler: the envelope names the field.
            raise PydanticCustomError(
                "malformed_value", "{param}: {why}" if where else "{why}", {"param": where, "why": why}
            )
        return data

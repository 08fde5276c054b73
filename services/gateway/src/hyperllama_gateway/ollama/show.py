"""/api/show from the model store's answer, in Ollama's shape."""

from __future__ import annotations

import json
from typing import Any


def _go_value(value: Any) -> str:
    """A parameter value as Ollama's show prints it (Go's %#v): strings quoted, whole floats bare."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parameters_text(parameters: dict[str, Any]) -> str:
    lines = []
    for key in sorted(parameters):
        values = parameters[key]
        for value in values if isinstance(values, list) else [values]:
            lines.append(f"{key:<30} {_go_value(value)}")
    return "\n".join(lines)


def show_stored(entry: dict[str, Any]) -> dict[str, Any]:
    """/api/show from the store's answer."""
    license_ = entry.get("license") or []
    response: dict[str, Any] = {
        "license": "\n".join(license_) if isinstance(license_, list) else str(license_),
        "modelfile": entry.get("modelfile", ""),
        "parameters": parameters_text(entry.get("parameters") or {}),
        "template": entry.get("template") or "",
        "details": entry.get("details") or {},
        "model_info": entry.get("model_info") or {},
        "capabilities": entry.get("capabilities") or [],
        "modified_at": entry.get("modified_at"),
    }
    if entry.get("system"):
        response["system"] = entry["system"]
    if entry.get("messages"):
        response["messages"] = entry["messages"]
    return response

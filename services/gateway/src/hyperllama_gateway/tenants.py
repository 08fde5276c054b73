"""Tenants: who a key belongs to, and what that tenant may do.

Tenants are configuration (a TOML file, ``HYPERLLAMA_GATEWAY_TENANTS_FILE``), never created by a
request: their names become Redis keys and metric labels, so the set must be bounded and known up
front. Two tenants always exist: ``default`` (every request while auth is off) and ``admin`` (the
admin key). A file may redefine ``default``.

    [tenants.team-a]
    models = ["smollm2:*", "gemma3-chat:270m"]  # fnmatch patterns; absent or ["*"] = every model
    max_priority = 5          # X-HyperLlama-Priority is clamped to this
    weight = 2                # share of the queue within a priority class (fair share)
    requests_per_minute = 600 # 0 = no limit (all three)
    tokens_per_minute = 200000
    max_concurrent = 16
    manage_models = false     # pull, push, create, copy, delete, blobs, /api/workers
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperllama_gateway.limits import PRIORITY_MAX, PRIORITY_MIN
from hyperllama_gateway.names import name_key

DEFAULT_TENANT = "default"
ADMIN_TENANT = "admin"
# Tenant names are Redis key parts and metric label values.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A weight outside this range would starve everyone else or be starved (see the scheduler's queue).
MIN_WEIGHT, MAX_WEIGHT = 0.01, 100.0
# More tenants than this is not configuration but data (and too many metric series).
MAX_TENANTS = 1000


def _pattern_key(pattern: str) -> str:
    """A plain name is spelled as name_key spells models ("smollm2" is "smollm2:latest"); a pattern
    ("*", "smollm2:*", "hf.co/*") is taken as written, lower case."""
    if any(c in pattern for c in "*?["):
        return pattern.lower().removeprefix("registry.ollama.ai/library/")
    return name_key(pattern)


@dataclass(frozen=True)
class Tenant:
    name: str
    models: tuple[str, ...] = ("*",)
    max_priority: int = PRIORITY_MAX
    weight: float = 1.0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0
    manage_models: bool = False

    def allows(self, model: str) -> bool:
        key = name_key(model)
        return any(fnmatch.fnmatchcase(key, _pattern_key(pattern)) for pattern in self.models)


# While auth is off every request is the default tenant's: all models, no limits, may manage models
# (the loopback developer setup, as Ollama).
OPEN_DEFAULT = Tenant(DEFAULT_TENANT, manage_models=True)
# The admin key: everything, no limits.
ADMIN = Tenant(ADMIN_TENANT, manage_models=True)
# With auth on and no file, keys of the default tenant may use every model but not manage them.
SECURE_DEFAULT = Tenant(DEFAULT_TENANT)

_INT_FIELDS = ("max_priority", "requests_per_minute", "tokens_per_minute", "max_concurrent")


def _tenant(name: str, raw: Any) -> Tenant:
    where = f"tenant '{name}'"
    if not TENANT_NAME.fullmatch(name):
        raise ValueError(f"{where}: a name is 1-64 letters, digits, '.', '_' or '-'")
    if name == ADMIN_TENANT:
        raise ValueError(f"{where}: the name is reserved for the admin key")
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table")
    unknown = set(raw) - {"models", "weight", "manage_models", *_INT_FIELDS}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    models = raw.get("models", ["*"])
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise ValueError(f"{where}: models must be a non-empty list of names or patterns")
    values["models"] = tuple(models)
    for key in _INT_FIELDS:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}: {key} must be a non-negative integer")
            values[key] = value
    if "max_priority" in values and not PRIORITY_MIN <= values["max_priority"] <= PRIORITY_MAX:
        raise ValueError(f"{where}: max_priority must be {PRIORITY_MIN}..{PRIORITY_MAX}")
    if "weight" in raw:
        weight = raw["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"{where}: weight must be a number")
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise ValueError(f"{where}: weight must be {MIN_WEIGHT}..{MAX_WEIGHT}")
        values["weight"] = float(weight)
    if "manage_models" in raw:
        if not isinstance(raw["manage_models"], bool):
            raise ValueError(f"{where}: manage_models must be true or false")
        values["manage_models"] = raw["manage_models"]
    return Tenant(name, **values)


@dataclass(frozen=True)
class Tenants:
    by_name: dict[str, Tenant] = field(default_factory=lambda: {DEFAULT_TENANT: SECURE_DEFAULT})

    def get(self, name: str) -> Tenant | None:
        if name == ADMIN_TENANT:
            return ADMIN
        return self.by_name.get(name)

    def names(self) -> list[str]:
        return sorted({*self.by_name, ADMIN_TENANT})

    @classmethod
    def parse(cls, text: str) -> Tenants:
        data = tomllib.loads(text)
        unknown = set(data) - {"tenants"}
        if unknown:
            keys = ", ".join(sorted(unknown))
            raise ValueError(f"unknown top-level key(s) {keys}; expected [tenants.NAME]")
        raw = data.get("tenants", {})
        if not isinstance(raw, dict):
            raise ValueError("tenants must be tables: [tenants.NAME]")
        if len(raw) > MAX_TENANTS:
            raise ValueError(f"at most {MAX_TENANTS} tenants ({len(raw)} given)")
        by_name = {DEFAULT_TENANT: SECURE_DEFAULT}
        by_name.update({name: _tenant(name, value) for name, value in raw.items()})
        return cls(by_name)

    @classmethod
    def load(cls, path: str) -> Tenants:
        """The tenants of a file ("" = the default tenant only). Raises ValueError naming the file."""
        if not path:
            return cls()
        try:
            return cls.parse(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError is a ValueError
            raise ValueError(f"tenants file {path}: {err}") from err

"""Ollama's keep_alive values: a number of seconds, or a Go duration string ("5m", "1h30m", "-1s")."""

from __future__ import annotations

import re

from hyperllama_common.errors import InvalidRequest

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
# Most a keep_alive may be before it counts as forever (Go's duration tops out near 292 years).
_FOREVER_SECONDS = 10 * 365 * 86400


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string, as Go's time.ParseDuration reads it ("0" needs no unit)."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(body):
        match = _PART.match(body, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def keep_alive_ms(value: object, param: str = "keep_alive") -> int | None:
    """A request's keep_alive in ms: None when absent, negative for forever."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest("keep_alive must be a number of seconds or a duration like '5m'", param=param)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_go_duration(value)
        except ValueError:
            raise InvalidRequest(
                f"time: invalid duration {value[:40]!r}: keep_alive is a number of seconds or a "
                "duration like '5m' or '1h30m'",
                param=param,
            ) from None
    else:
        raise InvalidRequest("keep_alive must be a number of seconds or a duration like '5m'", param=param)
    if seconds != seconds:  # NaN
        raise InvalidRequest("keep_alive must be a number", param=param)
    if seconds < 0 or seconds > _FOREVER_SECONDS:
        return -1
    return int(seconds * 1000)

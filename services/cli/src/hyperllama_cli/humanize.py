"""Sizes, times and durations as Ollama's command line prints them (decimal units, relative times)."""

from __future__ import annotations

from datetime import UTC, datetime

_UNITS = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))


def human_bytes(n: int | float) -> str:
    """98_000_000 -> '98 MB'; 4_700_000_000 -> '4.7 GB'."""
    for unit, scale in _UNITS:
        if n >= scale:
            value = n / scale
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{int(n)} B"


def human_duration(seconds: float) -> str:
    """A rough span: 'Less than a second', '4 minutes', 'About an hour', '3 days'."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 14:
        return f"{hours // 24} days"
    if hours < 24 * 60:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 730:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time from the API (Go writes nanoseconds, which Python's parser does not take)."""
    if not text or text.startswith("0001-01-01"):
        return None
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def human_time(when: datetime | None, zero: str = "Never", now: datetime | None = None) -> str:
    """'2 days ago', '4 minutes from now', or 'Forever' for a time decades ahead (keep_alive < 0)."""
    if when is None:
        return zero
    delta = ((now or datetime.now(UTC)) - when).total_seconds()
    if delta < -20 * 365 * 86400:
        return "Forever"
    if delta < 0:
        return f"{human_duration(-delta)} from now"
    return f"{human_duration(delta)} ago"


def human_ms(ms: float) -> str:
    """Milliseconds for the queue view: '850ms', '12s', '3m05s'."""
    if ms < 1000:
        return f"{int(ms)}ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.0f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"

"""Turning a stream of token bytes into safe text: whole UTF-8 characters, no leaked stop strings.

Engines hand out token pieces as bytes; a multi-byte character can straddle two tokens, and the text that
begins a stop string must not reach the client until we know whether the stop string completes.
"""

from __future__ import annotations

import codecs


class Utf8Assembler:
    """Accepts byte pieces and returns only complete characters; holds a split character back."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """At the end of the stream, whatever is left (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopStringFilter:
    """Releases text as early as possible while never emitting any part of a stop string.

    ``feed`` returns the text that is safe to send now and whether a stop string was hit; after a hit
    the text up to (not including) the stop string has been released and the rest is dropped.
    """

    def __init__(self, stops: list[str] | tuple[str, ...]):
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self._pending + text
        hit = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            self._pending = ""
            self.stopped = True
            return buf[:hit], True
        hold = self._longest_stop_prefix_suffix(buf)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """At the end of the stream the held-back text was not a stop string after all."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _longest_stop_prefix_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best

"""Turning a stream of token bytes into safe text: whole UTF-8 characters, no leaked stop strings.

Engines hand out token pieces as bytes; a multi-byte character can straddle two tokens, and the text that
begins a stop string must not reach the client until we know whether the stop string completes.
"""

from __future__ import annotations

import codecs
import threading
from collections import deque
from functools import lru_cache
from typing import Generic, TypeVar

T = TypeVar("T")


class Utf8Assembler:
    """Accepts byte pieces and returns only complete characters; holds a split character back."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """At the end of the stream, whatever is left (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopAutomaton:
    """Aho–Corasick automaton over a list of stop strings: the trie of the stops with failure links.

    A state is a prefix of some stop. After reading text, the current state is the longest suffix of
    the text that is such a prefix, so its depth is exactly what must be held back, and whether any
    stop ends here is a table lookup. Reading a character costs amortised O(1) whatever the number of
    stops: each failure link followed shortens the state, and each character lengthens it by at most one.

    Failure links are computed a trie level at a time, when text first reaches that depth: ordinary
    text rarely gets past the first few characters of a stop, so a long list of long stops costs little
    more than its trie, and all the levels together still cost time linear in the stops' total length.
    """

    __slots__ = ("goto", "fail", "depth", "out", "_ends", "_frontier", "_lock")

    def __init__(self, stops: tuple[str, ...]):
        goto: list[dict[str, int]] = [{}]
        depth = [0]
        ends = [False]
        for stop in stops:
            state = 0
            for ch in stop:
                nxt = goto[state].get(ch)
                if nxt is None:
                    nxt = len(goto)
                    goto[state][ch] = nxt
                    goto.append({})
                    depth.append(depth[state] + 1)
                    ends.append(False)
                state = nxt
            ends[state] = True
        self.goto = goto
        self.depth = depth
        self._ends = ends
        self.fail = [0] * len(goto)
        # Length of the longest stop ending at a state (itself or through failure links), 0 if none,
        # -1 while the state's level is not linked yet. At a match it says where the
        # earliest-starting stop ending here begins.
        self.out = [-1] * len(goto)
        self.out[0] = 0
        for child in goto[0].values():
            self.out[child] = 1 if ends[child] else 0
        self._frontier = list(goto[0].values())  # the deepest linked level
        self._lock = threading.Lock()

    def link_to(self, level: int) -> None:
        """Compute failure links and outputs for every state down to ``level`` characters deep."""
        goto, fail, out, depth, ends = self.goto, self.fail, self.out, self.depth, self._ends
        with self._lock:  # filters on different threads may share this automaton
            frontier = self._frontier
            while frontier and depth[frontier[0]] < level:
                below: list[int] = []
                for state in frontier:
                    children = goto[state]
                    if not children:
                        continue
                    for ch, child in children.items():
                        f = fail[state]
                        while True:
                            nxt = goto[f].get(ch)
                            if nxt is not None:
                                fail[child] = nxt
                                break
                            if not f:
                                break
                            f = fail[f]
                        # Written last: a reader that sees it set also sees the failure link.
                        out[child] = depth[child] if ends[child] else out[fail[child]]
                    below.extend(children.values())
                frontier = below
            self._frontier = frontier


@lru_cache(maxsize=8)
def compile_stops(stops: tuple[str, ...]) -> StopAutomaton:
    """One automaton per distinct stop list: clients repeat their list, and building costs more than matching.

    Small, because a 10,000-entry list's automaton takes tens of MB.
    """
    return StopAutomaton(stops)


class StopStringFilter:
    """Releases text as early as possible while never emitting any part of a stop string.

    ``feed`` returns the text that is safe to send now and whether a stop string was hit; after a hit
    the text up to (not including) the stop string has been released and the rest is dropped.

    Which stop string counts when several overlap: the stream stops in the ``feed`` call in which the
    first stop string completes, and the text is cut where the earliest-starting stop string among
    those complete by the end of that call's text begins. A longer stop string that began earlier but
    has not completed by then does not count (the engine stops at this token, so it never will), and
    the part of it before the cut is released.
    """

    def __init__(self, stops: list[str] | tuple[str, ...]):
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False
        self._state = 0
        self._automaton = compile_stops(tuple(self.stops)) if self.stops else None

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        automaton = self._automaton
        if automaton is None:
            return text, False
        goto, fail, out = automaton.goto, automaton.fail, automaton.out
        state = self._state
        cut = -1  # where the earliest stop string begins, as an offset into pending + text
        base = len(self._pending) + 1
        for i, ch in enumerate(text):
            while True:
                nxt = goto[state].get(ch)
                if nxt is not None:
                    state = nxt
                    break
                if not state:
                    break
                state = fail[state]
            found = out[state]
            if found:
                if found < 0:
                    automaton.link_to(automaton.depth[state])
                    found = out[state]
                    if not found:
                        continue
                start = base + i - found
                if cut < 0 or start < cut:
                    cut = start
        buf = self._pending + text if self._pending else text
        if cut >= 0:
            self._pending = ""
            self._state = 0
            self.stopped = True
            return buf[:cut], True
        self._state = state
        hold = automaton.depth[state]
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """At the end of the stream the held-back text was not a stop string after all."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out


class HeldWithText(Generic[T]):
    """Items tied to the end of a token's text in a stream that passes through StopStringFilter
    (logprob entries): each item is let go once the filter has released the text up to its end, so an
    item never arrives before its token's text, and items whose text the filter withholds for good (a
    matched stop string) never arrive.

    Positions count characters of the filter's input; its output is always a prefix of that input.
    """

    __slots__ = ("_items", "_fed", "_released")

    def __init__(self) -> None:
        self._items: deque[tuple[int, T]] = deque()
        self._fed = 0
        self._released = 0

    def add(self, item: T, chars: int, pending: int = 0) -> None:
        """``item``'s token fed ``chars`` characters to the filter; ``pending``: characters of the
        token's text still to come (1 when its bytes end inside a character not yet complete, or what
        an engine holds back of it)."""
        self._fed += chars
        self._items.append((self._fed + pending, item))

    @property
    def fed(self) -> int:
        return self._fed

    def text(self, chars: int) -> None:
        """The filter was fed ``chars`` characters that belong to no item."""
        self._fed += chars

    def release(self, chars: int) -> list[T]:
        """The filter released ``chars`` more characters: the items whose text has now all gone out."""
        self._released += chars
        items = self._items
        out = []
        while items and items[0][0] <= self._released:
            out.append(items.popleft()[1])
        return out

    def flush(self) -> list[T]:
        """At the end of a stream that no stop string cut: whatever is left (a token with no text)."""
        out = [item for _, item in self._items]
        self._items.clear()
        return out

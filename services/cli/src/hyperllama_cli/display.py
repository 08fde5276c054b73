"""What the command line draws: Ollama-style tables on stdout, transfer progress on stderr, and a
response streamed with word wrap."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from hyperllama_cli.humanize import human_bytes

# Piped output is never cut to 80 columns: a script reads whole names.
_PIPE_WIDTH = 1000


def print_table(headers: list[str], rows: Iterable[list[str]], out: TextIO | None = None) -> None:
    """Ollama's tables: no borders, left-aligned, four spaces between columns."""
    out = out or sys.stdout
    console = Console(file=out, width=None if out.isatty() else _PIPE_WIDTH, highlight=False)
    table = Table(box=None, padding=(0, 2), pad_edge=False, show_edge=False, header_style="")
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    with console.capture() as capture:
        console.print(table)
    # Rich pads every line to the table's width; trailing spaces only get in a script's way.
    out.write("\n".join(line.rstrip() for line in capture.get().splitlines()) + "\n")


def show_transfer(events: Iterator[dict[str, Any]], err: TextIO | None = None) -> dict[str, Any]:
    """Draw a pull, push or create stream: a bar per blob (percent, bytes, rate, time left) and each
    other status on a line of its own. Returns the last event."""
    # soft_wrap: a long status (a digest) stays on one line, however narrow the terminal or the pipe.
    console = Console(file=err or sys.stderr, highlight=False, soft_wrap=True)
    progress = Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.percentage:>3.0f}%"),
        BarColumn(bar_width=None),
        DownloadColumn(binary_units=False),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    # At a terminal, a live bar per blob; in a log or a pipe, one line per blob once it is complete.
    live = console.is_terminal
    tasks: dict[str, TaskID] = {}
    shown: set[str] = set()
    last: dict[str, Any] = {}
    previous_status = ""
    with progress if live else contextlib.nullcontext():
        for event in events:
            last = event
            status = str(event.get("status", ""))
            digest, total, completed = (
                event.get("digest"),
                event.get("total"),
                int(event.get("completed") or 0),
            )
            if digest and total and live:
                if digest not in tasks:
                    tasks[digest] = progress.add_task(status, total=int(total))
                progress.update(tasks[digest], completed=completed, description=status)
            elif digest and total:
                if digest not in shown and completed >= int(total):
                    shown.add(digest)
                    console.print(f"{status} 100% {human_bytes(int(total))}")
            elif status and status != previous_status:
                console.print(status)
            previous_status = status
    return last


class WordWrapper:
    """Streams text to ``out``, breaking lines between words at the terminal's width (when ``width`` is
    0, text passes through as it comes)."""

    def __init__(self, out: TextIO, width: int):
        self.out = out
        self.width = width
        self.column = 0
        self.word = ""

    def write(self, text: str) -> None:
        if not self.width:
            self.out.write(text)
            self.out.flush()
            return
        for ch in text:
            if ch == "\n":
                self._flush_word()
                self.out.write("\n")
                self.column = 0
            elif ch == " ":
                self._flush_word()
                if self.column < self.width:
                    self.out.write(" ")
                    self.column += 1
            else:
                self.word += ch
                if len(self.word) >= self.width:  # a "word" longer than a line: hard break
                    self._flush_word()
        self.out.flush()

    def _flush_word(self) -> None:
        if not self.word:
            return
        if self.column and self.column + len(self.word) > self.width:
            self.out.write("\n")
            self.column = 0
        self.out.write(self.word)
        self.column += len(self.word)
        self.word = ""

    def close(self) -> None:
        self._flush_word()
        self.out.flush()


def wrap_width(out: TextIO, word_wrap: bool) -> int:
    return shutil.get_terminal_size().columns - 5 if word_wrap and out.isatty() else 0


def print_metrics(final: dict[str, Any], err: TextIO | None = None) -> None:
    """The timing block of ``ollama run --verbose``, from a stream's last object (durations in ns)."""
    err = err or sys.stderr

    def seconds(key: str) -> float:
        return float(final.get(key) or 0) / 1e9

    def line(label: str, value: str) -> None:
        err.write(f"{label + ':':<22}{value}\n")

    if seconds("total_duration"):
        line("total duration", _duration(seconds("total_duration")))
    if seconds("load_duration"):
        line("load duration", _duration(seconds("load_duration")))
    if final.get("prompt_eval_count"):
        line("prompt eval count", f"{final['prompt_eval_count']} token(s)")
    if seconds("prompt_eval_duration"):
        line("prompt eval duration", _duration(seconds("prompt_eval_duration")))
        line(
            "prompt eval rate",
            f"{final.get('prompt_eval_count', 0) / seconds('prompt_eval_duration'):.2f} tokens/s",
        )
    if final.get("eval_count"):
        line("eval count", f"{final['eval_count']} token(s)")
    if seconds("eval_duration"):
        line("eval duration", _duration(seconds("eval_duration")))
        line("eval rate", f"{final.get('eval_count', 0) / seconds('eval_duration'):.2f} tokens/s")


def _duration(s: float) -> str:
    """As Go prints a time.Duration: 1.234s, 56.7ms, 890µs."""
    if s >= 1:
        return f"{s:.6g}s"
    if s >= 1e-3:
        return f"{s * 1e3:.6g}ms"
    return f"{s * 1e6:.6g}µs"

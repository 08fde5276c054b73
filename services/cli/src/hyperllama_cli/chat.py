"""One answer streamed to the terminal: ``/api/generate`` for a one-shot ``run``, ``/api/chat`` for the
REPL, both drawn through the word wrapper and ended cleanly when the user presses Ctrl-C."""

from __future__ import annotations

from typing import Any, TextIO

from hyperllama_cli.api import Api
from hyperllama_cli.display import WordWrapper, wrap_width


def stream_answer(
    api: Api, path: str, body: dict[str, Any], out: TextIO, word_wrap: bool
) -> tuple[str, dict[str, Any]]:
    """Stream ``body`` to ``path`` and print the text as it comes. Returns the text and the last
    (``done``) object. A KeyboardInterrupt closes the stream (the server then cancels the request)
    and propagates."""
    events = api.stream(path, {**body, "stream": True})
    wrapper = WordWrapper(out, wrap_width(out, word_wrap))
    parts: list[str] = []
    final: dict[str, Any] = {}
    try:
        for event in events:
            piece = event["message"].get("content", "") if "message" in event else event.get("response", "")
            if piece:
                if not parts:
                    piece = piece.lstrip("\n")  # as Ollama: no blank line before the answer
                parts.append(piece)
                wrapper.write(piece)
            if event.get("done"):
                final = event
    finally:
        events.close()
        wrapper.close()
    return "".join(parts), final

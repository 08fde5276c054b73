"""The served model's own tokenizer, for what the worker must tokenize itself: a prompt that continues an
Ollama ``context`` (token ids), a chat the engine cannot render as needed, and the ids of generated text
an engine does not report.

Hugging Face's tokenizer and chat template, from transformers (each engine's environment has it; the
worker base does not depend on it). Loaded once per model, in the background when the model loads:
importing transformers takes seconds. Its calls block: run them in a thread.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Protocol

from hyperllama_common.errors import BackendFailed, InvalidRequest


class Tokenizer(Protocol):
    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, bos: bool
    ) -> list[int]:
        """The chat through the model's template, up to the assistant's turn, as ids. ``bos``: False
        leaves out a beginning-of-sequence token that the template writes as its ``bos_token``."""
        ...

    def encode(self, text: str, special: bool) -> list[int]:
        """``text`` as ids; ``special``: with the tokens the tokenizer adds (a BOS), as engines do."""
        ...

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` without special tokens, as engines stream it."""
        ...

    def special_ids(self) -> frozenset[int]:
        """Ids of the special tokens (end of sequence, BOS ...), which generated text never shows."""
        ...


class HfTokenizer:
    """transformers' AutoTokenizer on a model directory, loaded lazily or ahead of use (warm)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load it now, in a thread of its own, so the first request that needs it (every Ollama
        /api/generate asks for its context back) does not wait seconds for transformers' import; a
        failure is reported to that request instead."""

        def load() -> None:
            with contextlib.suppress(BackendFailed):
                self._get()

        threading.Thread(target=load, name="tokenizer-warm", daemon=True).start()

    def _get(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                try:
                    from transformers import AutoTokenizer  # in the engine's environment only

                    self._tokenizer = AutoTokenizer.from_pretrained(str(self.directory))
                except Exception as err:  # any failure: the worker cannot tokenize
                    raise BackendFailed(f"the model's tokenizer could not be loaded: {err}") from err
            return self._tokenizer

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, bos: bool
    ) -> list[int]:
        tok = self._get()
        # The template's {{ bos_token }} is a keyword the caller may override; a template that writes
        # its first token literally (smollm2's "<|im_start|>" is also its bos_token) keeps it.
        extra = {} if bos else {"bos_token": ""}
        from jinja2 import TemplateError  # transformers' template engine

        try:
            text = tok.apply_chat_template(
                messages, tools=tools or None, add_generation_prompt=True, tokenize=False, **extra
            )
        except (TemplateError, ValueError) as err:
            # A template refuses a chat by raising (roles out of order ...): the caller's mistake, as
            # the engines answer it.
            raise InvalidRequest(
                f"the model's chat template cannot render this chat: {err}", param="messages"
            ) from err
        # The template wrote the special tokens it wants; engines tokenize a rendered chat this way.
        return list(tok.encode(text, add_special_tokens=False))

    def encode(self, text: str, special: bool) -> list[int]:
        return list(self._get().encode(text, add_special_tokens=special))

    def decode(self, ids: list[int]) -> str:
        return str(self._get().decode(ids, skip_special_tokens=True))

    def special_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in self._get().all_special_ids)

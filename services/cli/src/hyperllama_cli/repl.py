"""``hyperllama run MODEL`` at a terminal: Ollama's REPL (``>>> ``, ``\"\"\"`` for several lines, the
``/set``, ``/show``, ``/load``, ``/save``, ``/clear`` and ``/bye`` commands; Ctrl-C stops an answer,
Ctrl-D leaves)."""

from __future__ import annotations

import argparse
import readline  # noqa: F401  (imported for its side effect: line editing and history for input())
import sys
from typing import Any

from hyperllama_cli.api import Api, ApiError
from hyperllama_cli.chat import stream_answer
from hyperllama_cli.commands import ensure_model, print_model_info, run_options
from hyperllama_cli.display import print_metrics
from hyperllama_cli.modelfile import Modelfile, ModelfileError, create_body, typed_parameter

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
"""

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""


class Repl:
    def __init__(self, api: Api, args: argparse.Namespace):
        self.api = api
        self.model = args.model
        self.format = args.format
        self.keep_alive = args.keepalive
        self.verbose = args.verbose
        self.word_wrap = not args.nowordwrap
        self.options: dict[str, Any] = {}
        self.system: str | None = None
        self.messages: list[dict[str, str]] = []

    def _read_block(self, first: str) -> str:
        """The rest of a \"\"\" block whose first line (after the quotes) is ``first``."""
        lines = []
        line = first
        while True:
            head, closed = (line[:-3], True) if line.endswith('"""') else (line, False)
            lines.append(head)
            if closed:
                return "\n".join(lines)
            line = input("... ")

    def loop(self) -> int:
        self._load(self.model)
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print("\nUse Ctrl + d or /bye to exit.")
                continue
            try:
                if not self._handle(line):
                    return 0
            except EOFError:  # Ctrl-D inside a """ block
                print()
                return 0
            except KeyboardInterrupt:
                print()
            except (ApiError, ModelfileError) as err:
                print(f"Error: {err}", file=sys.stderr)

    def _handle(self, line: str) -> bool:
        """Act on one line; False to leave."""
        stripped = line.strip()
        if stripped.startswith('"""'):
            self._ask(self._read_block(stripped[3:]))
            return True
        if stripped in ("/bye", "/exit"):
            return False
        if stripped in ("/?", "/help", "/? set", "/? show"):
            print({"/? set": SET_HELP, "/? show": SHOW_HELP}.get(stripped, HELP))
        elif stripped.startswith("/set"):
            self._set(stripped.split()[1:], stripped)
        elif stripped.startswith("/show"):
            self._show(stripped.split()[1:])
        elif stripped.startswith("/load"):
            words = stripped.split()
            if len(words) != 2:
                print("Usage:\n  /load <modelname>")
            else:
                self._load(words[1])
        elif stripped.startswith("/save"):
            words = stripped.split()
            if len(words) != 2:
                print("Usage:\n  /save <modelname>")
            else:
                self._save(words[1])
        elif stripped == "/clear":
            self.messages = []
            print("Cleared session context")
        elif stripped.startswith("/"):
            print(f"Unknown command '{stripped.split()[0]}'. Type /? for help")
        elif stripped:
            self._ask(line)
        return True

    def _load(self, model: str) -> None:
        if model != self.model:
            print(f"Loading model '{model}'")
        ensure_model(self.api, model)
        body = {"model": model, "stream": False}
        if self.keep_alive:
            body["keep_alive"] = self.keep_alive
        self.api.post("/api/generate", body)
        self.model = model
        self.messages = []

    def _save(self, name: str) -> None:
        # The session as a Modelfile would say it: FROM this model, its parameters, system and messages.
        session = Modelfile(self.model, dict(self.options), None, self.system, [], list(self.messages))
        self.api.post("/api/create", {**create_body(name, session), "from": self.model, "stream": False})
        print(f"Created new model '{name}'")

    def _set(self, words: list[str], line: str) -> None:
        if not words:
            print(SET_HELP)
            return
        what = words[0]
        if what == "parameter":
            if len(words) < 3:
                print("Usage:\n  /set parameter <name> <value>")
                return
            value = typed_parameter(words[1], words[2:])
            self.options[words[1]] = value
            print(f"Set parameter '{words[1]}' to '{', '.join(words[2:])}'")
        elif what == "system":
            text = line.split("system", 1)[1].strip()
            if text.startswith('"""'):
                text = self._read_block(text[3:])
            if not text:
                print("Usage:\n  /set system <string>")
                return
            self.system = text
            print("Set system message.")
        elif what == "format":
            if words[1:] != ["json"]:
                print("Invalid or missing format. For 'json' mode use '/set format json'")
                return
            self.format = "json"
            print("Set format to 'json' mode.")
        elif what == "noformat":
            self.format = ""
            print("Disabled format.")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif what in ("wordwrap", "nowordwrap"):
            self.word_wrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")

    def _show(self, words: list[str]) -> None:
        if not words:
            print(SHOW_HELP)
            return
        info = self.api.post("/api/show", {"model": self.model})
        what = words[0]
        if what == "info":
            print_model_info(info)
        elif what == "system":
            print(
                self.system
                if self.system is not None
                else info.get("system") or "No system message was specified for this model."
            )
        elif what == "parameters":
            own = "\n".join(f"{k:<20}{v}" for k, v in self.options.items())
            print(own or info.get("parameters") or "No parameters were specified for this model.")
        elif what in ("license", "modelfile", "template"):
            value = info.get(what) or ""
            print(
                "\n".join(value)
                if isinstance(value, list)
                else value or f"No {what} was specified for this model."
            )
        else:
            print(f"Unknown command '/show {what}'. Type /? for help")

    def _ask(self, text: str) -> None:
        history = list(self.messages)
        if self.system is not None:
            history = [{"role": "system", "content": self.system}, *history]
        question = {"role": "user", "content": text}
        body = {**self._body(), "messages": [*history, question]}
        try:
            answer, final = stream_answer(self.api, "/api/chat", body, sys.stdout, self.word_wrap)
        except KeyboardInterrupt:
            # The answer was cut short: the turn is not kept, so the next question starts clean.
            print()
            return
        print("\n")
        self.messages += [question, {"role": "assistant", "content": answer}]
        if self.verbose:
            print_metrics(final)

    def _body(self) -> dict[str, Any]:
        body = run_options(
            argparse.Namespace(model=self.model, format=self.format, keepalive=self.keep_alive)
        )
        if self.options:
            body["options"] = dict(self.options)
        return body

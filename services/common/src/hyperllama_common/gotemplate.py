"""Go text/template, the subset Ollama's model TEMPLATEs use, rendered the way Ollama renders a chat.

Ollama turns a chat into a prompt by executing the model's TEMPLATE with Go's text/template over
.System, .Messages (each with .Role, .Content, ...), .Prompt, .Response, .Tools, .Think and friends.
Here a lexer splits a template into text and actions, a recursive-descent parser turns the actions into
a few node classes, and an evaluator walks them. `parse` once, then `Template.render` runs it over given
values, or `render_chat` builds a chat's prompt as Ollama's Template.Execute does.

Supported: text; {{- and -}} trimming; comments; fields and chains (.X.Y, $.X, $m.Role, (pipe).X);
variables (:= and =); if / else if / else; range (one or two variables, else, break, continue); with /
else with; pipes; parenthesised pipelines; string, raw string and decimal number literals, true/false/nil;
the functions and or not eq ne lt le gt ge len index slice print println printf (%s %v %d %q %% only),
and Ollama's json currentDate yesterdayDate toTypeScriptType. A TemplateError instead: define, template,
block, html/js/urlquery/call, method calls, other printf verbs, and unknown fields: of a message, as in
Go, and also of the top level, where Ollama's map would print "<no value>" (a typo should not pass
silently). Known differences from Go: floats print as Python's repr less a trailing ".0" (Go switches
to 1e+06 sooner); json shows a message's empty Images/ToolCalls as [] where Go says null.
"""

from __future__ import annotations

import datetime
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple, NoReturn


class TemplateError(ValueError):
    """A template that does not parse, or fails while rendering; the message says what and on which line."""


_WS = " \t\r\n"  # the whitespace Go's trim markers remove
_OPEN = re.compile(r"\{\{(-[ \t\r\n])?")  # "{{-" trims only with a space after it: "{{-3}}" is a number
_COMMENT = re.compile(r"/\*(?:(?!\*/).)*\*/([ \t\r\n]-)?\}\}", re.S)  # flush with its delimiters, as Go wants
_TOKEN = re.compile(
    r"""(?P<close>[ \t\r\n]+-\}\}|\}\})
      | (?P<space>[ \t\r\n]+)
      | (?P<str>"(?:[^"\\\n]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<field>\.\w+) | (?P<var>\$\w*) | (?P<op>:=|[=|(),]) | (?P<dot>\.) | (?P<ident>[^\W\d]\w*)""",
    re.X,
)
_TERMINATOR = re.compile(r"[ \t\r\n.,|:()]|\}\}|\Z")  # what Go wants after a name: "if$x" is an error
_ESCAPE = re.compile(r"\\(x[\da-fA-F]{2}|u[\da-fA-F]{4}|U[\da-fA-F]{8}|[0-7]{3}|.)", re.S)
_ESCAPES = dict(zip("abfnrtv\\\"'", "\a\b\f\n\r\t\v\\\"'", strict=True))


class _Tok(NamedTuple):
    kind: str  # the group of _TOKEN that matched
    text: str
    pos: int
    spaced: bool  # after whitespace: `.X .Y` is two operands, `.X.Y` one chain


class _Act(NamedTuple):  # one lexed {{ action }}
    toks: list[_Tok]
    pos: int


def _line(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _tag(word: str) -> str:
    return "{{" + word + "}}"


def _lex(src: str) -> list[str | _Act]:
    """The source as text and actions, with trim markers applied and comments dropped."""
    items: list[str | _Act] = []
    pos, trim = 0, False
    while True:
        m = _OPEN.search(src, pos)
        text = src[pos : m.start() if m else len(src)]
        text = text.lstrip(_WS) if trim else text
        text = text.rstrip(_WS) if m and m.group(1) else text
        if text:
            items.append(text)
        if m is None:
            return items
        p = m.end()
        if src.startswith("/*", p):
            if (c := _COMMENT.match(src, p)) is None:
                raise TemplateError(
                    f"line {_line(src, p)}: unclosed comment, or one not right before " + "}}"
                )
            pos, trim = c.end(), bool(c.group(1))
            continue
        toks: list[_Tok] = []
        spaced = True
        while (t := _TOKEN.match(src, p)) and t.lastgroup != "close":
            if t.lastgroup in ("ident", "field", "var") and not _TERMINATOR.match(src, t.end()):
                raise TemplateError(f"line {_line(src, t.end())}: bad character {src[t.end()]!r}")
            if t.lastgroup != "space":
                toks.append(_Tok(str(t.lastgroup), t.group(), p, spaced))
            spaced, p = t.lastgroup == "space", t.end()
        if t is None:
            where, what = (m.start(), "unclosed action") if p >= len(src) else (p, f"unexpected {src[p]!r}")
            raise TemplateError(f"line {_line(src, where)}: {what}")
        items.append(_Act(toks, m.start()))
        pos, trim = t.end(), t.group().endswith("-}}")


@dataclass
class _Lit:
    value: Any


@dataclass
class _Func:
    name: str


@dataclass
class _Get:  # dot ("."), a variable ("$x") or a parenthesised pipeline, then fields: .X.Y, $m.Role, (p).X
    base: str | _Pipe
    fields: tuple[str, ...] = ()


@dataclass
class _Pipe:  # {{ $a, $b := cmd | cmd }}: each command's value becomes the last argument of the next
    decls: list[str]
    assign: bool  # "=" (set existing variables) rather than ":="
    cmds: list[list[_Lit | _Func | _Get]]
    line: int


@dataclass
class _Branch:  # if, with or range
    kind: str
    pipe: _Pipe
    body: list[_Node]
    else_: list[_Node]


class _Fail(Exception):
    """An error while running a pipeline; the pipeline turns it into a TemplateError naming its line."""


class _Jump(Exception):
    """{{break}} and {{continue}}: their classes stand in the node list, and running one raises it."""


class _Break(_Jump):
    pass


class _Continue(_Jump):
    pass


_Node = str | _Pipe | _Branch | type[_Jump]  # text, an action, a block, break/continue
_Arg = _Lit | _Func | _Get


class _Parser:
    def __init__(self, src: str) -> None:
        self.src, self.items, self.k = src, _lex(src), 0
        self.vars = ["$"]  # variables in scope: Go rejects an undefined one when parsing
        self.loops = 0  # ranges we are inside, for break and continue
        self.toks: list[_Tok] = []  # the action being parsed, and where we are in it
        self.ti = 0

    def fail(self, pos: int, msg: str) -> NoReturn:
        raise TemplateError(f"line {_line(self.src, pos)}: {msg}")

    def parse(self) -> list[_Node]:
        nodes, stop = self.block()
        if stop is not None:
            self.fail(stop.pos, _tag(stop.toks[0].text) + " without a matching {{if}}, {{range}} or {{with}}")
        return nodes

    def block(self) -> tuple[list[_Node], _Act | None]:
        """Nodes up to an {{end}} or {{else}} (returned too), or to the end of the source (None)."""
        nodes: list[_Node] = []
        while self.k < len(self.items):
            item = self.items[self.k]
            self.k += 1
            if isinstance(item, str):
                nodes.append(item)
                continue
            if not item.toks:
                self.fail(item.pos, "missing value for command")
            word = item.toks[0].text if item.toks[0].kind == "ident" else ""
            if word in ("end", "else"):
                return nodes, item
            if word in ("if", "with", "range"):
                nodes.append(self.branch(word, item))
            elif word in ("break", "continue"):
                if not self.loops or len(item.toks) > 1:
                    self.fail(item.pos, _tag(word) + " must stand alone inside a {{range}}")
                nodes.append(_Break if word == "break" else _Continue)
            elif word in ("define", "template", "block"):
                self.fail(item.pos, _tag(word) + " is not supported")
            else:
                nodes.append(self.pipeline(item, 0))
        return nodes, None

    def branch(self, kind: str, act: _Act) -> _Branch:
        mark = len(self.vars)
        pipe = self.pipeline(act, 1, two_vars=kind == "range")
        inner = len(self.vars)  # the pipeline's variables are seen by both branches, the body's by neither
        self.loops += kind == "range"
        body, stop = self.block()
        self.loops -= kind == "range"
        del self.vars[inner:]
        else_: list[_Node] = []
        if stop is not None and stop.toks[0].text == "else" and len(stop.toks) > 1:
            if kind == "range" or stop.toks[1].text != kind:
                self.fail(stop.pos, f"{_tag('else ' + stop.toks[1].text)} inside {_tag(kind)}")
            # {{else if x}} is a nested {{if x}} that shares our {{end}}
            else_, stop = [self.branch(kind, _Act(stop.toks[1:], stop.pos))], None
        elif stop is not None and stop.toks[0].text == "else":
            else_, stop = self.block()
            del self.vars[inner:]
            if stop is None or stop.toks[0].text != "end":
                self.fail(act.pos, _tag(kind) + " ... {{else}} has no matching {{end}}")
        elif stop is None:
            self.fail(act.pos, _tag(kind) + " has no matching {{end}}")
        if stop is not None and len(stop.toks) > 1:
            self.fail(stop.pos, "unexpected words after {{end}}")
        del self.vars[mark:]
        return _Branch(kind, pipe, body, else_)

    def pipeline(self, act: _Act, start: int, two_vars: bool = False) -> _Pipe:
        self.toks, self.ti = act.toks, start
        shape = [t.kind if t.kind == "var" else t.text for t in act.toks[start : start + 4]]
        n = 1 if shape[:1] == ["var"] and shape[1:2] in ([":="], ["="]) else 0
        if two_vars and shape[:3] == ["var", ",", "var"] and shape[3:4] in ([":="], ["="]):
            n = 2  # {{range $i, $x := ...}}
        decls = [act.toks[start + 2 * i].text for i in range(n)]
        op = act.toks[start + 2 * n - 1].text if n else ""
        self.ti += 2 * n
        for name in decls if op == "=" else []:
            if name not in self.vars:
                self.fail(act.pos, f"undefined variable {name!r}")
        cmds = self.commands(act.pos)
        if self.ti < len(self.toks):
            self.fail(self.toks[self.ti].pos, f"unexpected {self.toks[self.ti].text!r}")
        self.vars += decls if op == ":=" else []
        return _Pipe(decls, op == "=", cmds, _line(self.src, act.pos))

    def commands(self, pos: int) -> list[list[_Arg]]:
        cmds: list[list[_Arg]] = []
        while True:
            cmd: list[_Arg] = []
            while self.ti < len(self.toks) and (tok := self.toks[self.ti]).text not in ("|", ")"):
                if cmd and not tok.spaced:  # Go wants operands apart: `"a"$x` and `eq(` are errors
                    self.fail(tok.pos, f"unexpected {tok.text!r} in operand")
                cmd.append(self.operand())
            if not cmd:
                self.fail(pos, "missing value for command")
            if isinstance(cmd[0], _Lit) and cmd[0].value is None:
                self.fail(pos, "nil is not a command")
            if cmds and not isinstance(cmd[0], _Func):  # a piped value must go to a function
                self.fail(pos, f"non executable command in pipeline stage {len(cmds) + 1}")
            cmds.append(cmd)
            if self.ti == len(self.toks) or self.toks[self.ti].text != "|":
                return cmds
            self.ti += 1

    def operand(self) -> _Arg:
        tok = self.toks[self.ti]
        self.ti += 1
        node: _Arg
        if tok.kind == "str":
            node = _Lit(_ESCAPE.sub(partial(self.escape, tok.pos), tok.text[1:-1]))
        elif tok.kind == "raw":
            node = _Lit(tok.text[1:-1].replace("\r", ""))  # Go drops carriage returns from raw strings
        elif tok.kind == "num":
            is_int = re.fullmatch(r"[+-]?\d+", tok.text)
            node = _Lit(int(tok.text) if is_int else float(tok.text))
        elif tok.kind in ("field", "dot"):
            node = _Get(".", (tok.text[1:],) if tok.kind == "field" else ())
        elif tok.kind == "var":
            if tok.text not in self.vars:
                self.fail(tok.pos, f"undefined variable {tok.text!r}")
            node = _Get(tok.text)
        elif tok.text == "(":
            node = _Get(_Pipe([], False, self.commands(tok.pos), _line(self.src, tok.pos)))
            if self.ti == len(self.toks) or self.toks[self.ti].text != ")":
                self.fail(tok.pos, "unclosed left paren")
            self.ti += 1
        elif tok.text in ("true", "false", "nil"):
            node = _Lit({"true": True, "false": False, "nil": None}[tok.text])
        elif tok.kind == "ident" and tok.text in _FUNCS:
            node = _Func(tok.text)
        else:
            self.fail(
                tok.pos,
                f"function {tok.text!r} not defined" if tok.kind == "ident" else f"unexpected {tok.text!r}",
            )
        while (
            self.ti < len(self.toks) and self.toks[self.ti].kind == "field" and not self.toks[self.ti].spaced
        ):
            if not isinstance(node, _Get) or node == _Get("."):  # as in Go: no fields on a literal or on "."
                self.fail(self.toks[self.ti].pos, f"unexpected {self.toks[self.ti].text!r} after a term")
            node = replace(node, fields=(*node.fields, self.toks[self.ti].text[1:]))
            self.ti += 1
        return node

    def escape(self, pos: int, m: re.Match[str]) -> str:
        s = m.group(1)
        if len(s) > 1:
            return chr(int(s[1:], 16) if s[0] in "xuU" else int(s, 8))
        if s not in _ESCAPES:
            self.fail(pos, f"unknown escape sequence \\{s}")
        return _ESCAPES[s]


# The functions. Values are Python's: str, int, float, bool, None (nil), list (slice), dict (struct).
_MISSING = object()  # no piped value yet (a piped nil is None)


class Struct:
    """A Go struct value: its fields by Go name, what JSON marshals it to (its json tags), and, for a
    type with a String method (Ollama's tool types print as their JSON), what printing it shows."""

    def __init__(self, fields: dict[str, Any], data: Any, printed: str | None = None) -> None:
        self.fields = fields
        self.data = data
        self.printed = printed


class JsonMap(dict):  # type: ignore[type-arg]
    """A Go map whose type prints as its JSON (Ollama's tool call arguments)."""


def _truth(v: Any) -> bool:  # false, 0, nil and empty strings, slices and maps are false; structs are true
    return bool(v) if v is None or isinstance(v, (bool, int, float, str, list)) else True


def _go_type(v: Any) -> str:
    names = {type(None): "nil", bool: "bool", int: "int", float: "float64", str: "string", list: "slice"}
    return names.get(type(v), "struct")


def _to_str(v: Any, top: bool = True) -> str:
    """A value printed as Go prints it; nil is "<no value>" on its own, "<nil>" inside a list or printf."""
    if v is None:
        return "<no value>" if top else "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, JsonMap):
        return _json(v)
    if isinstance(v, Struct):
        return v.printed if v.printed is not None else _to_str(v.fields, top)
    if isinstance(v, float):
        return repr(v).removesuffix(".0")
    if isinstance(v, (list, dict)):
        inner = " ".join(_to_str(x, False) for x in (v.values() if isinstance(v, dict) else v))
        return f"[{inner}]" if isinstance(v, list) else f"{{{inner}}}"
    return str(v)


def _field(v: Any, name: str) -> Any:
    if isinstance(v, Struct):
        if name in v.fields:
            return v.fields[name]
        v = v.fields
    elif isinstance(v, dict) and name in v:
        return v[name]
    known = f": it is none of {', '.join(v)}" if isinstance(v, dict) else f" in type {_go_type(v)}"
    raise _Fail(f"can't evaluate field {name}{known}")


def _basic(v: Any) -> str:
    return _go_type(v) if v is None or isinstance(v, (bool, int, float, str)) else "other"


def _eq(a: Any, *others: Any) -> bool:
    """Go's eq: a equals one of the others; basic values of different kinds are an error unless one is nil."""
    if not others:
        raise _Fail("missing argument for comparison")
    for b in others:
        if _basic(a) != _basic(b):
            if a is not None and b is not None:
                raise _Fail(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}")
        elif isinstance(a, list):
            raise _Fail("non-comparable type slice")
        elif a is b or (_basic(a) != "other" and a == b):
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    if _basic(a) != _basic(b) or _basic(a) not in ("int", "float64", "string"):
        raise _Fail(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}")
    return bool(a < b)


def _len(v: Any) -> int:
    if not isinstance(v, (str, list, dict)):
        raise _Fail(f"len of type {_go_type(v)}")
    return len(v.encode() if isinstance(v, str) else v)  # a Go string's length is in bytes


def _index(v: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(v, list) and type(key) is int and 0 <= key < len(v):
            v = v[key]
        else:
            raise _Fail(f"can't index item of type {_go_type(v)} with {_to_str(key, False)}")
    return v


def _slice(v: Any, *idx: Any) -> Any:
    """x[i:j], or x[i:j:k] for a list (k only bounds j); a string is sliced by bytes, as in Go."""
    seq = v.encode() if isinstance(v, str) else v
    if (
        not isinstance(seq, (bytes, list))
        or len(idx) > 3 - isinstance(v, str)
        or {type(i) for i in idx} - {int}
    ):
        raise _Fail(f"can't slice item of type {_go_type(v)} with {len(idx)} integer indexes")
    lo, hi, cap = (*idx, len(seq), len(seq), len(seq))[:3] if idx else (0, len(seq), len(seq))
    if not 0 <= lo <= hi <= cap <= len(seq):
        raise _Fail(f"slice index out of range: {list(idx)}")
    return seq[lo:hi].decode(errors="replace") if isinstance(seq, bytes) else seq[lo:hi]


def _print(*args: Any) -> str:  # Go's Sprint: a space between two operands when neither is a string
    gaps = [i > 0 and not isinstance(a, str) and not isinstance(args[i - 1], str) for i, a in enumerate(args)]
    return "".join(" " * gap + _to_str(a, False) for gap, a in zip(gaps, args, strict=True))


def _printf(fmt: Any, *args: Any) -> str:
    """Go's Sprintf for %s %v %d %q and %% (with a width, and "-" to pad on the right)."""
    rest = list(args)

    def one(m: re.Match[str]) -> str:
        spec = re.fullmatch(r"%(-?)(\d*)([svdq%])", m.group())
        if spec is None:
            raise _Fail(f"printf {m.group()} is not supported (only %s %v %d %q %%, with a width)")
        left, width, verb = spec.groups()
        if verb == "%" or not rest:
            return "%" if verb == "%" else f"%!{verb}(MISSING)"
        a = rest.pop(0)
        if verb == "v" or (verb in "sq" and isinstance(a, str)) or (verb == "d" and type(a) is int):
            s = json.dumps(a, ensure_ascii=False) if verb == "q" else _to_str(a, False)
        else:
            s = f"%!{verb}({_go_type(a)}={_to_str(a, False)})"
        return s.ljust(int(width or 0)) if left else s.rjust(int(width or 0))

    if not isinstance(fmt, str):
        raise _Fail(f"printf's format is a {_go_type(fmt)}, not a string")
    out = re.sub(r"%[-+# 0-9.]*[a-zA-Z%]", one, fmt)
    extra = ", ".join(f"{_go_type(a)}={_to_str(a, False)}" for a in rest)
    return out + f"%!(EXTRA {extra})" * bool(rest)


def _json(v: Any) -> str:
    """Go's json.Marshal, which also escapes <, > and & (and U+2028/9) inside strings."""
    s = json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=lambda o: o.data)
    return s.translate({ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})


def _date(days_ago: int, *_format: Any) -> str:  # Ollama ignores the format argument: always YYYY-MM-DD
    return (datetime.date.today() - datetime.timedelta(days=days_ago)).isoformat()


_TS_TYPES = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean",
             "array": "any[]", "object": "object"}  # fmt: skip

_FUNCS: dict[str, Callable[..., Any]] = {
    "and": _truth,  # stand-ins: and/or stop at the argument that decides, so the evaluator runs them
    "or": _truth,
    "not": lambda v: not _truth(v),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _lt,
    "le": lambda a, b: _lt(a, b) or _eq(a, b),
    "gt": lambda a, b: not (_lt(a, b) or _eq(a, b)),
    "ge": lambda a, b: not _lt(a, b),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _print,
    "println": lambda *a: " ".join(_to_str(x, False) for x in a) + "\n",
    "printf": _printf,
    "json": _json,
    "currentDate": partial(_date, 0),
    "yesterdayDate": partial(_date, 1),
    "toTypeScriptType": lambda v: _TS_TYPES.get(_to_str(v, False), "any"),  # a tool parameter's type
}
_SIGNATURES = {name: inspect.signature(fn) for name, fn in _FUNCS.items()}


class _Exec:
    def __init__(self, root: dict[str, Any]) -> None:
        self.vars: list[tuple[str, Any]] = [("$", root)]  # a stack: blocks pop what they pushed
        self.out: list[str] = []

    def run(self, nodes: list[_Node], dot: Any) -> None:
        for n in nodes:
            if isinstance(n, str):
                self.out.append(n)
            elif isinstance(n, _Pipe):
                value = self.pipe(n, dot)
                if not n.decls:  # an action that declares or assigns prints nothing
                    self.out.append(_to_str(value))
            elif isinstance(n, _Branch):
                mark = len(self.vars)
                try:
                    if n.kind == "range":
                        self.range(n, dot)
                    elif _truth(value := self.pipe(n.pipe, dot)):
                        self.run(n.body, value if n.kind == "with" else dot)
                    else:
                        self.run(n.else_, dot)
                finally:
                    del self.vars[mark:]
            else:
                raise n()

    def range(self, n: _Branch, dot: Any) -> None:
        value = self.pipe(n.pipe, dot)  # as in Go, its variables hold the whole value until set (and in else)
        if isinstance(value, (list, dict)) or value is None:
            pairs = list(enumerate(value or [])) if not isinstance(value, dict) else sorted(value.items())
        elif type(value) is int:
            pairs = [(i, i) for i in range(value)]  # Go 1.22's range over an integer
        else:
            raise TemplateError(f"line {n.pipe.line}: range can't iterate over {_to_str(value)}")
        if not pairs:
            self.run(n.else_, dot)
        mark = len(self.vars)
        for key, elem in pairs:
            for name, v in zip(
                n.pipe.decls, (elem,) if len(n.pipe.decls) == 1 else (key, elem), strict=False
            ):
                self.set(name, v, assign=True)
            try:
                self.run(n.body, elem)
            except _Break:
                break
            except _Continue:
                pass
            finally:
                del self.vars[mark:]

    def set(self, name: str, value: Any, assign: bool) -> None:
        """Declare (push) a variable, or assign to the innermost one of that name."""
        where = [i for i, (k, _) in enumerate(self.vars) if k == name] if assign else [len(self.vars)]
        if not where:
            raise _Fail(f"undefined variable {name}")
        self.vars[where[-1] : where[-1] + 1] = [(name, value)]  # at len(self.vars) this appends

    def pipe(self, p: _Pipe, dot: Any) -> Any:
        try:
            value: Any = _MISSING
            for cmd in p.cmds:
                value = self.command(cmd, dot, value)
            for name in p.decls:
                self.set(name, value, p.assign)
            return value
        except _Fail as e:
            raise TemplateError(f"line {p.line}: {e}") from None

    def command(self, cmd: list[_Arg], dot: Any, piped: Any) -> Any:
        if isinstance(cmd[0], _Func):
            return self.call(cmd[0].name, cmd[1:], dot, piped)
        if len(cmd) > 1 or piped is not _MISSING:
            raise _Fail("can't give argument to non-function (method calls are not supported)")
        return self.arg(cmd[0], dot)

    def arg(self, node: _Arg, dot: Any) -> Any:
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Func):  # a function name as an argument is a call without arguments
            return self.call(node.name, [], dot, _MISSING)
        if isinstance(node.base, _Pipe):
            value = self.pipe(node.base, dot)
        elif node.base == ".":
            value = dot
        elif (value := next((v for k, v in reversed(self.vars) if k == node.base), _MISSING)) is _MISSING:
            raise _Fail(f"undefined variable {node.base}")
        for name in node.fields:
            value = _field(value, name)
        return value

    def call(self, name: str, nodes: list[_Arg], dot: Any, piped: Any) -> Any:
        thunks: list[Callable[[], Any]] = [partial(self.arg, n, dot) for n in nodes]
        thunks += [lambda: piped] if piped is not _MISSING else []
        if name in ("and", "or"):  # the first argument that decides is the value; the rest are not run
            if not thunks:
                raise _Fail(f"wrong number of args for {name}: want at least 1 got 0")
            for thunk in thunks:
                if _truth(value := thunk()) == (name == "or"):
                    break
            return value
        args = [thunk() for thunk in thunks]
        try:
            return _FUNCS[name](*args)
        except TypeError:
            try:  # only now look at why: binding on every call would cost a quarter of the run time
                _SIGNATURES[name].bind(*args)
            except TypeError:
                raise _Fail(f"wrong number of args for {name}: got {len(args)}") from None
            raise


def _identifiers(nodes: list[_Node]) -> set[str]:
    """Every field name the template mentions, lower-cased: how Ollama picks which way to render."""
    names: set[str] = set()

    def pipe(p: _Pipe) -> None:
        for arg in (a for cmd in p.cmds for a in cmd if isinstance(a, _Get)):
            names.update(f.lower() for f in arg.fields)
            if isinstance(arg.base, _Pipe):
                pipe(arg.base)

    for n in nodes:
        if isinstance(n, (_Pipe, _Branch)):
            pipe(n.pipe if isinstance(n, _Branch) else n)
        if isinstance(n, _Branch):
            names |= _identifiers(n.body) | _identifiers(n.else_)
    return names


def _prints_response(p: _Pipe) -> bool:
    gets = [a for cmd in p.cmds for a in cmd if isinstance(a, _Get)]
    return any(
        (g.base == "." and "Response" in g.fields) or (isinstance(g.base, _Pipe) and _prints_response(g.base))
        for g in gets
    )


def _cut_after_response(nodes: list[_Node], cut: list[bool]) -> list[_Node]:
    """The nodes up to the first action using .Response, in source order; Ollama renders the last turn of a
    template without .Messages this way, so the prompt stops where the reply starts."""
    out: list[_Node] = []
    for n in nodes:
        if cut[0]:
            break
        if isinstance(n, _Pipe):
            cut[0] = _prints_response(n)
        elif isinstance(n, _Branch):  # as in Ollama, a block's condition does not count, only its branches
            body = _cut_after_response(n.body, cut)
            n = replace(n, body=body, else_=[] if cut[0] else _cut_after_response(n.else_, cut))
        out.append(n)
    return out


class Template:
    """A parsed template. `uses_messages`: it reads .Messages (else render_chat renders it turn by turn)."""

    def __init__(self, source: str, nodes: list[_Node]) -> None:
        self.source = source
        names = _identifiers(nodes)
        self.uses_messages = "messages" in names
        if not self.uses_messages and "response" not in names:
            # Ollama appends {{ .Response }} to such a template, so past turns keep the assistant's words.
            nodes = [*nodes, _Pipe([], False, [[_Get(".", ("Response",))]], _line(source, len(source)))]
        self._nodes = nodes

    def render(
        self,
        *,
        messages: list[dict[str, Any]],
        system: str = "",
        prompt: str = "",
        response: str = "",
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Run the template once over these values: messages are dicts with "role" and "content" (and
        "tool_calls", "tool_call_id", "name" as OpenAI writes them), tools as OpenAI's request lists them."""
        return self._run(self._nodes, system, prompt, response, messages, tools or [])

    @staticmethod
    def _run(
        nodes: list[_Node],
        system: str,
        prompt: str,
        response: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        # The data Ollama gives a template; each message is its templateMessage struct.
        msgs: list[dict[str, Any]] = [
            {"Role": m.get("role", ""), "Content": m.get("content", ""), "Thinking": m.get("thinking", "")}
            | {
                "Images": [],
                "ToolCalls": [_tool_call(i, c) for i, c in enumerate(m.get("tool_calls") or ())],
                "ToolName": m.get("name") or m.get("tool_name", ""),
                "ToolCallID": m.get("tool_call_id", ""),
            }
            for m in messages
        ]
        root: dict[str, Any] = {
            "System": system,
            "Prompt": prompt,
            "Response": response,
            "Messages": msgs,
            "Tools": [_tool(t) for t in tools or ()],
        }
        root |= {"Suffix": "", "Think": False, "ThinkLevel": "", "IsThinkSet": False}
        ex = _Exec(root)
        try:
            ex.run(nodes, root)
        except _Fail as e:  # only from a range's own variables, outside any pipeline
            raise TemplateError(str(e)) from None
        return "".join(ex.out)


def _json_struct(fields: dict[str, Any], data: dict[str, Any]) -> Struct:
    """A struct of Ollama's tool types, which print as their JSON."""
    return Struct(fields, data, _json(data))


def _tool_call(index: int, call: dict[str, Any]) -> Struct:
    """Ollama's api.ToolCall for an OpenAI-style call (arguments an object)."""
    fn = call.get("function") or {}
    arguments = JsonMap(fn["arguments"] if isinstance(fn.get("arguments"), dict) else {})
    name = str(fn.get("name") or "")
    function = Struct(
        {"Index": index, "Name": name, "Arguments": arguments},
        {"index": index, "name": name, "arguments": arguments},
    )
    data = {"id": call["id"], "function": function} if call.get("id") else {"function": function}
    return Struct({"ID": str(call.get("id") or ""), "Function": function}, data)


def _property_type(kind: Any) -> str:
    """api.PropertyType prints one type as itself, several as a Go list."""
    if isinstance(kind, list):
        return str(kind[0]) if len(kind) == 1 else f"[{' '.join(map(str, kind))}]"
    return "" if kind is None else str(kind)


def _tool(tool: dict[str, Any]) -> Struct:
    """Ollama's api.Tool for an OpenAI-style tool; its JSON keeps the fields Ollama's types keep."""
    fn = tool.get("function") or {}
    params: dict[str, Any] = fn["parameters"] if isinstance(fn.get("parameters"), dict) else {}
    properties = {}
    for key, prop in sorted((params.get("properties") or {}).items()):
        prop = prop if isinstance(prop, dict) else {}
        data = {k: prop[k] for k in ("type", "items", "description", "enum") if prop.get(k)}
        properties[key] = _json_struct(
            {
                "Type": _property_type(prop.get("type")),
                "Items": prop.get("items"),
                "Description": prop.get("description", ""),
                "Enum": prop.get("enum"),
            },
            data,
        )
    param_data = {"type": params.get("type", "object")}
    param_data |= {k: params[k] for k in ("$defs", "items") if params.get(k)}
    param_data |= {"required": params.get("required"), "properties": properties}
    parameters = _json_struct(
        {
            "Type": param_data["type"],
            "Defs": params.get("$defs"),
            "Items": params.get("items"),
            "Required": params.get("required") or [],
            "Properties": properties,
        },
        param_data,
    )
    name, description = str(fn.get("name") or ""), str(fn.get("description") or "")
    fn_data = (
        {"name": name} | ({"description": description} if description else {}) | {"parameters": parameters}
    )
    function = _json_struct({"Name": name, "Description": description, "Parameters": parameters}, fn_data)
    return _json_struct(
        {"Type": "function", "Items": None, "Function": function}, {"type": "function", "function": function}
    )


def parse(template: str) -> Template:
    """Parse a template; raises TemplateError."""
    return Template(template, _Parser(template).parse())


def render_chat(
    template: Template | str,
    messages: list[dict[str, Any]],
    system_default: str = "",
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt Ollama builds for a chat (its Template.Execute).

    `system_default` (the model's SYSTEM) goes first when the chat does not start with a system message.
    Consecutive messages of one role merge, joined by a blank line; all system messages joined make
    .System. A template that uses .Messages is rendered once. One that does not is rendered once per
    earlier turn (.System, .Prompt = a user message, .Response = the reply to it), then for the last turn
    (.Prompt = the last user message) only up to its .Response, so the prompt ends where the reply starts.
    """
    tmpl = parse(template) if isinstance(template, str) else template
    if messages and messages[0].get("role") != "system" and system_default:
        messages = [{"role": "system", "content": system_default}, *messages]
    merged: list[dict[str, str]] = []
    for m in messages:
        if merged and merged[-1].get("role") == m.get("role") != "tool":
            merged[-1] = {
                **merged[-1],
                "content": f"{merged[-1].get('content', '')}\n\n{m.get('content', '')}",
            }
        else:
            merged.append(m)
    system = "\n\n".join(m.get("content", "") for m in messages if m.get("role") == "system")
    if tmpl.uses_messages:
        return tmpl.render(messages=merged, system=system, tools=tools)
    parts, turn = [], {"system": "", "user": "", "assistant": ""}
    for m in merged:
        role = m.get("role", "")
        if (role == "system" and (turn["user"] or turn["assistant"])) or (
            role == "user" and turn["assistant"]
        ):
            parts.append(tmpl._run(tmpl._nodes, turn["system"], turn["user"], turn["assistant"], []))
            turn = {"system": "", "user": "", "assistant": ""}
        if role in turn:
            turn[role] = m.get("content", "")
    last = _cut_after_response(tmpl._nodes, [False])
    parts.append(tmpl._run(last, turn["system"], turn["user"], turn["assistant"], []))
    return "".join(parts)

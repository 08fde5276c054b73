"""Model names in Ollama's grammar: ``[host/][namespace/]model[:tag]``, and blob digests.

Every part is checked against Ollama's character rules before it is used, so a name can never carry a path
separator, ``..``, a NUL or anything else that would reach outside the store once joined into a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hyperllama_common.errors import InvalidRequest, quote

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Ollama's limits (types/model/name.go): a host may be long (it can carry a port), the other parts 80.
_MAX_HOST = 350
_MAX_PART = 80

# First character alphanumeric or underscore; later ones also '-' and '.'; a namespace takes no '.' (so no
# '..'), and only a host takes ':' (its port). A part made only of dots cannot pass the first-character rule.
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-f]{64})")


class InvalidName(InvalidRequest):
    """A model name or digest that does not follow the grammar (a 400)."""


def _check(kind: str, value: str, pattern: re.Pattern[str], limit: int, text: str) -> str:
    if not value or len(value) > limit or not pattern.fullmatch(value):
        raise InvalidName(f"invalid model name {quote(text)!r}: bad {kind} {quote(value)!r}", param="model")
    # A host such as "a.." passes the character rules; a path component made of dots never may.
    if ".." in value:
        raise InvalidName(f"invalid model name {quote(text)!r}: bad {kind} {quote(value)!r}", param="model")
    return value


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name. Parts keep the case they were written in; equality and hashing ignore
    case, as Ollama treats "Mistral" and "mistral" as one model."""

    host: str
    namespace: str
    model: str
    tag: str
    _key: tuple[str, str, str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        _check("host", self.host, _HOST_RE, _MAX_HOST, text)
        _check("namespace", self.namespace, _NAMESPACE_RE, _MAX_PART, text)
        _check("model", self.model, _PART_RE, _MAX_PART, text)
        _check("tag", self.tag, _PART_RE, _MAX_PART, text)
        key = (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())
        object.__setattr__(self, "_key", key)

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse ``text`` and fill the missing parts with Ollama's defaults."""
        if not isinstance(text, str) or not text:
            raise InvalidName("model name is required", param="model")
        if len(text) > _MAX_HOST + 3 * _MAX_PART + 3:
            raise InvalidName(f"invalid model name {quote(text)!r}: too long", param="model")
        rest = text
        # Ollama accepts a scheme in front of the host; whether plain http is allowed is the caller's choice.
        for scheme in ("https://", "http://"):
            if rest.startswith(scheme):
                rest = rest[len(scheme) :]
                break
        tag = DEFAULT_TAG
        # A tag can hold no '/', so a ':' after the last '/' starts the tag; an earlier one is a host's port.
        if rest.rfind(":") > rest.rfind("/"):
            rest, tag = rest.rsplit(":", 1)
            if not tag:
                raise InvalidName(f"invalid model name {quote(text)!r}: empty tag", param="model")
        pieces = rest.split("/")
        if len(pieces) > 3:
            raise InvalidName(f"invalid model name {quote(text)!r}: too many parts", param="model")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(pieces) == 3:
            host, namespace, model = pieces
        elif len(pieces) == 2:
            namespace, model = pieces
        else:
            (model,) = pieces
        try:
            return cls(host, namespace, model, tag)
        except InvalidName as err:
            # Quote what the client wrote, not the name with defaults filled in.
            raise InvalidName(f"invalid model name {quote(text)!r}", param="model") from err

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The parts in lower case: what two names are compared by."""
        return self._key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelName):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """Host, namespace, model and tag: the manifest's path components under ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def repository(self) -> str:
        """The repository path in a registry's ``/v2/<repository>/...`` URLs."""
        return f"{self.namespace}/{self.model}"

    @property
    def display(self) -> str:
        """The shortest form, as Ollama lists it: defaults are left out from the left (host, then namespace)
        and the tag is always shown."""
        if self._key[0] != DEFAULT_HOST:
            return str(self)
        if self._key[1] != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse_digest(text: str) -> str:
    """``sha256:<hex>`` or ``sha256-<hex>`` (Ollama's file-name form) → ``sha256:<hex>``."""
    match = _DIGEST_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidName(f"invalid digest {quote(str(text))!r}", param="digest")
    return f"sha256:{match.group(1)}"

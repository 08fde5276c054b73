"""Ollama's model name grammar and digest parsing, and that no accepted name reaches outside the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from hyperllama_common.errors import InvalidRequest
from hyperllama_store.layout import Layout
from hyperllama_store.names import InvalidName, ModelName, parse_digest
from hypothesis import given, settings
from hypothesis import strategies as st

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "parts", "display"),
    [
        ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m"), "smollm2:135m"),
        ("smollm2", ("registry.ollama.ai", "library", "smollm2", "latest"), "smollm2:latest"),
        ("me/llama3.2:1b", ("registry.ollama.ai", "me", "llama3.2", "1b"), "me/llama3.2:1b"),
        (
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
            ("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"),
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        ),
        (
            "localhost:5000/team/model",
            ("localhost:5000", "team", "model", "latest"),
            "localhost:5000/team/model:latest",
        ),
        ("https://example.com/ns/m:t", ("example.com", "ns", "m", "t"), "example.com/ns/m:t"),
        ("_x/y_z:v_1", ("registry.ollama.ai", "_x", "y_z", "v_1"), "_x/y_z:v_1"),
    ],
)
def test_parses_ollama_names_with_defaults(text: str, parts: tuple[str, ...], display: str) -> None:
    name = ModelName.parse(text)
    assert name.parts == parts
    assert name.display == display
    assert str(name) == f"{parts[0]}/{parts[1]}/{parts[2]}:{parts[3]}"
    assert name.repository == f"{parts[1]}/{parts[2]}"
    assert ModelName.parse(str(name)) == name


def test_names_compare_without_case_but_keep_it() -> None:
    upper = ModelName.parse("Library/SmolLM2:135M")
    lower = ModelName.parse("smollm2:135m")
    assert upper == lower
    assert hash(upper) == hash(lower)
    assert upper.display == "SmolLM2:135M"
    assert upper.model == "SmolLM2"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../etc/passwd",
        "a/b/c/d/e",
        "a/b/c/d",
        "x:../y",
        "ns/..:x",
        "..",
        "model:..",
        "a\x00b",
        "model:tag\x00",
        "/abs/path",
        "/etc/passwd",
        "ns//model",
        "model:",
        ":tag",
        "-model",
        ".hidden",
        "ns.dot/model",
        "model:ta/g",
        "mo del",
        "model:tag:extra/x",
        "a..b.com/ns/model",
        "m" * 81,
        "model:" + "t" * 81,
        "ns/mödel",
        "model@sha256:" + HEX,
    ],
)
def test_rejects_bad_names(text: str) -> None:
    with pytest.raises(InvalidName) as raised:
        ModelName.parse(text)
    assert raised.value.http_status == 400
    assert isinstance(raised.value, InvalidRequest)


def test_the_error_quotes_what_the_client_wrote() -> None:
    with pytest.raises(InvalidName, match=r"invalid model name 'x:\.\./y'"):
        ModelName.parse("x:../y")


def test_digests_in_both_forms() -> None:
    assert parse_digest(f"sha256:{HEX}") == f"sha256:{HEX}"
    assert parse_digest(f"sha256-{HEX}") == f"sha256:{HEX}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha512:" + HEX,
        "sha256:" + "g" * 64,
        "sha256/" + HEX,
        "sha256:../" + HEX,
        HEX,
        f"sha256:{HEX}\x00",
        f" sha256:{HEX}",
    ],
)
def test_rejects_bad_digests(text: str) -> None:
    with pytest.raises(InvalidName) as raised:
        parse_digest(text)
    assert raised.value.http_status == 400


_NAME_CHARS = st.sampled_from(list("aZ09_-.:/@+ \x00\\~%") + ["..", "../", "/.."])


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=60), st.lists(_NAME_CHARS, max_size=30).map("".join)))
def test_parse_raises_only_invalid_name_and_paths_stay_in_the_store(tmp_path_factory, text: str) -> None:
    try:
        name = ModelName.parse(text)
    except InvalidName:
        return
    root = _root(tmp_path_factory)
    layout = Layout(root)
    path = layout.manifest_path(name)
    assert path.is_relative_to(root / "manifests")
    assert path.relative_to(root / "manifests").parts == name.parts
    for part in name.parts:
        assert part not in ("", ".", "..") and "/" not in part and "\x00" not in part


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80))
def test_parse_digest_raises_only_invalid_name(tmp_path_factory, text: str) -> None:
    try:
        digest = parse_digest(text)
    except InvalidName:
        return
    path = Layout(_root(tmp_path_factory)).blob_path(digest)
    assert path.parent.name == "blobs"


_ROOTS: dict[int, Path] = {}


def _root(factory: pytest.TempPathFactory) -> Path:
    # One store root for all examples: hypothesis runs many examples per test function.
    key = id(factory)
    if key not in _ROOTS:
        _ROOTS[key] = factory.mktemp("store").resolve()
    return _ROOTS[key]

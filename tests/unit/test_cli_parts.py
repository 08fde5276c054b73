"""The command line's pure parts: Modelfile parsing, where the server is, and Ollama's sizes and times."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hyperllama_cli.api import Api, ApiError, server_url
from hyperllama_cli.display import WordWrapper, print_table
from hyperllama_cli.humanize import human_bytes, human_time, parse_time
from hyperllama_cli.modelfile import ModelfileError, create_body, directory_files, local_source, parse

MODELFILE = '''
# comments and blank lines are skipped
FROM smollm2:135m
parameter num_ctx 4096
PARAMETER temperature 0.2
PARAMETER stop "<|im_end|>"
PARAMETER stop User:
PARAMETER use_mmap false
SYSTEM """You are terse.
Answer in "one" word."""
TEMPLATE "{{ .Prompt }}"
MESSAGE user Hi
MESSAGE assistant """Hello
there"""
LICENSE MIT
'''


def test_a_modelfile_becomes_the_create_body_with_typed_parameters() -> None:
    mf = parse(MODELFILE)
    assert mf.source == "smollm2:135m"
    assert create_body("terse", mf) == {
        "model": "terse",
        "parameters": {
            "num_ctx": 4096,
            "temperature": 0.2,
            "stop": ["<|im_end|>", "User:"],
            "use_mmap": False,
        },
        "template": "{{ .Prompt }}",
        "system": 'You are terse.\nAnswer in "one" word.',
        "license": ["MIT"],
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello\nthere"}],
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("PARAMETER temperature 1\n", "no FROM line"),
        ("FROM m\nPARAMETER num_ctx big\n", "line 2: parameter 'num_ctx' must be an integer, not 'big'"),
        ("FROM m\nPARAMETER nope 1\n", "line 2: unknown parameter 'nope'"),
        ("FROM m\nPARAMETER use_mmap maybe\n", "must be true or false"),
        ('FROM m\nSYSTEM """never closed\n', 'unterminated """'),
        ("FROM m\nMESSAGE robot hi\n", "line 2: MESSAGE role must be one of"),
        ("FROM m\nADAPTER ./lora.gguf\n", "ADAPTER is not supported"),
        ("FROM m\nQUANTIZE q4\n", "line 2: unknown instruction 'QUANTIZE'"),
        ("FROM\n", "line 1: FROM needs a value"),
    ],
)
def test_a_bad_modelfile_names_its_line(text: str, error: str) -> None:
    with pytest.raises(ModelfileError, match=error.replace("(", r"\(").replace('"', '"')):
        parse(text)


def test_from_a_local_file_or_directory(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert local_source("./model.gguf", tmp_path) == tmp_path / "model.gguf"
    assert local_source("smollm2:135m", tmp_path) is None
    with pytest.raises(ModelfileError, match="no such file"):
        local_source("./missing.gguf", tmp_path)
    hf = tmp_path / "hf"
    hf.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "chat_template.jinja"):
        (hf / name).write_text("{}")
    assert [p.name for p in directory_files(hf)] == [
        "chat_template.jinja",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    (hf / "model.safetensors").unlink()
    with pytest.raises(ModelfileError, match="no .safetensors"):
        directory_files(hf)


@pytest.mark.parametrize(
    ("env", "flag", "url"),
    [
        ({}, None, "http://127.0.0.1:11434"),
        ({"OLLAMA_HOST": "0.0.0.0"}, None, "http://0.0.0.0:11434"),
        ({"OLLAMA_HOST": ":8080"}, None, "http://127.0.0.1:8080"),
        ({"OLLAMA_HOST": "a", "HYPERLLAMA_HOST": "gpu-box:9000"}, None, "http://gpu-box:9000"),
        ({"HYPERLLAMA_HOST": "https://llm.example.com"}, None, "https://llm.example.com:443"),
        ({"HYPERLLAMA_HOST": "http://proxy/llama/"}, None, "http://proxy:80/llama"),
        ({"HYPERLLAMA_HOST": "x:1"}, "[::1]:5000", "http://[::1]:5000"),
    ],
)
def test_the_server_is_found_as_ollama_finds_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], flag: str | None, url: str
) -> None:
    for name in ("HYPERLLAMA_HOST", "OLLAMA_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert server_url(flag) == url


def test_a_bad_host_is_an_error() -> None:
    with pytest.raises(ApiError, match="scheme must be http or https"):
        server_url("ftp://box")
    with pytest.raises(ApiError, match="invalid host"):
        server_url("box:port")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (98_363_016, "98 MB"),
        (4_700_000_000, "4.7 GB"),
        (2e12, "2 TB"),
    ],
)
def test_sizes_in_decimal_units(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_times_relative_to_now() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert human_time(now - timedelta(days=3), now=now) == "3 days ago"
    assert human_time(now + timedelta(minutes=4, seconds=30), now=now) == "4 minutes from now"
    assert human_time(now - timedelta(minutes=1, seconds=5), now=now) == "About a minute ago"
    assert human_time(parse_time("2318-01-01T00:00:00Z"), now=now) == "Forever"
    assert human_time(None) == "Never"
    # Go's nanoseconds and a naive time (taken as UTC) both parse.
    assert parse_time("2026-11-23T17:02:32.862966123+01:00") == datetime(
        2026, 11, 23, 16, 2, 32, 862966, tzinfo=UTC
    )
    assert parse_time("2026-11-23T17:02:32") == datetime(2026, 11, 23, 17, 2, 32, tzinfo=UTC)


def test_tables_have_no_borders_and_no_trailing_space() -> None:
    out = io.StringIO()
    print_table(["NAME", "ID"], [["smollm2:135m", "d761a5f8fa62"], ["[not-markup]:x", "1"]], out)
    assert out.getvalue().splitlines() == [
        "NAME              ID",
        "smollm2:135m      d761a5f8fa62",
        "[not-markup]:x    1",
    ]


def test_word_wrap_breaks_between_words() -> None:
    out = io.StringIO()
    wrapper = WordWrapper(out, 12)
    for piece in ["The sky", " is blue be", "cause of Rayleigh", " scattering.\nYes"]:
        wrapper.write(piece)
    wrapper.close()
    assert out.getvalue().splitlines() == [
        "The sky is ",
        "blue because",
        "of Rayleigh ",
        "scattering.",
        "Yes",
    ]


def test_an_api_key_goes_as_a_bearer_token() -> None:
    with_key, without = Api("http://127.0.0.1:1", "hl-secret"), Api("http://127.0.0.1:1")
    try:
        assert with_key._http.headers["Authorization"] == "Bearer hl-secret"
        assert "Authorization" not in without._http.headers
    finally:
        with_key.close()
        without.close()

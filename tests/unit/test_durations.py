"""keep_alive as Ollama reads it: seconds as a number, or a Go duration string."""

from __future__ import annotations

import pytest
from hyperllama_common.durations import keep_alive_ms, parse_go_duration
from hyperllama_common.errors import InvalidRequest
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300),
        ("1h30m", 5400),
        ("10s", 10),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("0", 0),
        ("-1s", -1),
        ("2h", 7200),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "five minutes", "1d", "m", "-", "1h 30m"])
def test_what_go_refuses_we_refuse(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


def test_keep_alive_values() -> None:
    assert keep_alive_ms(None) is None  # absent: the cluster's default
    assert keep_alive_ms(0) == 0  # unload after the request
    assert keep_alive_ms("0") == 0
    assert keep_alive_ms(30) == 30_000
    assert keep_alive_ms(2.5) == 2_500
    assert keep_alive_ms("5m") == 300_000
    assert keep_alive_ms(-1) == -1  # forever
    assert keep_alive_ms("-1m") == -1
    assert keep_alive_ms(10**12) == -1  # beyond any real lifetime: forever


@pytest.mark.parametrize("value", ["soon", True, [5], {"m": 5}, float("nan")])
def test_bad_keep_alive_is_invalid_request(value: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        keep_alive_ms(value)
    assert err.value.param == "keep_alive"


@given(st.integers(min_value=0, max_value=10**6))
def test_seconds_and_their_duration_string_agree(seconds: int) -> None:
    assert keep_alive_ms(seconds) == keep_alive_ms(f"{seconds}s")

"""UTF-8 assembly and stop-string holdback: what a streaming client sees."""

from hyperllama_common.textstream import StopStringFilter, Utf8Assembler


def run(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    f = StopStringFilter(stops)
    out, hit = [], False
    for piece in pieces:
        text, hit = f.feed(piece)
        if text:
            out.append(text)
        if hit:
            break
    tail = f.flush()
    if tail:
        out.append(tail)
    return out, hit


def test_multibyte_character_split_across_tokens_is_held_until_complete():
    asm = Utf8Assembler()
    euro = "€".encode()  # 3 bytes
    assert asm.feed(b"price " + euro[:1]) == "price "
    assert asm.feed(euro[1:2]) == ""
    assert asm.feed(euro[2:] + b"5") == "€5"
    assert asm.flush() == ""


def test_incomplete_character_at_end_becomes_replacement_char():
    asm = Utf8Assembler()
    assert asm.feed("é".encode()[:1]) == ""
    assert asm.flush() == "\ufffd"


def test_emoji_split_over_four_tokens():
    asm = Utf8Assembler()
    data = "ok 👍".encode()
    assert "".join(asm.feed(data[i : i + 1]) for i in range(len(data))) == "ok 👍"


def test_stop_string_split_across_pieces_never_leaks():
    out, hit = run(["Hello", " wor", "ld", "!END", "more"], ["world"])
    assert hit
    assert "".join(out) == "Hello "
    assert not any("wor" in piece for piece in out)


def test_prefix_of_stop_is_released_when_it_does_not_complete():
    out, hit = run(["The ca", "t sat"], ["cab"])
    assert not hit
    assert "".join(out) == "The cat sat"


def test_held_prefix_released_at_end_of_stream():
    out, hit = run(["answer: 4", "2 ST"], ["STOP"])
    assert not hit
    assert "".join(out) == "answer: 42 ST"


def test_earliest_of_several_stop_strings_wins():
    out, hit = run(["one two three"], ["three", "two"])
    assert hit
    assert "".join(out) == "one "


def test_no_stops_passes_text_through_immediately():
    f = StopStringFilter([])
    assert f.feed("abc") == ("abc", False)


def test_stop_at_very_start_yields_nothing():
    out, hit = run(["</s>rest"], ["</s>"])
    assert hit
    assert out == []

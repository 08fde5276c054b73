"""UTF-8 assembly and stop-string holdback: what a streaming client sees."""

import random

import pytest
from hyperllama_common import textstream
from hyperllama_common.textstream import StopStringFilter, Utf8Assembler
from hypothesis import given, settings
from hypothesis import strategies as st


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


def test_stop_completing_inside_a_longer_pending_stop_cuts_at_the_completed_one():
    # "bc" completes while "abcd" (begun one character earlier) is still open: the engine stops at this
    # token, so "abcd" can never complete, and its first character is released.
    out, hit = run(["a", "b", "c", "d"], ["abcd", "bc"])
    assert hit and "".join(out) == "a"


def test_both_overlapping_stops_complete_in_one_piece_the_earlier_start_wins():
    out, hit = run(["xabcd"], ["abcd", "bc"])
    assert hit and "".join(out) == "x"


def test_stop_that_is_a_suffix_of_a_pending_prefix_is_found():
    # Failure links: after "aab" the automaton must still see the stop "ab" inside.
    out, hit = run(["a", "a", "b"], ["aac", "ab"])
    assert hit and "".join(out) == "a"


def test_empty_stop_strings_are_ignored():
    f = StopStringFilter(["", ""])
    assert f.stops == []
    assert f.feed("abc") == ("abc", False)
    out, hit = run(["one two"], ["", "two"])
    assert hit and "".join(out) == "one "


def test_feed_after_a_hit_yields_nothing_and_flush_drops_the_rest():
    f = StopStringFilter(["END"])
    assert f.feed("okEND tail") == ("ok", True)
    assert f.stopped
    assert f.feed("more") == ("", True)
    assert f.flush() == ""


def test_the_same_stop_list_builds_its_automaton_once():
    stops = [f"never-{i}" for i in range(50)]
    assert StopStringFilter(stops)._automaton is StopStringFilter(list(stops))._automaton


class NaiveStopFilter:
    """The obvious definition: search the whole unreleased text for every stop string on each feed."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self.pending + text
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            self.pending, self.stopped = "", True
            return buf[: min(found)], True
        hold = max(
            (n for s in self.stops for n in range(1, min(len(s), len(buf) + 1)) if buf.endswith(s[:n])),
            default=0,
        )
        self.pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.stopped else out


def drive(f, pieces: list[str]) -> tuple[list[str], bool]:
    """Every feed's output (kept per feed, so early release is compared too) and the final hit flag."""
    outputs, hit = [], False
    for piece in pieces:
        text, hit = f.feed(piece)
        outputs.append(text)
        if hit:
            break
    outputs.append(f.flush())
    return outputs, hit


# A tiny alphabet makes overlapping stops, shared prefixes and near misses common.
small_text = st.text(alphabet="abc", max_size=40)
small_stops = st.lists(st.text(alphabet="abc", max_size=5), max_size=6)


@st.composite
def split(draw, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 2)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=500)
@given(data=st.data(), stops=small_stops, text=small_text)
def test_automaton_matches_the_naive_filter_on_any_chunking(data, stops, text):
    pieces = data.draw(split(text))
    assert drive(StopStringFilter(stops), pieces) == drive(NaiveStopFilter(stops), pieces)


@settings(max_examples=200)
@given(
    data=st.data(),
    stops=st.lists(st.text(alphabet="aé€👍\n", max_size=4), max_size=4),
    text=st.text(alphabet="aé€👍\n x", max_size=30),
)
def test_automaton_matches_the_naive_filter_on_multibyte_text(data, stops, text):
    pieces = data.draw(split(text))
    assert drive(StopStringFilter(stops), pieces) == drive(NaiveStopFilter(stops), pieces)


class CountingDict(dict):
    lookups = 0

    def get(self, key, default=None):
        CountingDict.lookups += 1
        return super().get(key, default)


def transitions_per_char(stops: list[str], text: str, monkeypatch: pytest.MonkeyPatch) -> float:
    automaton = textstream.StopAutomaton(tuple(stops))
    automaton.link_to(max(automaton.depth))  # linking is the build's cost, not the feed's
    automaton.goto = [CountingDict(d) for d in automaton.goto]
    monkeypatch.setattr(textstream, "compile_stops", lambda _: automaton)
    f = StopStringFilter(stops)
    CountingDict.lookups = 0
    for i in range(0, len(text), 4):  # token-sized pieces
        f.feed(text[i : i + 4])
    assert not f.stopped
    return CountingDict.lookups / len(text)


def test_work_per_character_does_not_grow_with_the_stop_list(monkeypatch):
    rng = random.Random(8)
    alphabet = "abcdefgh ."
    text = "".join(rng.choice(alphabet) for _ in range(4000))
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 12))) for _ in range(10_000)]
    stops = [s for s in stops if s not in text]
    small = transitions_per_char(stops[:10], text, monkeypatch)
    large = transitions_per_char(stops, text, monkeypatch)
    # Each character takes one transition plus the failure links it follows, and those are paid for by
    # earlier characters: at most two lookups per character on average, for 10 stops or 10,000.
    assert small <= 2 and large <= 2


def test_failure_links_are_computed_only_as_deep_as_the_text_reaches():
    stops = ["abcdefgh", "xyz"]
    f = StopStringFilter(stops)
    automaton = f._automaton
    assert f.feed("zzabc") == ("zz", False)
    linked = [d for d, o in zip(automaton.depth, automaton.out, strict=True) if o >= 0]
    assert max(linked) == 3
    assert f.feed("dex") == ("abcde", False)  # "x" ends the first stop's run and opens the other
    assert f.feed("yz") == ("", True)


def test_automaton_has_one_state_per_distinct_prefix():
    stops = tuple("x" * n + "y" for n in range(1, 200))  # shared prefixes share states
    automaton = textstream.StopAutomaton(stops)
    assert len(automaton.goto) == 1 + 199 + 199

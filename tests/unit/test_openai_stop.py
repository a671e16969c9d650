"""prfaas.openai.stop: stop strings over text that arrives in pieces."""

from __future__ import annotations

import pytest

from prfaas.openai.stop import StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> list[str]:
    return [matcher.feed(p) for p in pieces]


def test_text_without_a_possible_match_is_shown_at_once() -> None:
    matcher = StopMatcher(["END"])
    assert feed_all(matcher, ["hello ", "world"]) == ["hello ", "world"]
    assert matcher.matched is None and matcher.flush() == ""


def test_a_stop_string_split_over_pieces_is_held_back_then_cut() -> None:
    matcher = StopMatcher(["END"])
    assert feed_all(matcher, ["abcE", "N", "Dxyz", "more"]) == ["abc", "", "", ""]
    assert matcher.matched == "END"


def test_a_false_start_is_released_when_the_next_piece_rules_it_out() -> None:
    matcher = StopMatcher(["END"])
    assert feed_all(matcher, ["abE", "Nx", "E"]) == ["ab", "ENx", ""]
    assert matcher.flush() == "E"  # generation ended: the held-back tail is output after all


def test_the_earliest_match_wins_among_several_stop_strings() -> None:
    matcher = StopMatcher(["world", "lo w"])
    assert matcher.feed("hello world") == "hel" and matcher.matched == "lo w"


def test_overlapping_prefixes_hold_back_the_longest_possible_start() -> None:
    matcher = StopMatcher(["aab"])
    assert feed_all(matcher, ["xaa", "a", "b"]) == ["x", "a", ""]
    assert matcher.matched == "aab"


def test_no_stop_strings_hold_nothing_back() -> None:
    matcher = StopMatcher([])
    assert feed_all(matcher, ["a", "b"]) == ["a", "b"] and matcher.flush() == ""


def test_empty_stop_strings_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        StopMatcher(["ok", ""])

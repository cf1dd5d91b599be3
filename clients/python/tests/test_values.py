"""Offline checks: JSON <-> google.protobuf.Value, the kind consumer name, backoff."""

from __future__ import annotations

import math

import pytest

from taskwire.values import from_value, to_value
from taskwire.worker import _fmt_seconds, backoff, kind_consumer, valid_kind


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, 7, -3, 2.5, "", "héllo", [], {}, [1, "a", None, [True]], {"a": {"b": [1, 2.25, {"c": None}]}}],
)
def test_json_round_trip(value: object) -> None:
    assert from_value(to_value(value)) == value


def test_integral_doubles_read_back_as_int() -> None:
    assert from_value(to_value(3.0)) == 3 and isinstance(from_value(to_value(3.0)), int)
    assert isinstance(from_value(to_value(2.0**60)), float)


@pytest.mark.parametrize("bad", [math.nan, math.inf, b"bytes", {1: "x"}, object()])
def test_not_json_is_rejected(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        to_value(bad)


def test_kind_consumer_matches_the_documented_table() -> None:
    # docs/protocol.md §3
    assert kind_consumer("a") == "taskwire-kind-a-8601ec8c"
    assert kind_consumer("demo.echo") == "taskwire-kind-demo_echo-defebba9"
    assert kind_consumer("demo_echo") == "taskwire-kind-demo_echo-e2186762"
    assert kind_consumer("text.word_count") == "taskwire-kind-text_word_count-3ecd51ec"


def test_kind_validation() -> None:
    assert valid_kind("py.reverse") and valid_kind("a") and valid_kind("a-b_c.d")
    for bad in ["", "A", ".a", "a..b", "a.", "-a", "a b", "a" * 129]:
        assert not valid_kind(bad), bad


def test_backoff_follows_the_documented_schedule() -> None:
    for _ in range(200):
        assert 0.75 <= backoff(1) < 1.0
        assert 1.5 <= backoff(2) < 2.0
        assert 3.0 <= backoff(3) < 4.0
        assert 225.0 <= backoff(10) < 300.0
        assert 225.0 <= backoff(60) < 300.0
        assert 0.075 <= backoff(1, 0.1, 1.0) < 0.1
        assert 0.75 <= backoff(30, 0.1, 1.0) < 1.0


def test_durations_print_like_rust_debug() -> None:
    assert [_fmt_seconds(x) for x in (0.5, 1.5, 3600, 1, 0.0015, 0.000002, 0)] == [
        "500ms", "1.5s", "3600s", "1s", "1.5ms", "2µs", "0ns",
    ]

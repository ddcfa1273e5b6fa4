"""Human durations on the command line (``--duration 8h``) and in status output."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tether.durations import format_duration, parse_duration
from tether.errors import BadInput


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("8h", timedelta(hours=8)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("14d", timedelta(days=14)),
        ("2w", timedelta(weeks=2)),
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        (" 8H ", timedelta(hours=8)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("0h1m", timedelta(minutes=1)),
    ],
)
def test_parse_duration(text: str, delta: timedelta) -> None:
    assert parse_duration(text) == delta


@pytest.mark.parametrize(
    "text", ["", "   ", "5x", "-1h", "8", "h", "1.5h", "8 hours", "1h-30m", "P1D"]
)
def test_parse_duration_refuses_with_an_example(text: str) -> None:
    with pytest.raises(BadInput, match=r"use a number and a unit s/m/h/d/w, e\.g\. 8h") as info:
        parse_duration(text)

    assert info.value.exit_code == 2


@pytest.mark.parametrize("text", ["0s", "0h0m", "0w"])
def test_parse_duration_refuses_zero(text: str) -> None:
    with pytest.raises(BadInput, match="must be longer than zero"):
        parse_duration(text)


def test_parse_duration_refuses_an_absurdly_long_duration() -> None:
    with pytest.raises(BadInput):
        parse_duration("9999999999999w")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=-30), "0s"),
        (timedelta(seconds=59), "59s"),
        (timedelta(minutes=4, seconds=10), "4m 10s"),
        (timedelta(hours=8), "8h"),
        (timedelta(days=6, hours=23, minutes=59, seconds=59), "6d 23h"),
        (timedelta(weeks=12), "84d"),
        (timedelta(hours=1, minutes=30, seconds=0.9), "1h 30m"),
        (timedelta(days=1, minutes=5), "1d 5m"),
    ],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text


@pytest.mark.parametrize("text", ["8h", "1h30m", "14d", "90s", "4m10s"])
def test_format_then_parse_gives_the_same_duration(text: str) -> None:
    delta = parse_duration(text)

    assert parse_duration(format_duration(delta)) == delta

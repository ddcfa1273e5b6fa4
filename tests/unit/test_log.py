"""Structured log lines: one event per line, whatever the values hold."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tether import log


def test_simple_values_are_written_bare() -> None:
    line = log.format_event(
        "tether.up", relay="relay.example.com:2222", serial="SN-1001", ports=(22, 443), n=3
    )

    assert line == "tether.up relay=relay.example.com:2222 serial=SN-1001 ports=22,443 n=3"


def test_values_with_spaces_or_quotes_are_quoted_and_escaped() -> None:
    line = log.format_event("x", message="reconnecting in 5 s", q='say "hi"', path="C:\\x y", e="")

    assert line == r'x message="reconnecting in 5 s" q="say \"hi\"" path="C:\\x y" e=""'


def test_datetimes_floats_and_none() -> None:
    line = log.format_event(
        "x", at=datetime(2030, 6, 1, 12, 0, 0, 123, tzinfo=UTC), took=0.12345, skipped=None
    )

    assert line == "x at=2030-06-01T12:00:00+00:00 took=0.123"


@pytest.mark.parametrize(
    "hostile",
    ["x\nFAKE event user=root", "x\r\nFAKE event", "x\rFAKE event", 'x" \nFAKE', "x\\\nFAKE"],
)
def test_a_hostile_value_cannot_forge_a_second_line(hostile: str) -> None:
    line = log.format_event("relay.login", user=hostile, peer="10.0.0.1:5555")

    assert "\n" not in line
    assert "\r" not in line
    assert line.startswith('relay.login user="x')
    assert line.endswith(" peer=10.0.0.1:5555")


@pytest.mark.parametrize("hostile", ["x\nFAKE event", 'a"b\\c\nd', "x\\nFAKE", "x\\\\\nFAKE"])
def test_escaping_is_reversible(hostile: str) -> None:
    """A reader can tell `\\n` typed by an attacker from an escaped line break."""
    value = log.format_event("e", v=hostile).removeprefix("e v=")

    assert value.startswith('"')
    assert value.endswith('"')
    unescaped = value[1:-1].encode().decode("unicode_escape")
    assert unescaped == hostile


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger("tether")
    asyncssh_logger = logging.getLogger("asyncssh")
    saved = (root.handlers[:], root.level, root.propagate, asyncssh_logger.level)
    log.setup(logging.INFO, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]
        asyncssh_logger.setLevel(saved[3])


def test_event_writes_exactly_one_line_per_event(captured: io.StringIO) -> None:
    logger = logging.getLogger("tether.test")

    log.event(logger, "relay.login", user="x\nFAKE event")
    log.event(logger, "relay.debug", level=logging.DEBUG, user="not shown")

    lines = captured.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(' INFO tether.test relay.login user="x\\nFAKE event"')
    assert lines[0][:20].endswith("Z")  # UTC timestamp


@pytest.fixture
def captured_json() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger("tether")
    asyncssh_logger = logging.getLogger("asyncssh")
    saved = (root.handlers[:], root.level, root.propagate, asyncssh_logger.level)
    log.setup(logging.INFO, stream=stream, fmt="json")
    try:
        yield stream
    finally:
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]
        asyncssh_logger.setLevel(saved[3])


def test_json_lines_carry_the_same_event_and_fields(captured_json: io.StringIO) -> None:
    logger = logging.getLogger("tether.relay")
    at = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)

    log.event(logger, "tether.up", serial="SN-1", ports=(22, 443), expires=at, skipped=None)
    log.event(logger, "relay.busy", level=logging.WARNING, peer="10.0.0.1:5", ready=False)
    log.event(logger, "x.debug", level=logging.DEBUG, user="not shown")

    lines = [json.loads(line) for line in captured_json.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first.pop("time").endswith("Z")
    assert first == {
        "level": "INFO",
        "logger": "tether.relay",
        "event": "tether.up",
        "serial": "SN-1",
        "ports": [22, 443],
        "expires": "2030-06-01T12:00:00+00:00",
    }
    assert (second["event"], second["peer"], second["ready"]) == ("relay.busy", "10.0.0.1:5", False)


@pytest.mark.parametrize(
    "hostile", ["x\nFAKE", "x\r\n{}", "x\u2028y", 'x"}\n{"event": "forged"', "\x1b[2J"]
)
def test_a_hostile_value_cannot_forge_a_json_line(captured_json: io.StringIO, hostile: str) -> None:
    logger = logging.getLogger("tether.relay")

    log.event(logger, "login.refused", user=hostile, event="spoof", level_="x")

    lines = captured_json.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].isascii()
    record = json.loads(lines[0])
    assert record["user"] == hostile
    assert record["event"] == "login.refused"  # a field never replaces the event's name
    assert record["field_event"] == "spoof"


def test_json_lines_keep_messages_and_tracebacks_of_other_records(
    captured_json: io.StringIO,
) -> None:
    logger = logging.getLogger("tether.vendor")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("policy.crashed; retrying")

    record = json.loads(captured_json.getvalue())
    assert record["message"] == "policy.crashed; retrying"
    assert "ValueError: boom" in record["error"]
    assert record["level"] == "ERROR"

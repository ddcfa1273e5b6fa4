"""Column types: aware UTC timestamps and port lists (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from tether.store.types import PortList, UTCDateTime, format_ports, parse_ports


def test_utc_datetime_stores_naive_utc_and_returns_aware() -> None:
    col = UTCDateTime()
    dialect = sqlite.dialect()
    local = datetime(2026, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=-5)))
    stored = col.process_bind_param(local, dialect)
    assert stored == datetime(2026, 1, 1, 15, 0)
    assert stored is not None
    assert stored.tzinfo is None
    back = col.process_result_value(stored, dialect)
    assert back == local
    assert back is not None
    assert back.tzinfo is UTC
    assert col.process_bind_param(None, dialect) is None
    assert col.process_result_value(None, dialect) is None


def test_utc_datetime_rejects_naive_input() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        UTCDateTime().process_bind_param(datetime(2026, 1, 1), sqlite.dialect())


def test_port_list_round_trip() -> None:
    col = PortList()
    dialect = sqlite.dialect()
    assert col.process_bind_param((22, 80, 443), dialect) == "22,80,443"
    assert col.process_result_value("22,80,443", dialect) == (22, 80, 443)
    assert parse_ports("") == ()
    assert format_ports(()) == ""


@pytest.mark.parametrize("text", ["22,,80", "x", "0", "65536", "22;80"])
def test_parse_ports_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_ports(text)


@pytest.mark.parametrize("ports", [(0,), (70000,), (True,), ("22",)])
def test_format_ports_rejects_garbage(ports: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match="port"):
        format_ports(ports)  # type: ignore[arg-type]

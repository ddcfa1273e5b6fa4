"""`tether vendor audit`: the database's audit chains, their check and machines' heads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import text

from tether.store import Store

from .test_cli import Ran, tether

T = TypeVar("T")
NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


@pytest.fixture
def data(tmp_path: Path, store_url: str) -> Path:
    """A vendor with three issued keys (vendor chain) and a relay chain of three events."""
    path = tmp_path / "vendor"
    made = tether(
        "vendor", "init", "--data-dir", str(path), "--vendor", "ACME", "--relay",
        "127.0.0.1:2222", "--database", store_url,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    for serial in ("S1", "S2", "S3"):
        issued = tether("vendor", "issue-key", "--serial", serial, "--data-dir", str(path))
        assert issued.returncode == 0, issued.stderr

    async def relay_events(store: Store) -> None:
        for serial in ("S1", "S2", "S3"):
            await store.audit.append("relay:r1", "tether.up", now=NOW, serial=serial)

    _with_store(store_url, relay_events)
    (path / "url").write_text(store_url)
    return path


def _with_store(url: str, fn: Callable[[Store], Awaitable[T]]) -> T:
    async def go() -> T:
        async with await Store.open(url) as store:
            return await fn(store)

    return asyncio.run(go())


def _sql(data: Path, statement: str) -> None:
    async def go(store: Store) -> None:
        async with store._db.write("tampering") as session:
            await session.execute(text(statement))

    _with_store((data / "url").read_text(), go)


def audit(data: Path, *args: str) -> Ran:
    return tether("vendor", "audit", "--data-dir", str(data), *args)


def test_intact_chains_verify_and_list_their_entries(data: Path) -> None:
    result = audit(data, "--verify")

    assert result.returncode == 0, result.stderr
    assert "Audit chain relay:r1 intact: 3 entries" in result.stdout
    assert "Audit chain vendor intact: 3 entries" in result.stdout
    assert "key.issued" in result.stdout
    assert "serial=S2" in result.stdout
    assert "TAMPERED" not in result.stdout


@pytest.mark.parametrize(
    ("tampering", "kind", "words"),
    [
        (
            "UPDATE audit_events SET fields = REPLACE(fields, 'S2', 'S9') "
            "WHERE chain = 'vendor' AND seq = 2",
            "changed",
            "entry 2 (key.issued at",
        ),
        (
            "DELETE FROM audit_events WHERE chain = 'vendor' AND seq = 2",
            "missing",
            "entry 2 is missing",
        ),
        (
            "UPDATE audit_events SET id = -id WHERE chain = 'vendor' AND seq = 3",
            "reordered",
            "entry 3 (key.issued at",
        ),
        (
            "DELETE FROM audit_events WHERE chain = 'vendor' AND seq = 3",
            "truncated",
            "entry 3 was removed from the end of the log",
        ),
    ],
    ids=["edited", "removed", "reordered", "newest-removed"],
)
def test_tampering_fails_verify_and_names_the_event(
    data: Path, tampering: str, kind: str, words: str
) -> None:
    _sql(data, tampering)

    shown = audit(data, "--verify")
    as_json = json.loads(audit(data, "--verify", "--json").stdout)
    relay_only = audit(data, "--verify", "--chain", "relay:r1")

    assert shown.returncode == 1
    assert "TAMPERED" in shown.stdout
    assert words in shown.stdout
    assert "Audit chain relay:r1 intact" in shown.stdout
    chains = {c["chain"]: c for c in as_json["chains"]}
    assert chains["relay:r1"]["verified"] is True
    assert chains["vendor"]["verified"] is False
    assert [p["kind"] for p in chains["vendor"]["problems"]] == [kind]
    assert relay_only.returncode == 0


def test_removing_the_newest_anchors_fails_verify_and_names_what_they_anchored(
    data: Path,
) -> None:
    """Security review, defect 22: truncating any chain, the anchors included, is detected."""
    _sql(data, "DELETE FROM audit_events WHERE chain = 'anchors' AND seq = 6")

    shown = audit(data, "--verify")

    assert shown.returncode == 1
    assert "entry 3 of chain relay:r1 (the newest) has no anchor" in shown.stdout
    assert "TAMPERED: entry 3 (the newest) has no anchor in chain anchors" in shown.stdout
    assert "Audit chain vendor intact" in shown.stdout


def test_listing_without_verify_exits_0_even_when_tampered(data: Path) -> None:
    _sql(data, "DELETE FROM audit_events WHERE chain = 'vendor' AND seq = 1")

    assert audit(data).returncode == 0


def test_a_bad_chain_name_is_bad_input(data: Path) -> None:
    result = audit(data, "--chain", "Not A Chain")

    assert result.returncode == 2
    assert "chain name" in result.stderr


def test_last_limits_what_is_shown_not_what_is_verified(data: Path) -> None:
    body = json.loads(audit(data, "--chain", "vendor", "--last", "1", "--json").stdout)

    (chain,) = body["chains"]
    assert chain["entries"] == 3
    assert [row["seq"] for row in chain["rows"]] == [3]


def test_heads_show_and_fail_verify_on_a_mismatch(data: Path) -> None:
    url = (data / "url").read_text()
    empty = audit(data, "--heads", "--verify")

    async def heads(store: Store) -> None:
        await store.audit.put_head(
            serial="S1", machine_key="SHA256:a", seq=4, hash="a" * 64, now=NOW
        )
        await store.audit.put_head(
            serial="S2", machine_key="SHA256:b", seq=9, hash="b" * 64, now=NOW
        )

    _with_store(url, heads)
    fine = audit(data, "--heads", "--verify")

    async def flag(store: Store) -> None:
        await store.audit.flag_head(
            serial="S2", machine_key="SHA256:b", seq=10, hash="c" * 64,
            problem="entry 9 has another hash than reported before", now=NOW,
        )  # fmt: skip

    _with_store(url, flag)
    flagged = audit(data, "--heads", "--verify")
    as_json = json.loads(audit(data, "--heads", "--json").stdout)

    assert empty.returncode == 0
    assert "No machine has reported" in empty.stdout
    assert fine.returncode == 0
    assert "MISMATCH" not in fine.stdout
    assert flagged.returncode == 1
    assert "MISMATCH S2" in flagged.stdout
    assert "entry 9 has another hash" in flagged.stdout
    assert as_json["mismatch"] is True
    assert [(h["serial"], h["mismatches"]) for h in as_json["heads"]] == [("S1", 0), ("S2", 1)]

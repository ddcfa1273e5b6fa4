"""Audit over the tether: the relay's own chain, and a machine's log rewritten on disk.

A real relay and a real agent tunnel in this process (as in test_tether_inprocess.py).
The agent reports its audit log's head; the relay remembers it and, on a newer head,
asks the agent for the entry it remembered. A log rewritten into a chain that verifies
on its own (every hash recomputed) is caught that way and flagged on the vendor side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner

from tests.integration.harness import Agent, EchoServer, Vendor, run_ssh, vendor_setup
from tether.agent.tunnel import TunnelState
from tether.audit import AuditEntry, chain_entry
from tether.audit_log import AuditLog
from tether.cli import main
from tether.store import AuditHead, ChainReport, relay_chain

T = TypeVar("T")
T0 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


async def _until(fn: Callable[[], Awaitable[T | None]], what: str, timeout: float = 10) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await fn()) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def _machine_log(path: Path) -> AuditLog:
    log = AuditLog(path)
    log.append("access.opened", by="cli", mode="tether", key_id="k1")
    log.append("support.login", engineer="alice")
    log.append("password.revealed", by="alice")
    return log


def _rewrite(log: AuditLog, keep: int, change: int | None, extra: int) -> None:
    """Rewrite the file into a valid chain: first ``keep`` entries, entry ``change`` edited."""
    entries = log.entries()[:keep]
    out: list[AuditEntry] = []
    prev: AuditEntry | None = None
    for entry in entries:
        fields = dict(entry.fields)
        if entry.seq == change:
            fields["engineer"] = "nobody"
        prev = chain_entry(prev, entry.event, fields, entry.at)
        out.append(prev)
    for i in range(extra):
        prev = chain_entry(prev, "support.logout", {"n": i}, T0 + timedelta(minutes=i))
        out.append(prev)
    log.path.write_text("".join(e.to_json_line() + "\n" for e in out))
    assert log.verify().ok  # on its own, the rewritten log looks intact


async def _head(vendor: Vendor, serial: str, seq: int) -> AuditHead | None:
    heads = [h for h in await vendor.store.audit.heads() if h.serial == serial]
    return heads[0] if heads and (heads[0].seq == seq or heads[0].mismatches) else None


async def _untethered(vendor: Vendor, serial: str) -> None:
    """Wait for the relay to forget the tether (closing the relay earlier cuts that write)."""

    async def gone() -> bool | None:
        return True if await vendor.store.tethers.get(serial) is None else None

    await _until(gone, f"{serial} to be unregistered")


async def _flagged(vendor: Vendor, serial: str) -> AuditHead | None:
    heads = await vendor.store.audit.heads(mismatched=True)
    return next((h for h in heads if h.serial == serial), None)


@asynccontextmanager
async def _tethered(tmp_path: Path) -> AsyncIterator[tuple[Vendor, AuditLog, AuditHead]]:
    """Machine M-1 tethered with a 3-entry log, once the relay stored that log's head."""
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        vendor.relay.head_interval = 0.05
        key, claims = await vendor.issue("M-1", ports=[service.port])
        log = _machine_log(tmp_path / "audit.log")
        async with Agent(key, claims, [service.port], audit=log, head_check=0.05) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            first = await _until(lambda: _head(vendor, "M-1", 3), "the first head")
            yield vendor, log, first
        await _untethered(vendor, "M-1")


async def test_a_machine_log_that_grows_honestly_is_never_flagged(tmp_path: Path) -> None:
    async with _tethered(tmp_path) as (vendor, log, first):
        log.append("support.logout", engineer="alice")
        log.append("recording.stored", session="s1")
        grown = await _until(lambda: _head(vendor, "M-1", 5), "the grown head")
        flagged = await vendor.store.audit.heads(mismatched=True)

    assert (first.seq, first.hash, first.mismatches) == (3, log.entries()[2].hash, 0)
    assert (grown.seq, grown.hash, grown.mismatches) == (5, log.head()[1], 0)
    assert flagged == []


@pytest.mark.parametrize(
    ("keep", "change", "extra", "words"),
    [
        (3, 2, 2, "entry 3, reported before as the log's last, now has another hash"),
        (3, 2, 0, "entry 3 has another hash than reported before"),
        (2, None, 0, "the log now ends at entry 2, but entry 3 was reported before"),
    ],
    ids=["rehashed-and-grown", "rehashed-same-length", "cut-short"],
)
async def test_a_rewritten_machine_log_is_flagged_on_the_vendor_side(
    tmp_path: Path, keep: int, change: int | None, extra: int, words: str
) -> None:
    async with _tethered(tmp_path) as (vendor, log, _):
        _rewrite(log, keep, change, extra)
        flagged = await _until(lambda: _flagged(vendor, "M-1"), "the mismatch flag")
        chain = relay_chain(vendor.relay.config.relay_id)

        async def written() -> ChainReport | None:
            report = await vendor.store.audit.read(chain)
            return report if any(e.event == "audit.head_mismatch" for e in report.entries) else None

        report = await _until(written, "the mismatch in the relay's chain")
        cli = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["vendor", "audit", "--heads", "--verify", "--data-dir", str(vendor.dir)],
        )

    assert flagged.mismatches == 1
    assert flagged.mismatch is not None
    assert words in flagged.mismatch
    assert (flagged.seq, flagged.hash) == log.head()  # checked from here on
    (event,) = [e for e in report.entries if e.event == "audit.head_mismatch"]
    assert event.fields["serial"] == "M-1"
    assert event.fields["seq"] == 3
    assert report.verification.ok
    assert cli.exit_code == 1
    assert "MISMATCH M-1" in cli.stdout


async def test_the_relay_audits_tethers_keys_and_channels(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        port = service.port
        key, claims = await vendor.issue("M-1", ports=[port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            result = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-W", f"M-1:{service.port}", "alice@127.0.0.1"),
                input=b"ping\n",
            )
            assert result.returncode == 0, result.stderr
        await _untethered(vendor, "M-1")
        chain = relay_chain(vendor.relay.config.relay_id)

        async def closed() -> list[AuditEntry] | None:
            entries = (await vendor.store.audit.read(chain)).entries
            return list(entries) if any(e.event == "tether.down" for e in entries) else None

        entries = await _until(closed, "the relay's audit events")

    events = [e.event for e in entries]
    assert events == ["key.used", "tether.up", "channel.opened", "channel.closed", "tether.down"]
    by_name = {e.event: dict(e.fields) for e in entries}
    assert by_name["key.used"]["key_id"] == claims.key_id
    assert by_name["tether.up"]["serial"] == "M-1"
    assert by_name["channel.opened"] == {"engineer": "alice", "serial": "M-1", "port": port}
    closed_fields = by_name["channel.closed"]
    assert closed_fields["bytes_to_machine"] == len(b"ping\n")
    assert closed_fields["bytes_to_engineer"] == len(b"hello from the machine\nping\n")
    assert closed_fields["engineer"] == "alice"
    assert isinstance(closed_fields["duration"], float)

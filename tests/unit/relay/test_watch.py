"""The relay's revocation watch without LISTEN/NOTIFY: SQLite still polls."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.integration.harness import vendor_setup


async def test_sqlite_relay_still_polls_revocations_every_poll_interval(tmp_path: Path) -> None:
    # The LISTEN pace is 30 s: a revocation seen within seconds was polled at poll_interval.
    async with vendor_setup(tmp_path, poll=0.05, listen_poll=30.0) as vendor:
        assert vendor.relay.changes is None, "SQLite has no notifications to listen for"
        assert vendor.store.change_feed() is None
        _, claims = await vendor.issue("M-1", ports=[22])
        await vendor.authority.revoke_key(claims.key_id, reason="leaked")
        deadline = time.monotonic() + 5.0
        while claims.key_id not in vendor.relay.revoked_keys:
            assert time.monotonic() < deadline, "the relay never polled the revocation"
            await asyncio.sleep(0.02)

"""Probe a relay the way the tunnel would reach it: reachable, pinned key, clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tether.agent.tunnel import PinnedClient, cannot_reach, connect_as_agent
from tether.sshlib import asyncssh
from tether.wire import RELAY_TIME_BANNER


class _BannerClient(PinnedClient):
    def __init__(self, fingerprint: str) -> None:
        super().__init__(fingerprint)
        self.relay_time: datetime | None = None

    def auth_banner_received(self, msg: str, lang: str) -> None:
        if msg.startswith(RELAY_TIME_BANNER):
            try:
                self.relay_time = datetime.fromisoformat(msg[len(RELAY_TIME_BANNER) :].strip())
            except ValueError:
                self.relay_time = None


@dataclass(frozen=True)
class RelayProbe:
    """What one test connection to the relay showed."""

    reachable: bool
    host_key_ok: bool
    relay_time: datetime | None
    error: str | None = None
    seen_host_key: str | None = None


async def probe_relay(
    relay: str, fingerprint: str, machine_key: asyncssh.SSHKey, *, within: float = 10.0
) -> RelayProbe:
    """Connect as an agent (no key registered), check the host key pin, read the relay's clock."""
    client = _BannerClient(fingerprint)
    try:
        conn = await connect_as_agent(relay, client, machine_key, within=within)
    except asyncssh.HostKeyNotVerifiable:
        return RelayProbe(
            True, False, None, "the relay's host key is not the one the key pins", client.mismatch
        )
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        return RelayProbe(False, False, None, cannot_reach(relay, exc))
    conn.close()
    await conn.wait_closed()
    return RelayProbe(True, True, client.relay_time)

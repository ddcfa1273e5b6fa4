"""Probe a relay the way the tunnel would reach it: reachable, pinned key, clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import asyncssh

from tether.agent.tunnel import PinnedClient
from tether.keys import parse_address
from tether.wire import AGENT_USERNAME, RELAY_TIME_BANNER


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
    host, port = parse_address(relay)
    client = _BannerClient(fingerprint)
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                host,
                port,
                username=AGENT_USERNAME,
                client_keys=[machine_key],
                client_factory=lambda: client,
                known_hosts=([], [], []),
                config=None,
                agent_path=None,
                preferred_auth=["publickey"],
            ),
            within,
        )
    except asyncssh.HostKeyNotVerifiable:
        return RelayProbe(
            True, False, None, "the relay's host key is not the one the key pins", client.mismatch
        )
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        return RelayProbe(False, False, None, str(exc) or type(exc).__name__)
    conn.close()
    await conn.wait_closed()
    return RelayProbe(True, True, client.relay_time)

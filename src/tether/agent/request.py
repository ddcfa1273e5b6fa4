"""One-click support: ask the vendor for a key over the relay's SSH port.

The machine logs in to the relay named in its configuration with its machine key
(the relay's host key pinned by ``request_relay_host_key``), sends its serial and the
customer's problem description, and waits — showing progress through ``on_update`` —
until the vendor issues a key, denies the request, or the customer cancels (the
caller cancels the coroutine; the relay is told, and closes the case).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from tether.agent.reach import NoWayToRelay, PinnedClient, connect_any
from tether.agent.tunnel import ControlClient
from tether.config import AgentConfig
from tether.errors import ConfigError, NotReady, Refused
from tether.protocol import Cancel, CaseUpdate, Request, encode
from tether.protocol import Refused as RefusedMessage
from tether.sshlib import asyncssh
from tether.wire import CONTROL_SUBSYSTEM, PROTOCOL_VERSION


async def request_key(
    config: AgentConfig,
    machine_key: asyncssh.SSHKey,
    description: str,
    *,
    on_update: Callable[[CaseUpdate], None] = lambda update: None,
    limits: tuple[str, ...] = (),
) -> str:
    """Open a support case with the vendor and return the tether key it issues.

    ``limits`` (the grant's limits in words) are shown to the vendor with the case.
    """
    if config.request_relay is None or config.request_relay_host_key is None:
        raise NotReady(
            f"{config.path} names no request_relay: copy the vendor's agent-trust.toml into it, "
            "or ask the vendor for a key and use --key"
        )
    client = PinnedClient(config.request_relay_host_key)
    try:
        # Keepalives on: a held request may wait long for a human; notice a dead relay.
        conn, _, _ = await connect_any(config.request_relay, client, machine_key, config.tether)
    except asyncssh.HostKeyNotVerifiable:
        raise Refused(
            f"the relay at {config.request_relay} presented host key {client.mismatch}, not the "
            "one configured; refusing to send anything to it"
        ) from None
    except (NoWayToRelay, ConfigError) as exc:
        raise NotReady(str(exc)) from None
    async with conn:
        chan, session = await conn.create_session(
            ControlClient, subsystem=CONTROL_SUBSYSTEM, encoding=None
        )
        control = cast(ControlClient, session)
        chan.write(encode(Request(config.serial, description, PROTOCOL_VERSION, limits)))
        case_id: int | None = None
        try:
            while True:
                message = await control.messages.get()
                if message is None:
                    raise NotReady("the relay closed the connection before the vendor answered")
                if isinstance(message, RefusedMessage):
                    raise Refused(f"the vendor's relay refused the request: {message.message}")
                if not isinstance(message, CaseUpdate):
                    continue
                case_id = message.case_id
                on_update(message)
                if message.status == "issued" and message.key:
                    return message.key
                if message.status != "pending":
                    raise Refused(f"support case {message.case_id}: {message.message}")
        except asyncio.CancelledError:
            if case_id is not None:
                chan.write(encode(Cancel(case_id)))
                await asyncio.sleep(0.2)  # let the cancel reach the relay before we hang up
            raise
    raise NotReady("the relay closed the connection before the vendor answered")

"""One relay port: raw SSH, SSH inside TLS and SSH over a WebSocket (issue 16).

The engineer side is stock OpenSSH; the TLS around it is stock ``openssl s_client``
(as a ``ProxyCommand``), so the relay's TLS is checked against a client we did not write.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import FAST, Agent, EchoServer, run_ssh, vendor_setup
from tether.agent.network import (
    Carrier,
    NetworkSettings,
    ReadyProtocol,
    TransportKind,
    stack_layer,
)
from tether.agent.reach import NoWayToRelay, PinnedClient, connect_any
from tether.agent.tunnel import TunnelState
from tether.carriers import TlsCodec, WebSocketCodec
from tether.config import TetherSettings
from tether.sshlib import asyncssh
from tether.tlscert import write_self_signed

OPENSSL = shutil.which("openssl")


def _tls_files(tmp: Path) -> dict[str, Path]:
    cert, key = tmp / "relay-tls.crt", tmp / "relay-tls.key"
    write_self_signed("127.0.0.1", cert, key)
    return {"tls_certificate": cert, "tls_key": key}


@pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
async def test_one_port_takes_raw_ssh_and_ssh_inside_tls(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path, **_tls_files(tmp_path)) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            target = ("-W", f"m-1:{service.port}", "alice@127.0.0.1")
            raw = await run_ssh(alice.ssh_args(vendor.relay_port, *target), input=b"raw\n")
            assert raw.stdout == b"hello from the machine\nraw\n", raw.stderr
            wrap = f"{OPENSSL} s_client -quiet -connect 127.0.0.1:{vendor.relay_port}"
            tls = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-o", f"ProxyCommand={wrap}", *target),
                input=b"tls\n",
            )
            assert tls.stdout == b"hello from the machine\ntls\n", tls.stderr


async def test_a_stream_that_is_neither_ssh_tls_nor_http_is_dropped(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path, **_tls_files(tmp_path)) as vendor:
        reader, writer = await asyncio.open_connection("127.0.0.1", vendor.relay_port)
        writer.write(b"HELO relay\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        vendor.relay.refusals.interval = 0.0
        assert any("unknown-protocol" in counts for _, counts in vendor.relay.refusals.due())


async def test_a_plain_http_request_gets_no_ssh(tmp_path: Path) -> None:
    """A browser (or a scanner) opening the port gets an HTTP refusal, not the relay's SSH."""
    async with vendor_setup(tmp_path, **_tls_files(tmp_path)) as vendor:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", vendor.relay_port, ssl=context)
        writer.write(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert b"SSH-" not in answer
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4")


def _over(*kinds: TransportKind, **network: object) -> TetherSettings:
    return replace(FAST, network=NetworkSettings(transports=kinds, environ={}, **network))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [TransportKind.TLS, TransportKind.WEBSOCKET_TLS])
async def test_agent_tether_over_tls_carries_an_engineer(
    tmp_path: Path, kind: TransportKind
) -> None:
    async with vendor_setup(tmp_path, **_tls_files(tmp_path)) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port], settings=_over(kind)) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            assert agent.tunnel.status.transport == kind.value
            assert f"over {kind.value} since" in agent.tunnel.status.describe(
                agent.tunnel.status.since
            )
            result = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-W", f"m-1:{service.port}", "alice@127.0.0.1"),
                input=b"ping\n",
            )
        assert result.stdout == b"hello from the machine\nping\n", result.stderr


async def test_agent_falls_back_to_the_next_transport_and_says_which_carries_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay without TLS: the agent's first choice (tls) fails, ssh carries the tether."""
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        settings = _over(TransportKind.TLS, TransportKind.SSH)
        with caplog.at_level(logging.INFO, logger="tether.agent.tunnel"):
            async with Agent(key, claims, [service.port], settings=settings) as agent:
                await agent.wait_for(TunnelState.CONNECTED)
                assert agent.tunnel.status.transport == "ssh"
                agent.tunnel.reset()  # reconnects over what worked, without trying tls again
                await agent.wait_for(TunnelState.RECONNECTING)
                await agent.wait_for(TunnelState.CONNECTED)
                assert agent.tunnel.status.transport == "ssh"
        lines = [r.getMessage() for r in caplog.records]
        assert sum("tether.transport_failed" in line and "tls:" in line for line in lines) == 1, (
            lines
        )


async def test_ways_over_a_connection_that_cannot_be_made_are_not_each_tried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay's port refuses (or drops) connections: once one way could not even make
    its TCP connection, the others over that same connection are not tried this round
    (a dropped port would cost each its own timeout); the error says why once."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    tried: list[str] = []
    dial = Carrier.create_connection

    async def counted(self: Carrier, *args: Any) -> Any:
        tried.append(self.kind.value)
        return await dial(self, *args)

    monkeypatch.setattr(Carrier, "create_connection", counted)
    settings = _over(TransportKind.TLS, TransportKind.WEBSOCKET_TLS)
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(NoWayToRelay) as caught:
        await connect_any(f"127.0.0.1:{port}", PinnedClient("SHA256:none"), key, settings)
    assert str(caught.value) == f"cannot reach the relay at 127.0.0.1:{port} (connection refused)"
    assert tried == ["tls"]


async def test_websocket_proxy_transport_needs_a_proxy(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path, **_tls_files(tmp_path)) as vendor:
        key, claims = await vendor.issue("M-1", ports=[22])
        settings = _over(TransportKind.WEBSOCKET_PROXY)
        async with Agent(key, claims, [22], settings=settings) as agent:
            await agent.wait_for(TunnelState.RECONNECTING)
            assert "none is set" in (agent.tunnel.status.reason or "")


async def test_ssh_over_a_websocket_inside_tls_reaches_the_relays_ssh(tmp_path: Path) -> None:
    """The third carrier: TLS, then a WebSocket upgrade inside it, then SSH."""
    async with vendor_setup(tmp_path, **_tls_files(tmp_path)) as vendor:
        loop = asyncio.get_running_loop()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw, _ = await loop.create_connection(ReadyProtocol, "127.0.0.1", vendor.relay_port)
        tls = await stack_layer(raw, TlsCodec(context, server_side=False), b"")
        ws = await stack_layer(tls, WebSocketCodec(host=f"127.0.0.1:{vendor.relay_port}"), b"")
        banner = ws.get_protocol()
        assert isinstance(banner, ReadyProtocol)
        ws.write(b"SSH-2.0-carrier_test\r\n")
        for _ in range(200):
            if b"\r\n" in banner.buffer:
                break
            await asyncio.sleep(0.01)
        ws.close()
        assert banner.buffer.startswith(b"SSH-2.0-"), banner.buffer

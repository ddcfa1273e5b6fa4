"""The relay's PROXY v2 reading: what HAProxy sends is understood, anything else refused."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from proxyprotocol.result import ProxyResultIPv4, ProxyResultIPv6, ProxyResultLocal
from proxyprotocol.v2 import ProxyProtocolV2

from tether.relay.proxy_protocol import (
    MAX_HEADER,
    SIGNATURE,
    ProxyHeaderError,
    is_trusted,
    parse_header,
    parse_networks,
)

SSH_START = b"SSH-2.0-OpenSSH_9.2\r\n"


def v4_header() -> bytes:
    result = ProxyResultIPv4(
        (IPv4Address("203.0.113.7"), 50123),
        (IPv4Address("192.0.2.1"), 2222),
        protocol=socket.SOCK_STREAM,
    )
    return ProxyProtocolV2().pack(result)


def raw(byte12: int, byte13: int, body: bytes) -> bytes:
    return SIGNATURE + struct.pack("!BBH", byte12, byte13, len(body)) + body


def test_ipv4_header_names_the_real_client_and_leaves_the_ssh_stream() -> None:
    data = v4_header() + SSH_START
    header = parse_header(data)
    assert header is not None
    assert header.source == ("203.0.113.7", 50123)
    assert data[header.length :] == SSH_START


def test_ipv6_header_names_the_real_client() -> None:
    result = ProxyResultIPv6(
        (IPv6Address("2001:db8::7"), 40000),
        (IPv6Address("2001:db8::1"), 22),
        protocol=socket.SOCK_STREAM,
    )
    header = parse_header(ProxyProtocolV2().pack(result))
    assert header is not None
    assert header.source == ("2001:db8::7", 40000)


def test_local_command_of_a_health_check_has_no_client_address() -> None:
    data = ProxyProtocolV2().pack(ProxyResultLocal())
    header = parse_header(data)
    assert header is not None
    assert header.source is None
    assert header.length == len(data)


def test_a_header_as_haproxy_writes_it_by_hand() -> None:
    body = bytes([10, 0, 0, 9, 10, 0, 0, 1]) + struct.pack("!HH", 1234, 2222)
    header = parse_header(raw(0x21, 0x11, body) + SSH_START)
    assert header is not None
    assert header.source == ("10.0.0.9", 1234)


@pytest.mark.parametrize("cut", [1, 8, 12, 15, 16, 20, 27])
def test_truncated_header_waits_for_more(cut: int) -> None:
    assert parse_header(v4_header()[:cut]) is None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (SSH_START, "no PROXY v2 signature"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 50123 2222\r\n", "v1"),
        (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4), "no PROXY v2 signature"),
        (raw(0x11, 0x11, bytes(12)), "version 1"),
        (raw(0x31, 0x11, bytes(12)), "version 3"),
        (raw(0x22, 0x11, bytes(12)), "command"),
        (raw(0x21, 0x12, bytes(12)), "TCP over IPv4/IPv6"),  # UDP
        (raw(0x21, 0x31, bytes(216)), "TCP over IPv4/IPv6"),  # AF_UNIX
        (raw(0x21, 0x01, b""), "TCP over IPv4/IPv6"),  # UNSPEC with PROXY
        (raw(0x21, 0x11, bytes(8)), "shorter"),
        (raw(0x21, 0x21, bytes(12)), "shorter"),  # IPv6 needs 36
        (raw(0x21, 0x11, bytes(MAX_HEADER)), "at most"),
        (raw(0x21, 0x11, bytes(12) + b"\x04\x00\x09xx"), "malformed"),  # TLV overruns
    ],
)
def test_malformed_header_is_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse_header(data)


def test_trust_is_by_network_and_covers_ipv4_mapped_addresses() -> None:
    nets = parse_networks(["127.0.0.1/32", "10.1.0.0/16", "2001:db8::/32"])
    assert is_trusted("127.0.0.1", nets)
    assert is_trusted("10.1.200.3", nets)
    assert is_trusted("::ffff:10.1.0.5", nets)
    assert is_trusted("2001:db8::9", nets)
    assert not is_trusted("127.0.0.2", nets)
    assert not is_trusted("10.2.0.1", nets)
    assert not is_trusted("not-an-address", nets)
    assert not is_trusted("127.0.0.1", ())

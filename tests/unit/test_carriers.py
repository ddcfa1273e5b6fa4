"""The sans-IO layers under the tether's SSH: first-byte sniffing, TLS, WebSocket."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tether.carriers import Kind, LayerError, TlsCodec, WebSocketCodec, classify
from tether.tlscert import issuer_of, write_self_signed


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", Kind.SSH),
        (b"\x16\x03\x01\x02\x00", Kind.TLS),
        (b"GET /tether HTTP/1.1\r\n", Kind.HTTP),
        (b"SS", None),  # not yet decided: read more
        (b"", None),
        (b"PROXY TCP4 1.2.3.4", ""),
        (b"POST / HTTP/1.1", ""),
        (b"\r\n\r\n\x00\r\nQUIT\n", ""),
    ],
)
def test_first_bytes_say_what_the_stream_carries(head: bytes, kind: str | None) -> None:
    assert classify(head) == kind


def _pump(client: TlsCodec, server: TlsCodec) -> None:
    data = client.start()
    for _ in range(10):
        to_client, _ = server.receive(data)
        data, _ = client.receive(to_client) if to_client else (b"", b"")
        if client.ready and server.ready and not data:
            return
    raise AssertionError("handshake did not finish")


def _contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    write_self_signed("relay.example", cert, key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return client, server


def test_tls_codecs_carry_bytes_both_ways_and_show_the_issuer(tmp_path: Path) -> None:
    client_ctx, server_ctx = _contexts(tmp_path)
    client = TlsCodec(client_ctx, server_side=False, server_hostname="relay.example")
    server = TlsCodec(server_ctx, server_side=True)
    _pump(client, server)
    big = b"SSH-2.0-x\r\n" + bytes(range(256)) * 4096  # larger than one TLS record
    _, plain = server.receive(client.send(big))
    assert plain == big
    _, back = client.receive(server.send(b"pong"))
    assert back == b"pong"
    assert issuer_of(client.extra()["tls_peer_certificate"]) == "CN=relay.example"


def test_garbage_instead_of_a_tls_handshake_is_a_layer_error(tmp_path: Path) -> None:
    _, server_ctx = _contexts(tmp_path)
    server = TlsCodec(server_ctx, server_side=True)
    with pytest.raises(LayerError, match="TLS handshake failed"):
        server.receive(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)


def test_websocket_codecs_carry_binary_both_ways() -> None:
    client = WebSocketCodec(host="relay:443")
    server = WebSocketCodec()
    accept, _ = server.receive(client.start())
    assert server.ready
    _, nothing = client.receive(accept)
    assert client.ready
    assert nothing == b""
    _, got = server.receive(client.send(b"SSH-2.0-x\r\n" * 1000))
    assert got == b"SSH-2.0-x\r\n" * 1000
    _, back = client.receive(server.send(b"reply"))
    assert back == b"reply"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n",  # no upgrade: a browser or a scanner
        b"GET /other HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ],
    ids=["no-upgrade", "wrong-path"],
)
def test_the_relay_takes_only_a_websocket_upgrade_for_its_path(request_bytes: bytes) -> None:
    with pytest.raises(LayerError):
        WebSocketCodec().receive(request_bytes)


def test_a_refused_upgrade_keeps_the_status_for_the_words() -> None:
    client = WebSocketCodec(host="relay:443", target="http://relay:443/tether")
    client.start()
    with pytest.raises(LayerError, match="HTTP 407"):
        client.receive(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
    assert client.status == 407


def _upgraded() -> tuple[WebSocketCodec, WebSocketCodec]:
    client = WebSocketCodec(host="relay:443")
    server = WebSocketCodec()
    accept, _ = server.receive(client.start())
    client.receive(accept)
    assert client.ready
    assert server.ready
    return client, server


def _frame(wire: bytes) -> tuple[int, bytes | None, bytes]:
    """One frame's ``(opcode, masking key or None, payload as sent)``, by RFC 6455 5.2."""
    opcode, masked, length = wire[0] & 0x0F, bool(wire[1] & 0x80), wire[1] & 0x7F
    at = 2
    if length == 126:
        length, at = int.from_bytes(wire[2:4], "big"), 4
    elif length == 127:
        length, at = int.from_bytes(wire[2:10], "big"), 10
    key = wire[at : at + 4] if masked else None
    at += 4 if masked else 0
    assert len(wire) == at + length, "one frame per send"
    return opcode, key, wire[at:]


def test_the_agent_masks_each_frame_with_a_fresh_key_and_the_relay_unmasks_it() -> None:
    client, server = _upgraded()
    data = b"SSH-2.0-x\r\n" + bytes(range(256)) * 200  # one frame (at most 64 KiB)
    wires = [client.send(data) for _ in range(8)]
    keys = set()
    for wire in wires:
        opcode, key, payload = _frame(wire)
        assert opcode == 0x2  # binary
        assert key is not None, "a client frame must be masked (RFC 6455 5.3)"
        assert payload != data
        keys.add(key)
        _, got = server.receive(wire)
        assert got == data
    assert len(keys) == len(wires), "every frame has a key of its own"
    # The relay's frames go unmasked, and round-trip too.
    wire = server.send(data)
    assert _frame(wire)[1] is None
    assert client.receive(wire) == (b"", data)


def test_masking_round_trips_across_split_reads_and_large_writes() -> None:
    client, server = _upgraded()
    big = bytes(range(251)) * 20_000  # ~5 MB: several frames of at most 64 KiB
    wire = client.send(big)
    got = b"".join(server.receive(wire[at : at + 7_777])[1] for at in range(0, len(wire), 7_777))
    assert got == big


@pytest.mark.parametrize("client_side", [False, True], ids=["relay", "agent"])
def test_a_frame_masked_the_wrong_way_is_refused(client_side: bool) -> None:
    client, server = _upgraded()
    unmasked, masked = server.send(b"hello"), client.send(b"hello")
    receiver, wrong = (client, masked) if client_side else (server, unmasked)
    with pytest.raises(LayerError, match="incorrect masking"):
        receiver.receive(wrong)


def _masked(first: int, payload: bytes, key: bytes = b"abcd") -> bytes:
    """A client frame: first byte ``first`` (FIN, opcode), masked ``payload``."""
    length = len(payload)
    if length < 126:
        head = bytes((first, 0x80 | length))
    elif length < 1 << 16:
        head = bytes((first, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + length.to_bytes(8, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_a_large_frame_is_passed_on_as_it_arrives_never_held_whole() -> None:
    """A client that has not logged in cannot make the relay hold a large frame: what
    arrives of it goes on at once, whatever length the header announces."""
    _, server = _upgraded()
    header = b"\x82\xff" + (1024 * 1024 * 1024).to_bytes(8, "big") + b"abcd"
    _, inner = server.receive(header + bytes(1022))
    assert inner == (b"abcd" * 256)[:1022]  # zeros, unmasked: the key itself
    _, inner = server.receive(bytes(3))  # the rest follows, the mask's phase kept
    assert inner == b"cda"


def test_frames_split_into_single_bytes_still_round_trip() -> None:
    client, server = _upgraded()
    data = bytes(range(256)) * 300  # a 16-bit length header
    wire = client.send(data) + client.send(b"x" * 70_000) + client.send(b"")
    got = b"".join(server.receive(wire[at : at + 1])[1] for at in range(len(wire)))
    assert got == data + b"x" * 70_000


def test_a_message_in_several_frames_is_passed_on_in_order() -> None:
    _, server = _upgraded()
    wire = _masked(0x02, b"SSH-") + _masked(0x00, b"2.0-") + _masked(0x80, b"agent\r\n")
    assert server.receive(wire) == (b"", b"SSH-2.0-agent\r\n")


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (_masked(0x81, b"text"), "text on the tether"),
        (_masked(0xC2, b"deflated?"), "reserved bits"),
        (_masked(0x83, b"?"), "unknown opcode"),
        (_masked(0x80, b"stray"), "unexpected continuation"),
        (_masked(0x02, b"a") + _masked(0x82, b"b"), "unexpected continuation"),
        (_masked(0x09, b"ping"), "control frame"),
        (_masked(0x89, b"p" * 126), "control frame"),
        (_masked(0x88, b"\x03"), "one-byte payload"),
        (b"\x82\xff" + (1 << 63).to_bytes(8, "big") + b"abcd", "length out of range"),
    ],
    ids=[
        "text",
        "reserved-bits",
        "unknown-opcode",
        "stray-continuation",
        "binary-inside-a-message",
        "fragmented-ping",
        "long-ping",
        "short-close",
        "length-msb",
    ],
)
def test_frames_outside_the_protocol_are_refused(wire: bytes, words: str) -> None:
    _, server = _upgraded()
    with pytest.raises(LayerError, match=words):
        server.receive(wire)


def test_frames_in_the_same_read_as_the_upgrade_are_not_lost() -> None:
    """The relay's SSH banner may arrive in the same read as its ``101``."""
    client = WebSocketCodec(host="relay:443")
    server = WebSocketCodec()
    accept, _ = server.receive(client.start())
    both = accept + server.send(b"SSH-2.0-relay\r\n")
    cut = both.index(b"\r\n\r\n") + 2  # the blank line split across two reads
    assert client.receive(both[:cut]) == (b"", b"")
    assert not client.ready
    assert client.receive(both[cut:]) == (b"", b"SSH-2.0-relay\r\n")
    assert client.ready


def test_a_close_from_the_agent_is_answered_and_ends_the_stream() -> None:
    client, server = _upgraded()
    answer, _ = server.receive(client.closing())
    assert server.closed
    assert _frame(answer)[0] == 0x8  # close
    client.receive(answer)
    assert client.closed
    assert client.send(b"late") == b""


def test_a_ping_from_the_relay_is_answered_with_a_masked_pong() -> None:
    client, _ = _upgraded()
    pong, inner = client.receive(b"\x89\x04ping")  # FIN + ping, unmasked, 4 bytes
    assert inner == b""
    opcode, key, payload = _frame(pong)
    assert opcode == 0xA
    assert key is not None
    assert bytes(b ^ key[i % 4] for i, b in enumerate(payload)) == b"ping"


def test_the_relay_keeps_a_frame_sent_in_the_same_read_as_the_upgrade_request() -> None:
    client = WebSocketCodec(host="relay:443")
    server = WebSocketCodec()
    request = client.start()
    accept, _ = WebSocketCodec().receive(request)  # a twin relay: the client's 101
    client.receive(accept)
    accept, inner = server.receive(request + client.send(b"SSH-2.0-agent\r\n"))
    assert accept.startswith(b"HTTP/1.1 101 ")
    assert inner == b"SSH-2.0-agent\r\n"

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

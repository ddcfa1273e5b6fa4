"""Peering's pure parts: the engineer identity a relay passes on, and where a channel goes."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.unit.test_config import relay_toml, write
from tether.certs import check_engineer_name
from tether.config import RelayConfig
from tether.errors import BadInput, ConfigError
from tether.relay.peering import BadPeerOrigin, PeerLinks, PeerOrigin
from tether.relay.routing import NotTetheredHere, PeerRoute, Registry, route_to_peer
from tether.relay.server import Relay
from tether.sshlib import asyncssh
from tether.store.records import RelayRecord, TetherRecord
from tether.wire import PEER_USERNAME

T0 = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
GOOD = {"v": 1, "engineer": "alice", "key_id": "alice", "via": "relay-2", "expires": 1_900_000_000}


def test_origin_round_trips() -> None:
    origin = PeerOrigin("alice", "alice", "relay-2", 1_900_000_000)
    assert PeerOrigin.decode(origin.encode()) == origin
    assert json.loads(origin.encode()) == GOOD


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"extra": 1}, "unexpected fields"),
        ({"v": 2}, "version 2"),
        ({"v": True}, "version True"),
        ({"engineer": "Alice Smith"}, "invalid engineer name"),
        ({"engineer": "root"}, "reserved"),
        ({"engineer": PEER_USERNAME}, "reserved"),
        ({"engineer": 7}, "not a string"),
        ({"key_id": ""}, "key id malformed"),
        ({"key_id": "a b"}, "key id malformed"),
        ({"via": "relay\n2"}, "relay id malformed"),
        ({"via": None}, "relay id malformed"),
        ({"expires": True}, "certificate end malformed"),
        ({"expires": "1900000000"}, "certificate end malformed"),
        ({"expires": 0}, "certificate end malformed"),
    ],
)
def test_origin_is_checked_strictly(change: dict[str, Any], words: str) -> None:
    with pytest.raises(BadPeerOrigin, match=words):
        PeerOrigin.decode(json.dumps({**GOOD, **change}))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "unexpected fields"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "via"}), "unexpected fields"),
        (json.dumps({**GOOD, "key_id": "k" * 2000}), "too long"),
    ],
)
def test_malformed_origins_are_refused(text: str, words: str) -> None:
    with pytest.raises(BadPeerOrigin, match=words):
        PeerOrigin.decode(text)


def test_the_peer_user_name_can_never_be_an_engineer() -> None:
    with pytest.raises(BadInput, match="reserved"):
        check_engineer_name(PEER_USERNAME)


def holder(relay_id: str = "relay-1") -> TetherRecord:
    return TetherRecord("SN-1", "k1", relay_id, "balancer.example:22", "SHA256:m", T0, T0)


def member(
    relay_id: str = "relay-1", address: str = "10.0.0.1:2223", silent: float = 1.0
) -> RelayRecord:
    return RelayRecord(relay_id, address, T0, T0 - timedelta(seconds=silent))


def miss(host: str = "sn-1") -> NotTetheredHere:
    with pytest.raises(NotTetheredHere) as info:
        Registry[str]().route(host, 22)
    return info.value


def route(row: TetherRecord | None, relays: list[RelayRecord]) -> PeerRoute:
    return route_to_peer(
        miss(), row, relays, own_relay_id="relay-2", port=443, now=T0, dead_after=15.0
    )


def test_a_machine_held_by_a_live_relay_routes_to_its_member_address() -> None:
    # The member address (peer_listen / listen), not the tether row's advertised one.
    assert route(holder(), [member("relay-3", "10.0.0.3:2223"), member()]) == PeerRoute(
        "relay-1", ("10.0.0.1", 2223), "SN-1", 443
    )


@pytest.mark.parametrize(
    ("row", "relays"),
    [
        (None, [member()]),
        (holder(relay_id="relay-2"), [member("relay-2")]),
        (holder(), []),
        (holder(), [member(silent=16.0)]),
        (holder(), [member(address="nonsense")]),
        (holder(), [member(address="0.0.0.0:2222")]),
        (holder(), [member(address="[::]:2222")]),
    ],
    ids=[
        "no-row",
        "own-stale-row",
        "relay-gone",
        "relay-silent",
        "bad-address",
        "any-v4",
        "any-v6",
    ],
)
def test_no_usable_holder_refuses_with_the_single_relay_message(
    row: TetherRecord | None, relays: list[RelayRecord]
) -> None:
    with pytest.raises(NotTetheredHere) as info:
        route(row, relays)
    assert str(info.value) == (
        "machine sn-1 is not tethered to this relay (is support access enabled on it?)"
    )


def test_peer_key_setting_is_a_path_beside_relay_toml(tmp_path: Path) -> None:
    assert RelayConfig.load(write(tmp_path, relay_toml())).peer_key is None
    config = RelayConfig.load(write(tmp_path, relay_toml('peer_key = "peer_key"\n')))
    assert config.peer_key == (tmp_path / "etc" / "peer_key").resolve()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('peer_listen = "10.0.0.1:2223"\n', "peer_listen needs peer_key"),
        (
            'peer_key = "k"\nproxy_protocol = true\ntrusted_proxies = ["10.0.0.9"]\n',
            "needs peer_listen",
        ),
        ('peer_key = "k"\npeer_listen = "0.0.0.0:2223"\n', "not a wildcard"),
        ('peer_key = "k"\npeer_listen = "nowhere"\n', "peer_listen: invalid peer address"),
    ],
)
def test_peer_listen_is_checked(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RelayConfig.load(write(tmp_path, relay_toml(extra)))


def test_peer_listen_is_read(tmp_path: Path) -> None:
    text = relay_toml('peer_key = "k"\npeer_listen = "10.0.0.1:2223"\n')
    assert RelayConfig.load(write(tmp_path, text)).peer_listen == ("10.0.0.1", 2223)


def _relay_with(config: RelayConfig) -> Relay:
    return cast(Relay, SimpleNamespace(config=config))


def test_peer_key_must_be_a_readable_ed25519_key(tmp_path: Path) -> None:
    config = RelayConfig.load(write(tmp_path, relay_toml()))
    assert PeerLinks.configured(_relay_with(config)) is None
    missing = replace(config, peer_key=tmp_path / "absent")
    with pytest.raises(ConfigError, match="peer_key: cannot read the private key"):
        PeerLinks.configured(_relay_with(missing))
    rsa = tmp_path / "rsa_key"
    rsa.write_bytes(asyncssh.generate_private_key("ssh-rsa", key_size=2048).export_private_key())
    with pytest.raises(ConfigError, match="must be an ed25519 key"):
        PeerLinks.configured(_relay_with(replace(config, peer_key=rsa)))
    good = tmp_path / "peer_key"
    key = asyncssh.generate_private_key("ssh-ed25519")
    good.write_bytes(key.export_private_key())
    links = PeerLinks.configured(_relay_with(replace(config, peer_key=good)))
    assert links is not None
    assert links.accepts(key.convert_to_public())
    assert not links.accepts(asyncssh.generate_private_key("ssh-ed25519").convert_to_public())

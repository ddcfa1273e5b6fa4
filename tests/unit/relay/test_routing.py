"""The relay's pure decisions: which tether an engineer reaches, and who may tether.

SPEC invariants covered here: "An engineer reaches only the customer-allowed ports on
127.0.0.1 of a tethered machine, never any other host or port" (routing) and "A key
works once, for its serial only; a ... reused or foreign key is refused" (admission).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tether.keys import KeyKind, TetherKeyClaims
from tether.protocol import RefusalReason
from tether.relay.routing import (
    AdmissionRefused,
    Registry,
    RouteRefused,
    TetherEntry,
    admit_tether,
    check_binding,
)
from tether.store import IssuedKey
from tether.store import KeyKind as StoreKeyKind

T0 = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
EXPIRES = T0 + timedelta(days=14)
MACHINE = "SHA256:machine-a"
OTHER_MACHINE = "SHA256:machine-b"


def entry(serial: str = "SN-1001", offered: set[int] | None = None, **kw: Any) -> TetherEntry[str]:
    args: dict[str, Any] = {
        "key_id": "k1",
        "machine_key": MACHINE,
        "expires_at": EXPIRES,
        "key_ports": frozenset({22, 80, 443}),
        "connected_at": T0,
        "link": f"link-{serial}",
    }
    args.update(kw)
    e: TetherEntry[str] = TetherEntry(serial=serial, **args)
    e.offered_ports.update({22, 443} if offered is None else offered)
    return e


# --- registry -----------------------------------------------------------------------


def test_lookup_ignores_case_because_openssh_lowercases_host_names() -> None:
    registry: Registry[str] = Registry()
    e = entry("SN-ABC")
    registry.add(e)

    assert registry.get("sn-abc") is e
    assert registry.get("SN-ABC") is e
    assert registry.route("sn-abc", 22) is e
    assert registry.get("SN-ABD") is None


def test_add_returns_the_entry_it_replaced() -> None:
    registry: Registry[str] = Registry()
    first, second = entry("SN-1"), entry("sn-1", link="second")

    assert registry.add(first) is None
    assert registry.add(second) is first
    assert registry.get("SN-1") is second
    assert len(registry) == 1


def test_adding_the_same_entry_again_replaces_nothing() -> None:
    registry: Registry[str] = Registry()
    e = entry()
    registry.add(e)

    assert registry.add(e) is None
    assert len(registry) == 1


def test_remove_only_removes_the_current_entry() -> None:
    """A replaced tether that disconnects late must not remove its successor."""
    registry: Registry[str] = Registry()
    old, new = entry("SN-1"), entry("SN-1", link="new")
    registry.add(old)
    registry.add(new)

    assert registry.remove(old) is False
    assert registry.get("SN-1") is new
    assert registry.remove(new) is True
    assert registry.get("SN-1") is None
    assert registry.remove(new) is False
    assert len(registry) == 0


def test_with_key_and_iteration() -> None:
    registry: Registry[str] = Registry()
    a, b, c = entry("A1", key_id="k1"), entry("B1", key_id="k2"), entry("C1", key_id="k1")
    for e in (a, b, c):
        registry.add(e)

    assert {e.serial for e in registry.with_key("k1")} == {"A1", "C1"}
    assert registry.with_key("nope") == []
    # Iterating over a snapshot: entries may be removed while closing them all.
    for e in registry:
        registry.remove(e)
    assert len(registry) == 0


def test_may_offer_only_the_keys_ports() -> None:
    e = entry(key_ports=frozenset({22, 443}))

    assert e.may_offer(22)
    assert not e.may_offer(80)
    assert not e.may_offer(3306)


# --- route: engineers reach only offered ports of tethered machines -----------------


def test_engineer_reaches_an_offered_port_of_a_tethered_machine() -> None:
    registry: Registry[str] = Registry()
    e = entry("SN-1001", offered={22, 443})
    registry.add(e)

    assert registry.route("SN-1001", 22) is e
    assert registry.route("SN-1001", 443) is e


@pytest.mark.parametrize(
    "host",
    ["", "a b", "-x", "[::1]", "::1", "10.0.0.1:22", "host/../etc", "x" * 65, "ümlaut"],
)
def test_route_refuses_what_is_not_a_serial(host: str) -> None:
    registry: Registry[str] = Registry()
    registry.add(entry())

    with pytest.raises(RouteRefused, match="only reaches tethered machines by serial") as info:
        registry.route(host, 22)

    assert repr(host[:80]) in str(info.value)


def test_route_refusal_does_not_echo_an_endless_host_name() -> None:
    registry: Registry[str] = Registry()

    with pytest.raises(RouteRefused) as info:
        registry.route("x" * 10_000 + " y", 22)

    assert len(str(info.value)) < 200


@pytest.mark.parametrize("host", ["SN-2002", "localhost", "127.0.0.1", "example.com"])
def test_route_refuses_a_machine_that_is_not_tethered(host: str) -> None:
    registry: Registry[str] = Registry()
    registry.add(entry("SN-1001"))

    with pytest.raises(RouteRefused) as info:
        registry.route(host, 22)

    assert str(info.value) == (
        f"machine {host} is not tethered to this relay (is support access enabled on it?)"
    )


@pytest.mark.parametrize("port", [80, 3306, 0, 65535, 2222])
def test_route_refuses_a_port_not_offered_and_lists_the_open_ones(port: int) -> None:
    registry: Registry[str] = Registry()
    registry.add(entry("SN-1001", offered={443, 22}))

    with pytest.raises(RouteRefused) as info:
        registry.route("sn-1001", port)

    assert str(info.value) == f"port {port} is not open on machine SN-1001 (open: 22, 443)"


def test_a_port_in_the_key_but_not_offered_by_the_agent_is_refused() -> None:
    """The customer's agent decides what is offered; the key only bounds it."""
    registry: Registry[str] = Registry()
    registry.add(entry("SN-1001", offered={22}, key_ports=frozenset({22, 80, 443})))

    with pytest.raises(RouteRefused, match=r"\(open: 22\)"):
        registry.route("SN-1001", 443)


def test_a_machine_offering_nothing_says_so() -> None:
    registry: Registry[str] = Registry()
    registry.add(entry("SN-1001", offered=set()))

    with pytest.raises(RouteRefused, match=r"\(open: none\)"):
        registry.route("SN-1001", 22)


def test_a_removed_tether_is_no_longer_reachable() -> None:
    registry: Registry[str] = Registry()
    e = entry("SN-1001")
    registry.add(e)
    registry.remove(e)

    with pytest.raises(RouteRefused, match="not tethered"):
        registry.route("SN-1001", 22)


# --- admission ----------------------------------------------------------------------


def claims(**kw: Any) -> TetherKeyClaims:
    args: dict[str, Any] = {
        "key_id": "k1",
        "serial": "SN-1001",
        "issued_at": T0,
        "not_before": T0,
        "expires_at": EXPIRES,
        "ports": (22, 80, 443),
        "relay": "relay.example.com:2222",
        "relay_host_key": "SHA256:" + "A" * 43,
        "vendor": "acme",
        "kind": KeyKind.MANUAL,
    }
    args.update(kw)
    return TetherKeyClaims(**args)


def issued(**kw: Any) -> IssuedKey:
    args: dict[str, Any] = {
        "key_id": "k1",
        "serial": "SN-1001",
        "kind": StoreKeyKind.MANUAL,
        "issued_at": T0,
        "not_before": T0,
        "expires_at": EXPIRES,
        "ports": (22, 80, 443),
        "relay": "relay.example.com:2222",
        "relay_host_key": "SHA256:" + "A" * 43,
        "issued_by": "vendor-admin",
        "description": None,
        "bound_machine_key": None,
        "first_used_at": None,
        "revoked_at": None,
        "revoke_reason": None,
    }
    args.update(kw)
    return IssuedKey(**args)


def refusal(
    claims_: TetherKeyClaims, record: IssuedKey | None, machine: str, now: datetime
) -> AdmissionRefused:
    with pytest.raises(AdmissionRefused) as info:
        admit_tether(claims_, record, machine, now)
    return info.value


def test_a_fresh_key_is_admitted() -> None:
    admit_tether(claims(), issued(), MACHINE, T0)


def test_the_same_machine_may_reconnect_until_expiry() -> None:
    bound = issued(bound_machine_key=MACHINE, first_used_at=T0)

    admit_tether(claims(), bound, MACHINE, EXPIRES - timedelta(seconds=1))


def test_a_key_the_vendor_never_issued_is_refused() -> None:
    r = refusal(claims(), None, MACHINE, T0)

    assert r.reason is RefusalReason.UNKNOWN_KEY
    assert r.message == "this key was not issued by this vendor service"
    assert str(r) == r.message


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({"serial": "SN-2002"}, id="other-serial"),
        pytest.param({"expires_at": EXPIRES + timedelta(days=1)}, id="other-expiry"),
    ],
)
def test_a_key_that_does_not_match_the_vendors_record_is_refused(record: dict[str, Any]) -> None:
    r = refusal(claims(), issued(**record), MACHINE, T0)

    assert r.reason is RefusalReason.UNKNOWN_KEY
    assert "does not match the vendor's record" in r.message


def test_a_revoked_key_is_refused_even_for_its_own_machine() -> None:
    record = issued(revoked_at=T0, revoke_reason="case closed", bound_machine_key=MACHINE)

    r = refusal(claims(), record, MACHINE, T0 + timedelta(minutes=1))

    assert r.reason is RefusalReason.REVOKED
    assert "revoked" in r.message


def test_an_expired_key_is_refused() -> None:
    r = refusal(claims(), issued(), MACHINE, EXPIRES)

    assert r.reason is RefusalReason.EXPIRED
    assert "expired" in r.message


def test_a_key_used_by_another_machine_is_refused() -> None:
    record = issued(bound_machine_key=OTHER_MACHINE, first_used_at=T0)

    r = refusal(claims(), record, MACHINE, T0)

    assert r.reason is RefusalReason.OTHER_MACHINE
    assert "another machine" in r.message
    assert "one machine only" in r.message


def test_refusals_are_checked_in_order_revoked_before_expired_before_binding() -> None:
    everything_wrong = issued(revoked_at=T0, bound_machine_key=OTHER_MACHINE)

    assert refusal(claims(), everything_wrong, MACHINE, EXPIRES).reason is RefusalReason.REVOKED
    expired_and_bound = dataclasses.replace(everything_wrong, revoked_at=None)
    assert refusal(claims(), expired_and_bound, MACHINE, EXPIRES).reason is RefusalReason.EXPIRED


def test_check_binding_alone() -> None:
    check_binding(issued(), MACHINE)
    check_binding(issued(bound_machine_key=MACHINE), MACHINE)
    with pytest.raises(AdmissionRefused) as info:
        check_binding(issued(bound_machine_key=OTHER_MACHINE), MACHINE)
    assert info.value.reason is RefusalReason.OTHER_MACHINE

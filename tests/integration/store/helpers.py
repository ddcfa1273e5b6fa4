"""Helpers shared by the store tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tether.store import IssuedKey, KeyKind, Store

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


async def issue(store: Store, key_id: str = "k1", serial: str = "SN-1", **kw: Any) -> IssuedKey:
    """Record a key with sensible defaults (any field can be overridden)."""
    args: dict[str, Any] = {
        "kind": KeyKind.MANUAL,
        "issued_at": T0,
        "not_before": T0 - timedelta(minutes=5),
        "expires_at": T0 + timedelta(weeks=2),
        "ports": (22, 80, 443),
        "relay": "relay.example.com:443",
        "relay_host_key": "SHA256:relayhostkeyfingerprint",
        "issued_by": "alice",
    }
    args.update(kw)
    return await store.keys.record_issued(key_id=key_id, serial=serial, **args)

"""The access panel's words for each tether state (the same words as the CLI)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.unit.agent.web.test_app import make_config
from tether.agent.access import AccessManager
from tether.agent.state import AccessMode, AccessState, AccessStatus
from tether.agent.status import TunnelState, TunnelStatus
from tether.agent.web.oneclick import OneClick
from tether.agent.web.views import status_view
from tether.clock import FrozenClock
from tether.config import AgentConfig
from tether.tasks import TaskSet

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


class Host:
    """The page's view of an agent whose tether is in a chosen state."""

    def __init__(self, config: AgentConfig, tunnel: TunnelStatus | None) -> None:
        self.config = config
        self.access = AccessManager(config, clock=FrozenClock(NOW))
        self.tunnel_status = tunnel

    async def reconcile(self) -> None:
        return None

    def reset_tether(self) -> bool:
        return False


def open_tether(host: Host) -> None:
    host.access.state_file.save(
        AccessState(
            status=AccessStatus.OPEN,
            mode=AccessMode.TETHER,
            grant_id="k1",
            key="v4.public.x",
            key_id="k1",
            relay="relay.example:2222",
            ports=(22, 443),
            expires_at=NOW + timedelta(hours=3),
            opened_at=NOW,
        )
    )


def test_reconnecting_tether_shows_the_wait_and_its_reason(tmp_path: Path) -> None:
    tunnel = TunnelStatus(
        TunnelState.RECONNECTING,
        "relay.example:2222",
        NOW,
        retry_at=NOW + timedelta(seconds=5),
        reason="connection refused",
    )
    host = Host(make_config(tmp_path), tunnel)
    open_tether(host)
    view = status_view(host, OneClick(host.access, TaskSet(), host.reconcile))
    assert view["kind"] == "waiting"
    assert view["headline"] == "reconnecting in 5s (connection refused)"
    assert view["tether_line"] == tunnel.describe(NOW)
    assert view["retry_at"] == (NOW + timedelta(seconds=5)).isoformat()
    assert view["expires_at"] == (NOW + timedelta(hours=3)).isoformat()
    assert view["is_tether"]


def test_connected_tether_is_the_headline(tmp_path: Path) -> None:
    tunnel = TunnelStatus(TunnelState.CONNECTED, "relay.example:2222", NOW)
    host = Host(make_config(tmp_path), tunnel)
    open_tether(host)
    view = status_view(host, OneClick(host.access, TaskSet(), host.reconcile))
    assert view["kind"] == "open"
    assert view["headline"] == "connected to relay relay.example:2222 since 2026-11-25 03:00:00 UTC"
    assert view["retry_at"] is None


def test_open_without_a_live_tether_says_so(tmp_path: Path) -> None:
    host = Host(make_config(tmp_path), None)
    open_tether(host)
    view = status_view(host, OneClick(host.access, TaskSet(), host.reconcile))
    assert view["headline"] == "open until 2026-11-25 06:00 UTC"
    assert view["tether_line"] == "not connected"

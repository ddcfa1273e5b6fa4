"""What the customer's page needs of the running agent, as a protocol.

The page is served by :class:`~tether.agent.daemon.AgentDaemon`; tests give it a smaller
host. Kept apart from :mod:`~tether.agent.web.app` so views can name it without importing
the app that imports them.
"""

from __future__ import annotations

from typing import Protocol

from tether.agent.access import AccessManager
from tether.agent.status import TunnelStatus
from tether.config import AgentConfig


class AgentHost(Protocol):
    """What the page needs of the running agent (:class:`~tether.agent.daemon.AgentDaemon`)."""

    config: AgentConfig
    access: AccessManager

    async def reconcile(self) -> None:
        """Make the tether match the stored access state."""

    def reset_tether(self) -> bool:
        """Reconnect the tether now; False if none is held."""

    @property
    def tunnel_status(self) -> TunnelStatus | None:
        """The tether's live state, if one is held."""

"""What an agent tells a monitoring system: a few facts, never a listener.

Agents open no port (SPEC: no inbound connection to the customer's machine), so their
facts go two ways: ``tether access status --json`` (``"facts"``), and, when
``[metrics] textfile`` is set in ``agent.toml``, a file in the Prometheus text format
that node_exporter's textfile collector reads (``--collector.textfile.directory``).
The file is rendered by ``prometheus_client`` and replaced atomically (written beside,
then renamed), so node_exporter never reads half of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import generate_latest, write_to_textfile

from tether.agent.state import AccessState
from tether.config import AgentConfig

#: How often the agent daemon rewrites the textfile (seconds); node_exporter reads it
#: at each of its own scrapes.
TEXTFILE_INTERVAL = 10.0


@dataclass(frozen=True)
class AgentFacts:
    """The agent's state as numbers a monitoring system can alert on.

    :param access_open: support access is open now.
    :param expires_in: seconds until open access ends (``None``: closed, or open
        without expiry).
    :param tether_connected: the tether to the relay is up.
    :param live_sessions: support sessions logged in now (``None``: could not be read).
    :param recording_failures: recordings kept on this machine whose session failed to
        start or run, or whose output could not all be written (``None``: could not be
        read). Sessions refused because no recording could be created leave no
        recording, so they are not counted here (the recorder says so on stderr).
    """

    access_open: bool
    expires_in: float | None
    tether_connected: bool
    live_sessions: int | None
    recording_failures: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "access_open": self.access_open,
            "expires_in_seconds": self.expires_in,
            "tether_connected": self.tether_connected,
            "live_sessions": self.live_sessions,
            "recording_failures": self.recording_failures,
        }


def facts_of(
    state: AccessState,
    *,
    tether_connected: bool,
    live_sessions: int | None,
    now: datetime,
    recording_failures: int | None = None,
) -> AgentFacts:
    """The facts for ``state`` at ``now`` (a pure function: the caller reads the rest)."""
    expires_in = None
    if state.is_open and state.expires_at is not None:
        expires_in = max(0.0, (state.expires_at - now).total_seconds())
    return AgentFacts(
        access_open=state.is_open,
        expires_in=expires_in,
        tether_connected=state.is_open and tether_connected,
        live_sessions=live_sessions,
        recording_failures=recording_failures,
    )


def read_facts(
    config: AgentConfig, state: AccessState, tether_connected: bool, now: datetime
) -> AgentFacts:
    """:func:`facts_of`, counting live support sessions on this machine (reads /proc)."""
    from tether.agent.machine.sessions import list_sessions

    live: int | None = None
    if state.is_open:
        try:
            live = len(list_sessions(config))
        except OSError:  # /proc or sshd's log unreadable: say "unknown", not 0
            live = None
    else:
        live = 0
    return facts_of(
        state,
        tether_connected=tether_connected,
        live_sessions=live,
        now=now,
        recording_failures=count_recording_failures(config.recordings_dir),
    )


def count_recording_failures(directory: Path) -> int | None:
    """Recordings in ``directory`` that failed (``None``: the directory is unreadable).

    Kept recordings only: retention removing a failed one lowers the count, so this is
    a gauge. Metadata this process may not read counts as no failure.
    """
    from tether.agent.recording.catalog import list_recordings

    try:
        return sum(1 for info in list_recordings(directory) if info.failed)
    except OSError:
        return None


def registry_of(facts: AgentFacts) -> CollectorRegistry:
    """A registry holding ``facts`` as ``tether_agent_*`` gauges (absent when unknown)."""
    registry = CollectorRegistry(auto_describe=True)

    def gauge(name: str, text: str, value: float | None) -> None:
        if value is not None:
            Gauge(name, text, registry=registry).set(value)

    gauge("tether_agent_access_open", "1 while support access is open.", float(facts.access_open))
    gauge(
        "tether_agent_access_expires_in_seconds",
        "Seconds until open support access ends (absent: closed, or no expiry).",
        facts.expires_in,
    )
    gauge(
        "tether_agent_tether_connected",
        "1 while the tether to the vendor's relay is up.",
        float(facts.tether_connected),
    )
    gauge(
        "tether_agent_support_sessions",
        "Support sessions logged in on this machine now.",
        None if facts.live_sessions is None else float(facts.live_sessions),
    )
    gauge(
        "tether_agent_recording_failures",
        "Recordings kept on this machine whose session failed to start or run, or whose "
        "output could not all be written.",
        None if facts.recording_failures is None else float(facts.recording_failures),
    )
    return registry


def render(facts: AgentFacts) -> bytes:
    """``facts`` in the Prometheus text format."""
    return generate_latest(registry_of(facts))


def write_textfile(path: Path, facts: AgentFacts) -> None:
    """Replace ``path`` with ``facts`` atomically (node_exporter's textfile collector)."""
    write_to_textfile(str(path), registry_of(facts))

"""The benchmark harness in smoke mode: every row runs (tiny sizes), so it never rots.

The numbers of a smoke run mean nothing; this checks that each figure of the budget
table is measured and written, against the real parts (relay, agent, stock sshd, the
sandboxed machine).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tether.sandbox import sandbox_unavailable_reason
from tether.sandbox.haproxy import haproxy_unavailable_reason
from tether.sandbox.postgres import find_postgres_bindir
from tether.sandbox.squid import squid_unavailable_reason

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
FIGURES = [
    "throughput, relay-bound",
    "throughput, full path",
    "engineer connect through relay vs direct ssh",
    "relay RSS per idle tether, 10 tethers",
    "tether handshakes per relay CPU-second",
    "10 tethers back after a relay restart",
    "revoke → live session and tether gone (p99)",
    "revoke: relay histogram vs client side (mean)",
    "disable → live session and tether gone (p99)",
    "expiry → access closed, agent up",
    "expiry → access closed, agent dead",
    "agent idle memory (tether up)",
    "agent start-up",
    "live view added to the engineer's keystroke echo (p99)",
    # The flood group: the relay, then stock sshd, under the same pre-auth flood.
    "flood: legitimate logins that succeed",
    "flood: engineer connect under the flood vs idle",
    "flood: agent connect under the flood vs idle",
    "flood: relay RSS, peak during the flood",
    "flood: relay CPU during the flood",
    "flood: log lines written during the flood",
    # The transports group: the tether over TLS and WebSocket-in-TLS beside raw SSH.
    "transports: throughput over tls vs raw SSH",
    "transports: throughput over websocket-tls vs raw SSH",
    "transports: agent connect over tls vs raw SSH",
    "transports: agent connect over websocket-tls vs raw SSH",
]
#: ... and through Debian's Squid (skipped without it).
SQUID_FIGURES = [
    "transports: throughput over tls-proxy vs raw SSH",
    "transports: throughput over websocket-tls-proxy vs raw SSH",
    "transports: throughput over websocket-proxy vs raw SSH",
    "transports: agent connect over tls-proxy vs raw SSH",
    "transports: agent connect over websocket-tls-proxy vs raw SSH",
    "transports: agent connect over websocket-proxy vs raw SSH",
]
#: The fleet group's rows (PostgreSQL and HAProxy of this machine; skipped without them).
FLEET_FIGURES = [
    "fleet: engineer connect through a peer relay vs the machine's own relay",
    "fleet: throughput through a peer relay vs the machine's own relay",
    "fleet: revoke → live sessions through both relays gone (p99)",
    "fleet: relay RSS per idle tether, 3 relays x 10 tethers",
    "fleet: 10 tethers back after SIGKILL of one of three relays",
]


@pytest.mark.timeout(360)
def test_every_budget_row_is_measured_and_written(tmp_path: Path) -> None:
    reason = sandbox_unavailable_reason()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=340,  # under load (other work on the 2 cores) a run took 218 s
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (json_file,) = tmp_path.glob("*-smoke.json")
    data = json.loads(json_file.read_text())
    measured = {row["figure"]: row for row in data["rows"]}
    fleet = haproxy_unavailable_reason() is None and find_postgres_bindir() is not None
    if not fleet:
        assert "fleet group skipped" in result.stderr, result.stderr[-3000:]
    squid = squid_unavailable_reason() is None
    for figure in FIGURES + (FLEET_FIGURES if fleet else []) + (SQUID_FIGURES if squid else []):
        assert any(name.startswith(figure) for name in measured), (figure, sorted(measured))
    for row in data["rows"]:
        assert isinstance(row["value"], float | int), row
        assert math.isfinite(row["value"]), row
        # Only the connect row is a difference (through the relay can beat direct ssh).
        assert row["value"] >= 0 or row["unit"] == "ms extra", row
    assert data["machine"]["cores"] >= 1
    markdown = json_file.with_suffix(".md").read_text()
    assert "| figure | measured | budget |" in markdown
    assert "agent start-up" in result.stdout

"""Wire constants shared by relay, agent and engineer tools (one place, like upterm's).

Changing a value here changes the protocol between agent and relay: bump
:data:`PROTOCOL_VERSION` when you do.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

#: SSH user name an agent logs in to the relay with (its machine key authenticates it).
AGENT_USERNAME = "tether-agent"

#: Subsystem an agent opens on its control channel after authenticating; JSON lines.
CONTROL_SUBSYSTEM = "tether-control@tether"

#: Host the agent names in its tcpip-forward requests; the relay never listens on it.
FORWARD_BIND_HOST = "tether"

#: Where the agent connects for a forwarded channel: the machine's own loopback only.
MACHINE_LOOPBACK = "127.0.0.1"

#: Default account that engineers log in to on a machine.
DEFAULT_SUPPORT_ACCOUNT = "tether-support"

#: Default ports a tether key allows when none are named.
DEFAULT_PORTS: tuple[int, ...] = (22, 80, 443)

#: Version string the relay presents; deliberately says what it is and nothing more.
RELAY_SERVER_VERSION = "Tether_relay"

#: The relay greets agents with its clock in the SSH auth banner: "<this><ISO time>".
RELAY_TIME_BANNER = "tether-relay-time "

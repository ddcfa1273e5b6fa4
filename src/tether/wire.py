"""Wire constants shared by relay, agent and engineer tools (one place, like upterm's).

Changing a value here changes the protocol between agent and relay: bump
:data:`PROTOCOL_VERSION` when you do.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

#: SSH user name an agent logs in to the relay with (its machine key authenticates it).
AGENT_USERNAME = "tether-agent"

#: SSH user name one relay logs in to another with (the fleet's shared peer key, never an
#: engineer's certificate), to carry engineers' channels to the relay holding a machine.
PEER_USERNAME = "tether-relay"

#: Version of the engineer identity a relay passes to a peer with each carried channel.
PEER_ORIGIN_VERSION = 1

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

#: A relay with TLS also tells agents its TLS certificate in the SSH auth banner (which the
#: pinned host key authenticates): "<this><SHA-256 hex of the DER certificate> <issuer>".
#: An agent that saw another certificate knows something on the way inspects TLS.
RELAY_TLS_BANNER = "tether-relay-tls "

#: Ciphers the relay and agents offer, fastest first. Only AES-GCM: it is one AEAD call per
#: packet (AES-NI) where chacha20-poly1305 costs three, and stock OpenSSH picks the first of
#: its own list that the server offers, so offering chacha20 would make every engineer use it.
#: Every OpenSSH since 6.2 (2013) speaks AES-GCM.
TRANSPORT_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

#: Largest SSH packet the relay and agents accept on a channel (OpenSSH's limit is 256 KiB
#: for the whole packet). Stock clients send what the peer allows: bigger packets mean
#: fewer per-packet costs, which dominate a relay written in Python.
CHANNEL_MAX_PACKET = 192 * 1024

#: Channel window: enough in flight to fill a fast link without waiting for window adjusts.
CHANNEL_WINDOW = 8 * 1024 * 1024

"""The fleet behind ``tether demo --relays N``: PostgreSQL, N relays and HAProxy.

Everything runs on this host's loopback, the way a vendor runs a fleet: a PostgreSQL
server from the installed binaries (:class:`~tether.sandbox.postgres.LocalPostgres`),
relays provisioned by ``tether vendor relay add`` (each its own id, peer port and
readiness endpoint, PROXY v2 from HAProxy only), and Debian's HAProxy in front, whose
port is the relay address agents and engineers know.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tether.config import RelayConfig, toml_string
from tether.relay.server import Relay
from tether.sandbox.haproxy import Backend, HAProxy, free_port, haproxy_unavailable_reason
from tether.sandbox.postgres import LocalPostgres
from tether.store import Store
from tether.vendor_service.authority import Authority
from tether.vendor_service.fleet import RelayPlan, provision_relay

logger = logging.getLogger("tether.demo")

#: The demo relays' self-signed TLS certificate and key, in the vendor data directory
#: (made by the demo, see :func:`tether.tlscert.write_self_signed`).
RELAY_TLS_CERT, RELAY_TLS_KEY = "relay_tls.crt", "relay_tls.key"


def add_to_relay_toml(config: Path, certificate: Path, key: Path) -> None:
    """Name ``certificate`` and ``key`` in a relay.toml (``tls_certificate`` and
    ``tls_key``, as paths relative to it), before its first table.

    The demo's relays serve SSH, SSH in TLS and SSH over WebSocket on one port this way.
    """
    lines = config.read_text().splitlines()
    first_table = next((i for i, line in enumerate(lines) if line.startswith("[")), len(lines))
    while first_table > 0 and not lines[first_table - 1].strip():
        first_table -= 1  # with the top-level keys, before the blank line
    entries = [
        f"tls_certificate = {toml_string(os.path.relpath(certificate, config.parent))}",
        f"tls_key = {toml_string(os.path.relpath(key, config.parent))}",
    ]
    lines[first_table:first_table] = entries
    config.write_text("\n".join(lines) + "\n")


class DemoFleet:
    """``start()`` then ``aclose()``; :attr:`port` is HAProxy's (the public relay port)."""

    def __init__(self, workdir: Path, relays: int) -> None:
        self.workdir = workdir
        self.count = relays
        #: HAProxy's port, chosen before the vendor data exists (keys name it).
        self.port = free_port()
        self.relays: list[Relay] = []
        self.haproxy: HAProxy | None = None
        self.postgres: LocalPostgres | None = None
        self._pg_dir: Path | None = None

    async def start_database(self) -> str:
        """Start PostgreSQL; the URL of the demo's (empty) database."""
        reason = haproxy_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"--relays needs HAProxy: {reason}")
        # PostgreSQL refuses to run as root and must reach its directory as its own
        # user: a directory of its own under /tmp, not inside the root-only workdir.
        self._pg_dir = Path(tempfile.mkdtemp(prefix="tether-demo-pg-"))
        self._pg_dir.chmod(0o755)
        self.postgres = LocalPostgres(self._pg_dir / "pg")
        await asyncio.to_thread(self.postgres.start)
        url = await asyncio.to_thread(self.postgres.create_database, "tether")
        logger.info(f"database: PostgreSQL on 127.0.0.1:{self.postgres.port}")
        return url

    async def start_relays(self, authority: Authority, store: Store) -> None:
        """Provision and start the relays, then HAProxy in front of them."""
        backends = []
        for n in range(1, self.count + 1):
            listen, health = free_port(), free_port()
            plan = RelayPlan(
                f"relay-{n}",
                f"127.0.0.1:{listen}",
                f"127.0.0.1:{free_port()}",
                trusted_proxies=("127.0.0.1/32",),
                metrics_listen=f"127.0.0.1:{health}",
            )
            made = await provision_relay(authority.config, store, plan, authority.clock.now())
            data = authority.config.data_dir
            add_to_relay_toml(made.config_path, data / RELAY_TLS_CERT, data / RELAY_TLS_KEY)
            relay = Relay(RelayConfig.load(made.config_path), store)
            await relay.start()
            self.relays.append(relay)
            backends.append(Backend(plan.relay_id, listen, health))
            logger.info(f"relay {plan.relay_id}: listening on 127.0.0.1:{listen}")
        self.haproxy = HAProxy(self.workdir / "haproxy", backends, port=self.port)
        # The relays answer HAProxy's readiness checks from this event loop.
        await asyncio.to_thread(self.haproxy.start)
        logger.info(f"HAProxy: 127.0.0.1:{self.port} in front of {self.count} relays")

    async def aclose(self) -> None:
        """Stop HAProxy, the relays and PostgreSQL (also after a failed start)."""
        if self.haproxy is not None:
            self.haproxy.stop()
            self.haproxy = None
        for relay in self.relays:
            await relay.aclose()
        self.relays = []

    def stop_database(self) -> None:
        """After the store is closed: stop PostgreSQL and remove its files."""
        if self.postgres is not None:
            self.postgres.close()
            self.postgres = None
        if self._pg_dir is not None:
            shutil.rmtree(self._pg_dir, ignore_errors=True)
            self._pg_dir = None

"""``tether demo``: the whole system on one machine, with real parts.

* vendor data (signing key, engineer CA, relay host key, SQLite) in a work directory;
* a relay on the host's 127.0.0.1 (port picked by the OS);
* a sandboxed "customer machine" (own mount, pid, UTS and network namespaces) running
  stock ``sshd`` on its own 127.0.0.1:22, a small web UI on its 127.0.0.1:443 and
  the Tether agent; its only way out is an uplink to the relay's port;
* a tether key issued for the machine's serial and applied with ``tether access
  enable``; an engineer with a certificate from the vendor CA and an OpenSSH config.

The engineer then types plain ``ssh -F DIR/ssh_config SERIAL``. :class:`DemoSystem` is
also what the end-to-end tests drive, so the demo cannot drift from what is tested.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from tether.config import RelayConfig, toml_string
from tether.demo_fleet import RELAY_TLS_CERT, RELAY_TLS_KEY, DemoFleet, add_to_relay_toml
from tether.errors import NotReady
from tether.relay.server import Relay
from tether.sandbox import Sandbox, layout
from tether.sandbox.machine import _read_line as read_line
from tether.seal import generate_password
from tether.sshlib import asyncssh
from tether.store import Store
from tether.tlscert import write_self_signed
from tether.vendor_service.api_credentials import hash_password
from tether.vendor_service.authority import Authority, init_data_dir, load_vendor_config
from tether.vendor_service.service import VendorService
from tether.wire import DEFAULT_SUPPORT_ACCOUNT

logger = logging.getLogger("tether.demo")

DEMO_SERIAL = "DEMO-0001"
DEMO_ENGINEER = "demo"
#: Where the demo machine's agent configuration lives (inside the machine).
AGENT_CONFIG = "/etc/tether/agent.toml"
#: The machine's web UI in the demo: a plain page on its 127.0.0.1:443.
WEB_PORT = 443
#: Where the carrier of the machine's admin page to the host connects from, inside the
#: machine: not 127.0.0.1, so the page tells carried clients from its own console.
PAGE_CARRIER = "127.0.0.2"
#: The vendor admin who uses the console in the demo.
DEMO_ADMIN = "admin"
#: Where, inside the machine, the customer page's port is carried out to the host.
_PAGE_SOCKETS = "/run/tether-demo-page"


@dataclass
class EngineerFiles:
    """What an engineer's laptop holds: key, certificate, known hosts, ssh config."""

    key: Path
    certificate: Path
    ssh_config: Path

    def ssh(self, *args: str) -> list[str]:
        """A stock ``ssh`` command line using this engineer's config."""
        return ["ssh", "-F", str(self.ssh_config), *args]


class DemoSystem:
    """Vendor, relay, sandboxed machine with agent, and an engineer, on this host.

    ``await start()`` brings everything up (each step says what it does through
    ``progress``); ``await aclose()`` tears everything down, also after a failed start.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        serial: str = DEMO_SERIAL,
        engineer: str = DEMO_ENGINEER,
        key_lifetime: timedelta = timedelta(days=1),
        progress: logging.Logger | None = None,
        relays: int = 1,
    ) -> None:
        self.workdir = workdir
        #: With more than one relay: PostgreSQL, the relays and HAProxy in front.
        self.fleet = DemoFleet(workdir, relays) if relays > 1 else None
        self.serial = serial
        self.engineer_name = engineer
        self.key_lifetime = key_lifetime
        self._say = (progress or logger).info
        self.store: Store | None = None
        self.relay: Relay | None = None
        self.authority: Authority | None = None
        self.machine: Sandbox | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.web: subprocess.Popen[bytes] | None = None
        self.engineer: EngineerFiles | None = None
        #: The customer's admin page, as the host reaches it (and its admin password).
        self.page_url: str | None = None
        self.page_password = generate_password()
        #: The vendor admin's password for the console (``DEMO_ADMIN``).
        self.admin_password = generate_password()
        #: The page's two forwarders (in the machine, on the host).
        self._page_forwarders: list[subprocess.Popen[bytes]] = []
        self.key: str | None = None
        self.key_id: str | None = None
        self.vendor_service: VendorService | None = None
        self._serving: asyncio.Future[None] | None = None
        #: The demo engineer's password for `tether login` (printed by the demo).
        self.engineer_password = generate_password()

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start_vendor()
            await self._start_machine()
            await self.open_access()
            await self._make_engineer()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        for forwarder in self._page_forwarders:
            forwarder.terminate()
        for forwarder in self._page_forwarders:
            try:
                forwarder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                forwarder.kill()
                forwarder.wait()
            for pipe in (forwarder.stdin, forwarder.stdout):
                if pipe is not None:
                    pipe.close()
        self._page_forwarders = []
        if self.machine is not None:
            for proc in (self.agent, self.web):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
            await asyncio.to_thread(self.machine.stop)
            for proc in (self.agent, self.web):
                if proc is not None:
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            self.machine = None
        if self.vendor_service is not None:
            await self.vendor_service.aclose()
            if self._serving is not None:
                await self._serving
            self.vendor_service = None
        if self.relay is not None:
            await self.relay.aclose()
            self.relay = None
        if self.fleet is not None:
            await self.fleet.aclose()
        if self.store is not None:
            await self.store.aclose()
            self.store = None
        if self.fleet is not None:
            await asyncio.to_thread(self.fleet.stop_database)

    async def _start_vendor(self) -> None:
        data = self.workdir / "vendor"
        self._say(f"vendor: creating keys, engineer CA and database in {data}")
        # The relay's address goes into vendor.toml, relay.toml and agent-trust.toml, so
        # that `tether vendor issue-key` or `cases approve` run by hand against this
        # data directory name the relay that runs, as the demo's own keys do.
        if self.fleet is not None:
            database: str | None = await self.fleet.start_database()
            relay = f"127.0.0.1:{self.fleet.port}"  # HAProxy: what agents and engineers know
        else:
            database, relay = None, f"127.0.0.1:{_free_port()}"
        await init_data_dir(
            data, vendor="Demo Vendor", relay=relay, relay_listen=relay, database=database
        )
        # A self-signed TLS certificate: the relay's one port then also carries SSH in
        # TLS and SSH over WebSocket, as a vendor's relay on 443 would.
        write_self_signed("127.0.0.1", data / RELAY_TLS_CERT, data / RELAY_TLS_KEY)
        add_to_relay_toml(data / "relay.toml", data / RELAY_TLS_CERT, data / RELAY_TLS_KEY)
        config = load_vendor_config(data)
        self.store = await Store.open(config.database)
        self.authority = Authority(config, self.store)
        if self.fleet is not None:
            await self.fleet.start_relays(self.authority, self.store)
        else:
            # Its Prometheus endpoint on loopback, as a vendor's would be on an internal
            # address (the bench reads its revocation histogram there).
            relay_config = replace(
                RelayConfig.load(data / "relay.toml"), metrics_listen=("127.0.0.1", 0)
            )
            self.relay = Relay(relay_config, self.store)
            await self.relay.start()
            self._say(f"relay: listening on {relay}")
            if self.relay.metrics_server is not None:
                self._say(f"relay metrics: http://{self.relay.metrics_server.address}/metrics")
        self.vendor_service = VendorService(config, self.store, listen=("127.0.0.1", 0))
        self._serving = asyncio.ensure_future(self.vendor_service.serve())
        await self.vendor_service.wait_ready()
        self._say(f"vendor service: {self.vendor_service.url}")

    @property
    def relay_port(self) -> int:
        """The relay port agents and engineers use (HAProxy's, with several relays)."""
        if self.fleet is not None:
            return self.fleet.port
        if self.relay is None:
            raise NotReady("the relay is not running")
        return self.relay.port

    def _authority(self) -> Authority:
        if self.authority is None:
            raise NotReady("the demo's vendor side is not running")
        return self.authority

    def _store(self) -> Store:
        if self.store is None:
            raise NotReady("the demo's database is not open")
        return self.store

    def _machine(self) -> Sandbox:
        if self.machine is None:
            raise NotReady("the demo machine is not running")
        return self.machine

    async def restart_relay(self) -> None:
        """Stop the relay and start it again on the same port (agents must come back)."""
        if self.relay is None or self.store is None:
            raise NotReady("the relay is not running")
        port = self.relay.port
        config = self.relay.config
        await self.relay.aclose()
        self.relay = Relay(replace(config, listen=("127.0.0.1", port)), self.store)
        await self.relay.start()

    async def _start_machine(self) -> None:
        self._say(
            f"machine {self.serial}: starting a sandbox with its own sshd (no inbound network)"
        )
        self.machine = Sandbox(
            self.workdir / "machine",
            hostname=self.serial,
            uplink_ports=[self.relay_port],
            private_tmp=True,  # what engineers copy to the machine's /tmp stays there
        )
        await asyncio.to_thread(self.machine.start)
        authority = self._authority()
        page_port = _free_port()
        # What the vendor hands customers; its request_relay is the relay that runs.
        trust = (authority.config.data_dir / "agent-trust.toml").read_text()
        agent_toml = self.machine.host_path("/etc/tether") / "agent.toml"
        agent_toml.write_text(
            "# The demo machine's agent configuration.\n"
            f"serial = {toml_string(self.serial)}\n"
            f"{trust}"
            'sshd_log = "/var/log/sshd.log"\n'
            "[tether]\nbackoff_cap = 10.0\nkeepalive_interval = 5.0\n"
            f'[web]\nlisten = "127.0.0.1:{page_port}"\n'
            "# The page's carrier to the host connects from here: its clients are not this\n"
            "# machine's own console, and cannot lock it out.\n"
            f"trusted_proxies = [{toml_string(PAGE_CARRIER)}]\n"
        )
        from tether.agent.web.auth import AdminPassword

        password_file = self.machine.host_path("/var/lib/tether") / "web-admin.argon2"
        await asyncio.to_thread(AdminPassword(password_file).set, self.page_password)
        www = self.machine.host_path("/var/lib/tether") / "demo-www"
        www.mkdir(parents=True, exist_ok=True)
        (www / "index.html").write_text(
            f"<!doctype html><title>{self.serial}</title><h1>Web UI of machine {self.serial}</h1>\n"
        )
        self.web = self.machine.popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(WEB_PORT),
                "--bind",
                "127.0.0.1",
                "--directory",
                "/var/lib/tether/demo-www",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.start_agent()
        self._say(f"machine {self.serial}: agent started (log: {self.workdir / 'agent.log'})")
        await asyncio.to_thread(self._expose_page, page_port)
        self._say(f"machine {self.serial}: admin page carried out to {self.page_url}")

    def _expose_page(self, port: int, timeout: float = 20.0) -> None:
        """Carry the machine's 127.0.0.1:PORT (the agent's page) to the host's 127.0.0.1:PORT.

        The uplink forwarders, the other way round: inside the machine one listens on a
        Unix socket and connects to the page; on the host one listens on TCP and
        connects to that socket (which the host sees in the machine's private /run).
        """
        machine = self._machine()
        sockets = machine.host_path(_PAGE_SOCKETS)
        sockets.mkdir(parents=True, exist_ok=True)
        inside = machine.popen(
            [
                sys.executable,
                "-m",
                "tether.sandbox.uplink",
                "host",
                "--socket-dir",
                _PAGE_SOCKETS,
                "--port",
                str(port),
                "--from",
                PAGE_CARRIER,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._page_forwarders.append(inside)
        _wait_ready(inside, "the machine's page forwarder", timeout)
        # Relative to its working directory: the host path may exceed a socket name's limit.
        outside = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tether.sandbox.uplink",
                "inside",
                "--exit-on-stdin-eof",
                "--socket-dir",
                ".",
                "--port",
                str(port),
            ],
            cwd=sockets,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._page_forwarders.append(outside)
        _wait_ready(outside, "the host's page forwarder", timeout)
        self.page_url = f"http://127.0.0.1:{port}/"

    def start_agent(self, log_name: str = "agent.log") -> subprocess.Popen[bytes]:
        """Start (or start again) ``tether agent serve`` on the machine, logging to ``log_name``."""
        machine = self._machine()
        with open(self.workdir / log_name, "ab") as log_file:  # the child keeps its own fd
            self.agent = machine.popen(
                [sys.executable, "-m", "tether", "agent", "serve", "--config", AGENT_CONFIG],
                stdout=log_file,
                stderr=log_file,
            )
        return self.agent

    async def issue_key(self, lifetime: timedelta | None = None) -> str:
        authority = self._authority()
        key, claims = await authority.issue_key(
            self.serial,
            lifetime=lifetime or self.key_lifetime,
            relay=f"127.0.0.1:{self.relay_port}",
        )
        self.key, self.key_id = key, claims.key_id
        return key

    def access(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``tether access ARGS`` on the machine, as its admin would."""
        machine = self._machine()
        return machine.run(
            [sys.executable, "-m", "tether", "access", *args, "--config", AGENT_CONFIG]
        )

    async def open_access(self) -> None:
        key = await self.issue_key()
        self._say(f"vendor: issued key {self.key_id} for {self.serial}; the customer applies it")
        result = await asyncio.to_thread(self.access, "enable", "--key", key)
        if result.returncode != 0:
            said = result.stderr.strip() or result.stdout.strip() or "(no output)"
            raise RuntimeError(f"tether access enable failed (exit {result.returncode}): {said}")
        await self.wait_for_tether("connected")
        self._say(f"machine {self.serial}: tether connected to the relay")

    async def wait_for_tether(self, state: str, within: float = 20.0) -> dict[str, object]:
        """Poll ``tether access status --json`` on the machine until the tether is in ``state``."""
        deadline = time.monotonic() + within
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            result = await asyncio.to_thread(self.access, "status", "--json")
            if result.returncode == 0:
                status = json.loads(result.stdout)
                tunnel = status.get("tunnel")
                if isinstance(tunnel, dict) and tunnel.get("state") == state:
                    return status
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"the tether did not become {state!r} in {within:.0f} s; last status: {status}"
        )

    async def _make_engineer(self) -> None:
        authority, store = self._authority(), self._store()
        home = self.workdir / "engineer"
        home.mkdir(exist_ok=True)
        await store.engineers.add(self.engineer_name, authority.clock.now())
        await store.engineers.set_password(
            self.engineer_name, hash_password(self.engineer_password)
        )
        key_path = home / "id_ed25519"
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{self.engineer_name}@demo")
        key_path.write_bytes(key.export_private_key())
        key_path.chmod(0o600)
        cert = await authority.sign(
            self.engineer_name, key.convert_to_public(), ttl=timedelta(hours=8)
        )
        cert_path = home / "id_ed25519-cert.pub"
        cert_path.write_text(cert.openssh() + "\n")
        host_key = (authority.config.data_dir / "relay_host_key.pub").read_text().split()
        known = home / "known_hosts"
        known.write_text(f"[127.0.0.1]:{self.relay_port} {host_key[0]} {host_key[1]}\n")
        config = home / "ssh_config"
        config.write_text(
            f"# Engineer '{self.engineer_name}': ssh -F {config} {self.serial}\n"
            "Host tether-relay\n"
            "    HostName 127.0.0.1\n"
            f"    Port {self.relay_port}\n"
            f"    User {self.engineer_name}\n"
            f"    UserKnownHostsFile {known}\n"
            "    StrictHostKeyChecking yes\n"
            f"Host {self.serial} {self.serial.lower()}\n"
            f"    User {DEFAULT_SUPPORT_ACCOUNT}\n"
            "    ProxyJump tether-relay\n"
            f"    UserKnownHostsFile {home / 'known_machines'}\n"
            "    StrictHostKeyChecking accept-new\n"
            "Host *\n"
            f"    IdentityFile {key_path}\n"
            f"    CertificateFile {cert_path}\n"
            "    IdentitiesOnly yes\n"
            "    BatchMode yes\n"
        )
        self.engineer = EngineerFiles(key_path, cert_path, config)
        await store.engineers.add(DEMO_ADMIN, authority.clock.now(), admin=True)
        await store.engineers.set_password(DEMO_ADMIN, hash_password(self.admin_password))
        self._say(
            f"engineer {self.engineer_name}: certificate valid until {cert.valid_before:%H:%M} UTC"
        )

    @property
    def console_url(self) -> str:
        """The vendor console's address."""
        if self.vendor_service is None:
            raise NotReady("the demo's vendor service is not running")
        return self.vendor_service.url + "/console/"

    def instructions(self) -> str:
        if self.engineer is None:
            raise NotReady("the demo is not running")
        cfg = self.engineer.ssh_config
        return "\n".join(
            [
                "",
                f"Tether demo is up. Machine {self.serial} is tethered to the relay on "
                f"127.0.0.1:{self.relay_port}"
                + (
                    f" (HAProxy in front of {self.fleet.count} relays on PostgreSQL: "
                    "`tether vendor relay list --data-dir "
                    f"{self.workdir / 'vendor'}` shows them)."
                    if self.fleet is not None
                    else "."
                ),
                "",
                "As a support engineer, the everyday way:",
                f"  tether login --vendor {self.vendor_service.url if self.vendor_service else '?'} "
                f"--name {self.engineer_name}      # password: {self.engineer_password}",
                "  tether ls                    # live tethers",
                "  tether ssh-config --install  # then plain: ssh DEMO-0001",
                f"  tether web {self.serial}          # the machine's web UI on a local port",
                "",
                "Or with the demo's ready-made OpenSSH config (stock OpenSSH, through the relay):",
                f"  ssh -F {cfg} {self.serial} hostname",
                f"  ssh -F {cfg} {self.serial}                 # a shell on the machine",
                f"  ssh -F {cfg} -N -L 8443:{self.serial}:443 tether-relay   # then open http://127.0.0.1:8443/",
                "",
                "In a browser:",
                f"  the customer's admin page:  {self.page_url}   (password: {self.page_password})",
                f"  the vendor console:         {self.console_url}   "
                f"({DEMO_ADMIN} / {self.admin_password})",
                "",
                "As the customer's admin (on the machine):",
                f"  nsenter -t {self.machine.pid if self.machine else '?'} -m -n -p -u "
                f"{sys.executable} -m tether access status --config /etc/tether/agent.toml",
                "  ... access disable  (ends every session at once)",
                "  ... access recordings · access play ID  (every support session is recorded)",
                '  ... access enable --request "what is wrong"  (one click: waits for the vendor)',
                "",
                "As the vendor, deciding a one-click request (or in the console):",
                f"  tether vendor cases --data-dir {self.workdir / 'vendor'}",
                f"  tether vendor cases approve ID --data-dir {self.workdir / 'vendor'}",
                "",
                "Refused, as it should be: ssh -F ... -W otherhost:22 tether-relay, port 8080, a shell on the relay.",
                "Press Ctrl-C to tear everything down.",
            ]
        )


def _free_port() -> int:
    """A TCP port free on the host's loopback right now (the relay's, the page's forwarder)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    if process.stdout is None:  # pragma: no cover - started with stdout=PIPE
        raise RuntimeError(f"no pipe to {what}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        line = read_line(process.stdout, 0.2)
        if line == layout.READY_LINE:
            return
    raise RuntimeError(f"{what} did not start in {timeout:.0f} s")


async def run_demo(workdir: Path, relays: int = 1) -> None:
    """Run the demo until Ctrl-C or SIGTERM, then tear it all down."""
    progress = logging.getLogger("tether.demo")
    system = DemoSystem(workdir, progress=progress, relays=relays)
    # Ctrl-C and SIGTERM both end the demo, also while it starts, and also when it was
    # started in the background (where a shell leaves SIGINT ignored).
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    starting = asyncio.ensure_future(system.start())
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start says why
            print(system.instructions(), flush=True)
            await stopped
    finally:
        for task in (starting, stopped):
            task.cancel()
        await asyncio.gather(starting, stopped, return_exceptions=True)
        print("\nTearing down the demo...", flush=True)
        await system.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

"""One TOML file per part: ``/etc/tether/agent.toml``, ``relay.toml``, ``vendor.toml``.

Every path in a file may be relative (to the file's directory) or absolute, so a test
or the demo points a part at a sandbox simply by writing a different file. Unknown
keys are refused (a typo must not silently fall back to a default), and every bad
value gets a message naming the file and the key.
"""

from __future__ import annotations

import ipaddress
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from tether.agent.machine.effects import MachinePaths
from tether.durations import parse_duration
from tether.errors import ConfigError
from tether.keys import VerifyKey, check_ports, check_serial, parse_address
from tether.seal import SealPublicKey
from tether.wire import DEFAULT_PORTS, DEFAULT_SUPPORT_ACCOUNT

DEFAULT_CONFIG_DIR = Path("/etc/tether")


class _Reader:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, path: Path, data: Mapping[str, Any], table: str = "") -> None:
        self.path = path
        self.data = data
        self.table = table
        self.used: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.path}: {self.table + '.' if self.table else ''}{key}"

    def _get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"{self._where(key)} is missing")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{self._where(key)} has the wrong type ({type(value).__name__})")
        return value

    def text(self, key: str, default: Any = None) -> Any:
        return self._get(key, str, default)

    def integer(self, key: str, default: Any = None, *, low: int = 0, high: int = 2**31) -> Any:
        value = self._get(key, int, default)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{self._where(key)} must be between {low} and {high}")
        return value

    def number(
        self, key: str, default: Any = None, *, low: float = 0.001, high: float = 86400.0
    ) -> Any:
        value = self._get(key, (int, float), default)
        if value is None:
            return None
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f"{self._where(key)} must be a number from {low:g} to {high:g}")
        return float(value)

    def path_(self, key: str, default: Any = None) -> Any:
        value = self.text(key, default)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else (self.path.parent / path).resolve()

    def strings(self, key: str, default: Any = None) -> Any:
        value = self._get(key, list, default)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._where(key)} must be a list of strings")
        return value

    def table_(self, key: str) -> _Reader:
        value = self._get(key, dict, {})
        return _Reader(self.path, value, key)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                f"{self.path}: unknown setting(s) {', '.join(unknown)}"
                f"{' in [' + self.table + ']' if self.table else ''}"
            )


_REQUIRED = object()


def _read(path: Path) -> _Reader:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"configuration file {path} is not readable (run as root?)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return _Reader(path.resolve(), data)


def _verify_keys(reader: _Reader, key: str) -> tuple[VerifyKey, ...]:
    texts = reader.strings(key, _REQUIRED)
    if not texts:
        raise ConfigError(f"{reader.path}: {key} needs at least one k4.public… key")
    try:
        return tuple(VerifyKey.from_paserk(t) for t in texts)
    except Exception as exc:
        raise ConfigError(f"{reader.path}: {key}: {exc}") from None


@dataclass(frozen=True)
class TetherSettings:
    """How the agent holds its tether (the ``[tether]`` table of agent.toml)."""

    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    backoff_initial: float = 1.0
    backoff_cap: float = 60.0
    connect_timeout: float = 20.0


class FailMode(StrEnum):
    """What happens to a support session when its recording cannot start."""

    CLOSED = "closed"
    """Refuse the session (the default)."""
    OPEN = "open"
    """Run it unrecorded ("record if possible"), with a warning and a trace."""


@dataclass(frozen=True)
class RecordingSettings:
    """Session recording (the ``[recording]`` table of agent.toml).

    :param directory: where recordings go (``dir``; default ``STATE_DIR/recordings``).
    :param max_age: recordings older than this are removed.
    :param max_total: the recordings together may take this many bytes on disk; the
        oldest are removed first.
    :param max_session: most bytes of output recorded per session.
    :param python: the interpreter sshd starts the recorder with (default: the agent's,
        or the system's ``python3`` if the support account cannot run the agent's).
    """

    enabled: bool = True
    directory: Path | None = None
    fail: FailMode = FailMode.CLOSED
    max_age: timedelta = timedelta(days=90)
    max_total: int = 1 << 30
    max_session: int = 64 << 20
    python: Path | None = None
    sftp_server: Path | None = None


@dataclass(frozen=True)
class NotifySettings:
    """Who hears of support logins and logouts (the ``[notify]`` table of agent.toml).

    :param webhook_url: gets each event as a JSON POST (retried with backoff).
    :param command: an argument list run with the event's JSON on stdin (and
        ``TETHER_EVENT`` / ``TETHER_ENGINEER`` / ``TETHER_RECORDING`` in its environment).
    """

    webhook_url: str | None = None
    command: tuple[str, ...] = ()
    timeout: float = 10.0
    attempts: int = 5


_SIZE = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2}
_SIZE |= {"mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE |= {"t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(value: object) -> int:
    """Read a size: a number of bytes, or text like ``"500MB"``, ``"1 GiB"``, ``"64k"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("kmgtib")
        unit = text[len(number) :]
        try:
            amount = float(number)
        except ValueError:
            amount = -1.0
        if unit in _SIZE and math.isfinite(amount) and amount > 0:
            return int(amount * _SIZE[unit])
    raise ValueError(f"{value!r} is not a size (use bytes or e.g. 500MB, 1GiB)")


def _recording(r: _Reader, state_dir: Path) -> RecordingSettings:
    t = r.table_("recording")
    fail = t.text("fail", FailMode.CLOSED.value)
    try:
        fail_mode = FailMode(fail)
    except ValueError:
        raise ConfigError(
            f'{r.path}: recording.fail must be "closed" (refuse unrecorded sessions) or '
            f'"open" (record if possible), not {fail!r}'
        ) from None
    values: dict[str, Any] = {}
    for key, default in (("max_total", "1GiB"), ("max_session", "64MiB")):
        raw = t._get(key, (int, str), default)
        try:
            values[key] = parse_size(raw)
        except ValueError as exc:
            raise ConfigError(f"{r.path}: recording.{key}: {exc}") from None
    try:
        max_age = parse_duration(t.text("max_age", "90d"))
    except Exception as exc:
        raise ConfigError(f"{r.path}: recording.max_age: {exc}") from None
    settings = RecordingSettings(
        enabled=t._get("enabled", bool, True),
        directory=t.path_("dir", None) or state_dir / "recordings",
        fail=fail_mode,
        max_age=max_age,
        python=t.path_("python", None),
        sftp_server=t.path_("sftp_server", None),
        **values,
    )
    t.finish()
    return settings


def _notify(r: _Reader) -> NotifySettings:
    t = r.table_("notify")
    url = t.text("webhook_url", None)
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{r.path}: notify.webhook_url must be an http:// or https:// URL")
    command = tuple(t.strings("command", []))
    if command and not Path(command[0]).is_absolute():
        raise ConfigError(f"{r.path}: notify.command must start with an absolute program path")
    settings = NotifySettings(
        webhook_url=url,
        command=command,
        timeout=t.number("timeout", 10.0, high=300.0),
        attempts=t.integer("attempts", 5, low=1, high=20),
    )
    t.finish()
    return settings


@dataclass(frozen=True)
class WebSettings:
    """The customer's admin web page (the ``[web]`` table of agent.toml).

    :ivar enabled: serve the page from ``tether agent serve``.
    :ivar listen: ``(host, port)``; loopback by default, port 0 lets the OS pick.
    :ivar allowed_clients: addresses / networks that may open the page; empty = any that
        can reach ``listen``. Anyone else gets 403 before anything else happens.
    :ivar admin_password_file: the admin password's argon2 hash (``None``: in the state dir).
    :ivar trusted_proxies: addresses / networks of reverse proxies or carriers in front of
        the page. A client connecting from one is never "the machine itself", and its
        ``X-Forwarded-For`` names the real client (for ``allowed_clients`` and the login
        lockout, which is per client).
    """

    enabled: bool = True
    listen: tuple[str, int] = ("127.0.0.1", 8700)
    allowed_clients: tuple[str, ...] = ()
    admin_password_file: Path | None = None
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings (``/etc/tether/agent.toml``)."""

    path: Path
    serial: str
    vendor_keys: tuple[VerifyKey, ...]
    state_dir: Path = Path("/var/lib/tether")
    run_dir: Path = Path("/run/tether")
    support_account: str = DEFAULT_SUPPORT_ACCOUNT
    #: Ports a customer allows beyond the defaults (e.g. a database): a key may name them.
    extra_ports: tuple[int, ...] = ()
    tether: TetherSettings = field(default_factory=TetherSettings)
    #: The vendor's SSH user CA (one OpenSSH public-key line); needed to open access.
    vendor_ca: str | None = None
    #: The vendor's key that generated support passwords are sealed to.
    vendor_seal_key: SealPublicKey | None = None
    #: Where sshd, its configuration, sudoers and friends live on this machine.
    paths: MachinePaths = field(default_factory=MachinePaths)
    #: sshd's own log file, when it logs to a file rather than the journal or auth.log.
    sshd_log: Path | None = None
    systemd_dir: Path = Path("/etc/systemd/system")
    cron_dir: Path = Path("/etc/cron.d")
    #: Where one-click requests go (HOST:PORT) and that relay's pinned host key.
    request_relay: str | None = None
    request_relay_host_key: str | None = None
    web: WebSettings = field(default_factory=WebSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)

    def __post_init__(self) -> None:
        """Hold the serial in its one canonical form (:func:`~tether.keys.check_serial`)."""
        object.__setattr__(self, "serial", check_serial(self.serial))

    @property
    def recordings_dir(self) -> Path:
        """Where session recordings are kept."""
        return self.recording.directory or self.state_dir / "recordings"

    @property
    def allowed_ports(self) -> tuple[int, ...]:
        return tuple(sorted(set(DEFAULT_PORTS) | set(self.extra_ports)))

    @property
    def machine_key_path(self) -> Path:
        return self.state_dir / "machine_key"

    @property
    def web_password_path(self) -> Path:
        """Where the admin page's password hash lives."""
        return self.web.admin_password_file or self.state_dir / "web-admin.argon2"

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        r = _read(path)
        serial = r.text("serial", _REQUIRED)
        try:
            serial = check_serial(serial)
        except Exception as exc:
            raise ConfigError(f"{path}: serial: {exc}") from None
        extra = r._get("extra_ports", list, None)
        t = r.table_("tether")
        initial = t.number("backoff_initial", 1.0, high=60.0)
        tether = TetherSettings(
            keepalive_interval=t.number("keepalive_interval", 15.0),
            keepalive_count_max=t.integer("keepalive_count_max", 3, low=1, high=100),
            backoff_initial=initial,
            backoff_cap=t.number("backoff_cap", 60.0, low=initial, high=3600.0),
            connect_timeout=t.number("connect_timeout", 20.0),
        )
        t.finish()
        state_dir = r.path_("state_dir", "/var/lib/tether")
        p = r.table_("paths")
        defaults = MachinePaths()
        paths = MachinePaths(
            sshd=p.path_("sshd", str(defaults.sshd)),
            sshd_config=p.path_("sshd_config", str(defaults.sshd_config)),
            sshd_config_d=p.path_("sshd_config_d", str(defaults.sshd_config_d)),
            ssh_dir=p.path_("ssh_dir", str(defaults.ssh_dir)),
            sudoers_d=p.path_("sudoers_d", str(defaults.sudoers_d)),
            state_dir=state_dir,
            sshd_pid_file=p.path_("sshd_pid_file", str(defaults.sshd_pid_file)),
        )
        systemd_dir = p.path_("systemd_dir", "/etc/systemd/system")
        cron_dir = p.path_("cron_dir", "/etc/cron.d")
        p.finish()
        vendor_ca = r.text("vendor_ca", None)
        if vendor_ca is not None and (not vendor_ca.strip() or "\n" in vendor_ca.strip()):
            raise ConfigError(f"{path}: vendor_ca must be one OpenSSH public-key line")
        seal_text = r.text("vendor_seal_key", None)
        try:
            seal_key = SealPublicKey.parse(seal_text) if seal_text else None
        except Exception as exc:
            raise ConfigError(f"{path}: vendor_seal_key: {exc}") from None
        request_relay = r.text("request_relay", None)
        request_fp = r.text("request_relay_host_key", None)
        if (request_relay is None) != (request_fp is None):
            raise ConfigError(f"{path}: request_relay and request_relay_host_key go together")
        if request_relay is not None:
            try:
                parse_address(request_relay, what="request_relay")
            except Exception as exc:
                raise ConfigError(f"{path}: {exc}") from None
        config = cls(
            path=r.path,
            serial=serial,
            vendor_keys=_verify_keys(r, "vendor_keys"),
            state_dir=state_dir,
            run_dir=r.path_("run_dir", "/run/tether"),
            support_account=r.text("support_account", DEFAULT_SUPPORT_ACCOUNT),
            extra_ports=_ports(r, extra),
            tether=tether,
            vendor_ca=vendor_ca.strip() if vendor_ca else None,
            vendor_seal_key=seal_key,
            paths=paths,
            sshd_log=r.path_("sshd_log", None),
            systemd_dir=systemd_dir,
            cron_dir=cron_dir,
            request_relay=request_relay,
            request_relay_host_key=request_fp,
            web=_web_settings(r.table_("web")),
            recording=_recording(r, state_dir),
            notify=_notify(r),
        )
        r.finish()
        return config


def _web_settings(w: _Reader) -> WebSettings:
    enabled = w._get("enabled", bool, True)
    try:
        listen = parse_address(w.text("listen", "127.0.0.1:8700"), what="listen", any_port=True)
        networks = w.strings("allowed_clients", [])
        proxies = w.strings("trusted_proxies", [])
        for text in (*networks, *proxies):
            ipaddress.ip_network(text, strict=False)
    except Exception as exc:
        raise ConfigError(f"{w.path}: [web]: {exc}") from None
    settings = WebSettings(
        enabled=enabled,
        listen=listen,
        allowed_clients=tuple(networks),
        admin_password_file=w.path_("admin_password_file", None),
        trusted_proxies=tuple(proxies),
    )
    w.finish()
    return settings


def _ports(r: _Reader, values: list[int] | None) -> tuple[int, ...]:
    if not values:
        return ()
    try:
        return check_ports(values)
    except Exception as exc:
        raise ConfigError(f"{r.path}: extra_ports: {exc}") from None


@dataclass(frozen=True)
class RelayConfig:
    """A relay's settings (``relay.toml``).

    Revocations reach a relay two ways. On PostgreSQL the relay ``LISTEN`` s for the
    store's ``NOTIFY`` and applies a revocation as soon as it is written; it then
    re-reads the revocation feed only every ``listen_poll_interval`` seconds (default
    5), as a safety net. On SQLite, and on PostgreSQL while the listening connection
    is down, it re-reads every ``poll_interval`` seconds (default 0.25), which bounds
    how late a revocation can be applied. After the listening connection comes back
    the relay re-reads at once, so nothing revoked in between is missed.
    """

    path: Path
    listen: tuple[str, int]
    host_key: Path
    database: str
    vendor_keys: tuple[VerifyKey, ...]
    engineer_ca: Path
    relay_id: str = "relay-1"
    #: The address engineers and other relays reach this relay at (goes into keys).
    advertise: str = ""
    login_timeout: float = 30.0
    max_unauthenticated: int = 200
    #: Unauthenticated connections one source address may hold at once.
    max_unauthenticated_per_source: int = 20
    #: One-click requests one source address may make per hour.
    requests_per_source_per_hour: int = 10
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    #: How often the relay looks for revocations without a live LISTEN (seconds).
    poll_interval: float = 0.25
    #: How often it looks anyway while LISTEN/NOTIFY (PostgreSQL) pushes them (seconds).
    listen_poll_interval: float = 5.0
    #: How long an agent has after logging in to present its tether key.
    register_timeout: float = 15.0
    #: Tethers per second this relay asks its agents to come back at when it shuts down
    #: (each waits a random time within tethers / rate seconds).
    reconnect_rate: float = 300.0
    #: Seconds between this relay's heartbeats to the fleet's store.
    heartbeat_interval: float = 5.0
    #: A relay silent this long is dead: the others sweep its tethers (SPEC: ≤ 30 s).
    dead_after: float = 15.0
    #: Read a PROXY protocol v2 header (HAProxy ``send-proxy-v2``) before SSH on
    #: ``listen``; connections from outside :attr:`trusted_proxies` are then refused.
    proxy_protocol: bool = False
    #: Addresses / networks of the load balancers allowed to send PROXY headers.
    trusted_proxies: tuple[str, ...] = ()
    #: ``(host, port)`` of the HTTP health endpoint (``/healthz``, ``/readyz``) for the
    #: load balancer's checks; ``None``: off. Keep it on an internal address.
    health_listen: tuple[str, int] | None = None

    @classmethod
    def load(cls, path: Path) -> RelayConfig:
        r = _read(path)
        try:
            listen = parse_address(r.text("listen", "0.0.0.0:2222"), what="listen address")
        except Exception as exc:
            raise ConfigError(f"{path}: listen: {exc}") from None
        proxy_protocol = r._get("proxy_protocol", bool, False)
        proxies = r.strings("trusted_proxies", [])
        try:
            for text in proxies:
                ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{path}: trusted_proxies: {exc}") from None
        if proxy_protocol and not proxies:
            raise ConfigError(
                f"{path}: proxy_protocol = true needs trusted_proxies (the load balancers' "
                'addresses, e.g. ["10.0.0.5/32"]): a PROXY header is accepted only from them'
            )
        health_text = r.text("health_listen", "")
        try:
            health = (
                parse_address(health_text, what="health address", any_port=True)
                if health_text
                else None
            )
        except Exception as exc:
            raise ConfigError(f"{path}: health_listen: {exc}") from None
        config = cls(
            path=r.path,
            listen=listen,
            host_key=r.path_("host_key", _REQUIRED),
            database=r.text("database", _REQUIRED),
            vendor_keys=_verify_keys(r, "vendor_keys"),
            engineer_ca=r.path_("engineer_ca", _REQUIRED),
            relay_id=r.text("relay_id", "relay-1"),
            advertise=r.text("advertise", ""),
            login_timeout=r.number("login_timeout", 30.0),
            max_unauthenticated=r.integer("max_unauthenticated", 200, low=1, high=100_000),
            max_unauthenticated_per_source=r.integer(
                "max_unauthenticated_per_source", 20, low=1, high=100_000
            ),
            requests_per_source_per_hour=r.integer(
                "requests_per_source_per_hour", 10, low=1, high=100_000
            ),
            keepalive_interval=r.number("keepalive_interval", 15.0),
            keepalive_count_max=r.integer("keepalive_count_max", 3, low=1, high=100),
            poll_interval=r.number("poll_interval", 0.25),
            listen_poll_interval=r.number("listen_poll_interval", 5.0),
            register_timeout=r.number("register_timeout", 15.0),
            reconnect_rate=r.number("reconnect_rate", 300.0, low=1.0, high=100_000.0),
            heartbeat_interval=r.number("heartbeat_interval", 5.0, low=0.1, high=60.0),
            dead_after=r.number("dead_after", 15.0, low=0.5, high=300.0),
            proxy_protocol=proxy_protocol,
            trusted_proxies=tuple(proxies),
            health_listen=health,
        )
        r.finish()
        if config.dead_after < 2 * config.heartbeat_interval:
            raise ConfigError(
                f"{path}: dead_after ({config.dead_after:g} s) must be at least twice "
                f"heartbeat_interval ({config.heartbeat_interval:g} s), or a live relay "
                "is taken for dead after one late heartbeat"
            )
        return config


class RequestPolicy(StrEnum):
    """What the vendor service does with a one-click support request."""

    AUTO = "auto"
    """Issue a key at once to a machine already bound to its serial; others wait."""
    HOLD = "hold"
    """Keep the case pending until an engineer approves or denies it (the default)."""


#: Longest lifetime a one-click (request) key may be given: that of any tether key.
MAX_REQUEST_KEY_LIFETIME = timedelta(weeks=12)


@dataclass(frozen=True)
class VendorConfig:
    """The vendor service's settings (``vendor.toml`` in the vendor data directory)."""

    path: Path
    vendor: str
    data_dir: Path
    database: str
    relay: str
    support_account: str = DEFAULT_SUPPORT_ACCOUNT
    default_ports: tuple[int, ...] = DEFAULT_PORTS
    #: ``auto``: one-click requests get a key at once; ``hold``: an engineer decides.
    request_policy: str = RequestPolicy.HOLD
    #: Lifetime of keys issued on one-click requests (``request_key_lifetime = "21d"``).
    request_key_lifetime: timedelta = timedelta(days=21)
    #: Reverse proxies in front of the vendor service (addresses / networks): their
    #: ``X-Forwarded-For`` names the client, which the login limit counts per source.
    trusted_proxies: tuple[str, ...] = ()

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "tether_signing_key.pem"

    @property
    def engineer_ca_path(self) -> Path:
        return self.data_dir / "engineer_ca"

    @property
    def seal_key_path(self) -> Path:
        return self.data_dir / "password_seal_key.pem"

    @property
    def relay_host_key_path(self) -> Path:
        return self.data_dir / "relay_host_key"

    @classmethod
    def load(cls, path: Path) -> VendorConfig:
        r = _read(path)
        relay = r.text("relay", _REQUIRED)
        try:
            parse_address(relay, what="relay address")
        except Exception as exc:
            raise ConfigError(f"{path}: relay: {exc}") from None
        ports = r._get("default_ports", list, list(DEFAULT_PORTS))
        try:
            default_ports = check_ports(ports)
        except Exception as exc:
            raise ConfigError(f"{path}: default_ports: {exc}") from None
        policy = r.text("request_policy", RequestPolicy.HOLD.value)
        try:
            request_policy = RequestPolicy(policy)
        except ValueError:
            raise ConfigError(
                f'{path}: request_policy must be "auto" (issue keys at once) or "hold" '
                f"(an engineer approves each request), not {policy!r}"
            ) from None
        lifetime_text = r.text("request_key_lifetime", "21d")
        try:
            lifetime = parse_duration(lifetime_text)
        except Exception as exc:
            raise ConfigError(f"{path}: request_key_lifetime: {exc}") from None
        if lifetime > MAX_REQUEST_KEY_LIFETIME:
            raise ConfigError(
                f"{path}: request_key_lifetime may be at most 12 weeks (84d), not {lifetime_text!r}"
            )
        proxies = r.strings("trusted_proxies", [])
        try:
            for text in proxies:
                ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{path}: trusted_proxies: {exc}") from None
        config = cls(
            path=r.path,
            vendor=r.text("vendor", _REQUIRED),
            data_dir=r.path_("data_dir", "."),
            database=r.text("database", _REQUIRED),
            relay=relay,
            support_account=r.text("support_account", DEFAULT_SUPPORT_ACCOUNT),
            default_ports=default_ports,
            request_policy=request_policy,
            request_key_lifetime=lifetime,
            trusted_proxies=tuple(proxies),
        )
        r.finish()
        return config


def toml_string(value: str) -> str:
    """Quote ``value`` as a TOML basic string (control characters escaped)."""
    # JSON's string escapes are all valid TOML escapes; TOML also wants DEL escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")

"""The agent's ``/etc/tether/agent.toml``: tether, recording, notification and page settings."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from tether.agent.machine.effects import MachinePaths
from tether.agent.network import NetworkSettings, TransportKind, parse_proxy_url
from tether.config.common import (
    _REQUIRED,
    _read,
    _Reader,
    _verify_keys,
)
from tether.durations import parse_duration
from tether.errors import ConfigError
from tether.keys import VerifyKey, check_ports, check_serial, parse_address
from tether.seal import SealPublicKey
from tether.wire import DEFAULT_PORTS, DEFAULT_SUPPORT_ACCOUNT


@dataclass(frozen=True)
class TetherSettings:
    """How the agent holds its tether (the ``[tether]`` table of agent.toml)."""

    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    backoff_initial: float = 1.0
    backoff_cap: float = 60.0
    connect_timeout: float = 20.0
    #: After a drop nobody announced (a relay killed, a network cut), the first return
    #: waits a random time within this many seconds, so that a dead relay's agents do
    #: not all meet the others in the same second. An announced drop names its own.
    reconnect_spread: float = 10.0
    #: How the relay is reached (``[network]``: transports, proxy, its credentials).
    network: NetworkSettings = field(default_factory=NetworkSettings)


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


def _metrics_textfile(r: _Reader) -> Path | None:
    t = r.table_("metrics")
    path: Path | None = t.path_("textfile", None)
    t.finish()
    if path is not None and path.suffix != ".prom":
        raise ConfigError(
            f"{r.path}: metrics.textfile must end in .prom (node_exporter's textfile "
            f"collector reads only those), not {path.name!r}"
        )
    return path


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
    #: ``[metrics] textfile``: a ``*.prom`` file the agent keeps current for
    #: node_exporter's textfile collector; ``None``: none (agents open no listener).
    metrics_textfile: Path | None = None

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
            reconnect_spread=t.number("reconnect_spread", 10.0, low=0.0, high=600.0),
            network=_network(r),
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
            metrics_textfile=_metrics_textfile(r),
        )
        r.finish()
        return config


def _network(r: _Reader) -> NetworkSettings:
    """``[network]``: the ways to the relay, in order, and the HTTP proxy."""
    n = r.table_("network")
    names = n.strings("transports", [k.value for k in TransportKind])
    kinds: list[TransportKind] = []
    for name in names:
        try:
            kinds.append(TransportKind(name))
        except ValueError:
            raise ConfigError(
                f"{r.path}: network.transports: unknown transport {name!r} (use "
                f"{', '.join(k.value for k in TransportKind)})"
            ) from None
    if not kinds or len(set(kinds)) != len(kinds):
        raise ConfigError(f"{r.path}: network.transports must name each transport at most once")
    proxy = n.text("proxy", None)
    if proxy is not None:
        _, _, userinfo = parse_proxy_url(proxy, where=f"{r.path}: network.proxy")
        if userinfo is not None:
            # agent.toml is readable by many; a password in it would leak.
            raise ConfigError(
                f"{r.path}: network.proxy must not hold a user or password: put "
                "user:password in a file only root can read and name it in "
                "network.proxy_credentials"
            )
    settings = NetworkSettings(
        transports=tuple(kinds),
        proxy=proxy,
        proxy_credentials=n.path_("proxy_credentials", None),
    )
    n.finish()
    return settings


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

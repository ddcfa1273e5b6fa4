"""The engineer's state directory: settings, token, key, certificate, known hosts.

Everything ``tether login`` learns lives in one directory, ``~/.config/tether`` by
default (``TETHER_ENGINEER_DIR`` overrides it), kept at mode 0700:

=========================  ======  ==================================================
file                       mode    holds
=========================  ======  ==================================================
``engineer.toml``          0644    vendor URL, engineer name, relay, support account
``token``                  0600    the vendor service's bearer token (a secret)
``id_ed25519``             0600    the engineer's private key (generated if needed)
``id_ed25519-cert.pub``    0644    the certificate the vendor CA signed for it
``known_hosts``            0644    the relay's host key, ``[host]:port type base64``
``known_machines``         (ssh)   machines' host keys, written by ssh (accept-new)
``ssh_config``             0600    written by ``tether ssh-config --write``
=========================  ======  ==================================================

Every write is atomic (a temporary file renamed over the old one) and sets the mode
explicitly, whatever the umask. Nothing here ever prints or logs the token.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
)

from tether.clock import Clock
from tether.config import toml_string
from tether.durations import format_duration
from tether.errors import ConfigError, NotReady, Refused
from tether.keys import format_address, parse_address

#: Environment variable naming the state directory.
ENV_DIR = "TETHER_ENGINEER_DIR"
#: Where the state lives when ``TETHER_ENGINEER_DIR`` is not set.
DEFAULT_DIR = "~/.config/tether"

SETTINGS_FILE = "engineer.toml"
TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret
DEFAULT_KEY_FILE = "id_ed25519"
KNOWN_HOSTS_FILE = "known_hosts"
KNOWN_MACHINES_FILE = "known_machines"
SSH_CONFIG_FILE = "ssh_config"

DIR_MODE = 0o700
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644

#: A certificate this close to its end counts as expired: a command would not finish.
EXPIRY_MARGIN = timedelta(minutes=1)

#: The login command when no vendor URL is known yet.
LOGIN_HINT = "tether login --vendor https://VENDOR"

_SETTINGS_KEYS = frozenset(
    {"vendor", "engineer", "relay", "support_account", "key", "certificate", "token_expires_at"}
)
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The state directory: ``$TETHER_ENGINEER_DIR`` or ``~/.config/tether``."""
    env = os.environ if environ is None else environ
    chosen = env.get(ENV_DIR) or DEFAULT_DIR
    return Path(chosen).expanduser().absolute()


def login_command(vendor: str | None) -> str:
    """The command that logs in again, with the vendor URL filled in when known."""
    return f"tether login --vendor {vendor}" if vendor else LOGIN_HINT


def format_utc(moment: datetime) -> str:
    """``HH:MM UTC`` (what people read at a glance)."""
    return f"{moment.astimezone(UTC):%H:%M} UTC"


@dataclass(frozen=True)
class Settings:
    """What ``tether login`` recorded (``engineer.toml``); holds no secret.

    :param vendor: the vendor service's base URL.
    :param engineer: the engineer's name (the relay login and certificate key id).
    :param relay_host: the relay engineers connect to.
    :param relay_port: its SSH port.
    :param support_account: the account engineers log in to on a machine.
    :param key: the engineer's private key file.
    :param certificate: the certificate file for that key.
    :param token_expires_at: when the vendor service's token stops working, if known.
    """

    vendor: str
    engineer: str
    relay_host: str
    relay_port: int
    support_account: str
    key: Path
    certificate: Path
    token_expires_at: datetime | None = None

    @property
    def relay(self) -> str:
        """``HOST:PORT`` of the relay."""
        return format_address(self.relay_host, self.relay_port)

    def to_toml(self) -> str:
        """The settings as the text of ``engineer.toml``."""
        lines = [
            "# Tether engineer settings, written by `tether login`. No secrets here.",
            f"vendor = {toml_string(self.vendor)}",
            f"engineer = {toml_string(self.engineer)}",
            f"relay = {toml_string(self.relay)}",
            f"support_account = {toml_string(self.support_account)}",
            f"key = {toml_string(str(self.key))}",
            f"certificate = {toml_string(str(self.certificate))}",
        ]
        if self.token_expires_at is not None:
            lines.append(
                f"token_expires_at = {toml_string(self.token_expires_at.astimezone(UTC).isoformat())}"
            )
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, path: Path, text: str) -> Settings:
        """Read ``engineer.toml``; raise :class:`ConfigError` naming what is wrong."""
        damaged = f"{path} is damaged"
        again = "run `tether login` again"
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{damaged} ({exc}): {again}") from None
        unknown = sorted(set(data) - _SETTINGS_KEYS)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        values: dict[str, str] = {}
        for key in sorted(_SETTINGS_KEYS):
            value = data.get(key)
            if value is None and key == "token_expires_at":
                continue
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{damaged}: {key} is missing or not a string; {again}")
            values[key] = value
        host, port = parse_address(values["relay"], what=f"relay in {path}")
        if not _ACCOUNT.fullmatch(values["support_account"]):
            raise ConfigError(f"{damaged}: support_account is not an account name; {again}")
        expires: datetime | None = None
        if "token_expires_at" in values:
            try:
                expires = datetime.fromisoformat(values["token_expires_at"])
            except ValueError:
                raise ConfigError(f"{damaged}: token_expires_at is not a time; {again}") from None
        return cls(
            vendor=values["vendor"],
            engineer=values["engineer"],
            relay_host=host,
            relay_port=port,
            support_account=values["support_account"],
            key=Path(values["key"]),
            certificate=Path(values["certificate"]),
            token_expires_at=expires,
        )


@dataclass(frozen=True)
class CertificateInfo:
    """The facts of a stored engineer certificate a command needs.

    :param valid_after: start of validity (UTC).
    :param valid_before: end of validity (UTC).
    :param principals: names the certificate is valid for.
    :param key_id: the certificate's key id (the engineer's name).
    """

    valid_after: datetime
    valid_before: datetime
    principals: tuple[str, ...]
    key_id: str

    @classmethod
    def parse(cls, data: bytes, *, where: str) -> CertificateInfo:
        """Read an OpenSSH user certificate line; raise :class:`ConfigError` if it is not one."""
        try:
            cert = load_ssh_public_identity(data.strip())
        except (ValueError, TypeError):
            cert = None
        if not isinstance(cert, SSHCertificate) or cert.type != SSHCertificateType.USER:
            raise ConfigError(f"{where} is not an OpenSSH user certificate")
        return cls(
            valid_after=datetime.fromtimestamp(min(cert.valid_after, 2**40), UTC),
            valid_before=datetime.fromtimestamp(min(cert.valid_before, 2**40), UTC),
            principals=tuple(p.decode(errors="replace") for p in cert.valid_principals),
            key_id=cert.key_id.decode(errors="replace"),
        )


def check_certificate(info: CertificateInfo, now: datetime, *, vendor: str | None) -> None:
    """Refuse (exit 1) a certificate that has expired, expires within a minute, or is not valid yet.

    The message says when it ended and the exact command that gets a new one.
    """
    again = f"run `{login_command(vendor)}` again"
    end = info.valid_before
    if now >= end:
        raise CertificateExpired(
            f"your certificate expired at {format_utc(end)} ({end:%Y-%m-%d}, "
            f"{format_duration(now - end)} ago) — {again}"
        )
    if end - now <= EXPIRY_MARGIN:
        raise CertificateExpired(
            f"your certificate expires at {format_utc(end)}, in {format_duration(end - now)} — "
            f"{again}"
        )
    if info.valid_after > now + EXPIRY_MARGIN:
        raise CertificateExpired(
            f"your certificate is not valid before {format_utc(info.valid_after)} "
            f"({info.valid_after:%Y-%m-%d}): check this computer's clock, then {again}"
        )


class CertificateExpired(Refused):
    """The stored certificate is past (or within a minute of) its end (exit 1)."""


class NotLoggedIn(NotReady):
    """No login is recorded in the state directory (exit 1)."""


@dataclass(frozen=True)
class Session:
    """A usable login: settings plus a certificate checked against the clock."""

    state: EngineerState
    settings: Settings
    certificate: CertificateInfo

    def token(self) -> str:
        """The bearer token (a secret: never print or log it)."""
        return self.state.load_token(vendor=self.settings.vendor)


class EngineerState:
    """The state directory and its files; creates it with mode 0700 on first write.

    :param root: the directory (see :func:`default_state_dir`).
    """

    def __init__(self, root: Path) -> None:
        """Use ``root``; nothing is created until the first write."""
        self.root = root.expanduser().absolute()

    # --- paths ---------------------------------------------------------------------

    @property
    def settings_path(self) -> Path:
        """``engineer.toml``."""
        return self.root / SETTINGS_FILE

    @property
    def token_path(self) -> Path:
        """``token`` (0600)."""
        return self.root / TOKEN_FILE

    @property
    def default_key_path(self) -> Path:
        """``id_ed25519``: the key generated for an engineer who brought none."""
        return self.root / DEFAULT_KEY_FILE

    @property
    def known_hosts_path(self) -> Path:
        """``known_hosts``: the relay's host key only."""
        return self.root / KNOWN_HOSTS_FILE

    @property
    def known_machines_path(self) -> Path:
        """``known_machines``: machines' host keys, learnt by ssh on first connection."""
        return self.root / KNOWN_MACHINES_FILE

    @property
    def ssh_config_path(self) -> Path:
        """``ssh_config``: what ``tether ssh-config --write`` writes."""
        return self.root / SSH_CONFIG_FILE

    def certificate_path_for(self, key: Path) -> Path:
        """Where the certificate for ``key`` is kept: ``<state>/<key name>-cert.pub``."""
        return self.root / f"{key.name}-cert.pub"

    # --- writing -------------------------------------------------------------------

    def ensure_dir(self) -> None:
        """Create the directory (0700), or tighten an existing one to 0700."""
        self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        if stat.S_IMODE(self.root.stat().st_mode) != DIR_MODE:
            self.root.chmod(DIR_MODE)

    def write(self, path: Path, data: bytes, mode: int) -> None:
        """Atomically replace ``path`` with ``data``, with exactly ``mode``."""
        self.ensure_dir()
        write_atomic(path, data, mode)

    def save_settings(self, settings: Settings) -> None:
        """Write ``engineer.toml``."""
        self.write(self.settings_path, settings.to_toml().encode(), PUBLIC_MODE)

    def save_token(self, token: str) -> None:
        """Write the bearer token (0600)."""
        self.write(self.token_path, token.encode() + b"\n", SECRET_MODE)

    def save_known_hosts(self, host: str, port: int, host_key: str) -> None:
        """Write the relay's host key in OpenSSH ``known_hosts`` form.

        OpenSSH looks up a host on port 22 by its bare name and any other port as
        ``[host]:port``; asyncssh does the same.
        """
        parts = host_key.split()
        name = host if port == 22 else f"[{host}]:{port}"
        self.write(self.known_hosts_path, f"{name} {parts[0]} {parts[1]}\n".encode(), PUBLIC_MODE)

    # --- reading -------------------------------------------------------------------

    def load_settings(self) -> Settings:
        """Read ``engineer.toml``; raise :class:`NotLoggedIn` if there is none."""
        try:
            text = self.settings_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotLoggedIn(
                f"not logged in (nothing in {self.root}): run `{LOGIN_HINT}` "
                "(your vendor admin knows the URL)"
            ) from None
        except OSError as exc:
            raise NotReady(f"cannot read {self.settings_path}: {exc.strerror}") from None
        return Settings.from_toml(self.settings_path, text)

    def load_token(self, *, vendor: str | None) -> str:
        """Read the bearer token; raise :class:`NotLoggedIn` if there is none."""
        try:
            token = self.token_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            token = ""
        except OSError as exc:
            raise NotReady(f"cannot read {self.token_path}: {exc.strerror}") from None
        if not token:
            raise NotLoggedIn(f"not logged in to the vendor service: run `{login_command(vendor)}`")
        return token

    def load_certificate(self, settings: Settings) -> CertificateInfo:
        """Read the certificate named in ``settings``."""
        try:
            data = settings.certificate.read_bytes()
        except FileNotFoundError:
            raise NotLoggedIn(
                f"no certificate at {settings.certificate}: run `{login_command(settings.vendor)}`"
            ) from None
        except OSError as exc:
            raise NotReady(f"cannot read {settings.certificate}: {exc.strerror}") from None
        return CertificateInfo.parse(data, where=str(settings.certificate))

    def session(self, clock: Clock) -> Session:
        """The current login, refused if absent or if its certificate is (nearly) expired."""
        settings = self.load_settings()
        info = self.load_certificate(settings)
        check_certificate(info, clock.now(), vendor=settings.vendor)
        return Session(self, settings, info)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary file next to ``path``, set ``mode``, rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""The OpenSSH client configuration that makes ``ssh SERIAL`` go through the relay (pure).

:func:`render_ssh_config` writes one ``Host tether-relay`` block (the relay, logged in
to as the engineer, its host key pinned) and one block per machine serial (the
support account, reached with ``ProxyJump tether-relay``, its host key learnt on
first use). Stock ``ssh``, ``scp`` and ``sftp`` read it as it is; nothing is wrapped.

:func:`install_include` puts ``Include <file>`` at the top of ``~/.ssh/config``
(where it applies to every host), once, after a backup.
"""

from __future__ import annotations

import re
import shlex
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tether.engineer.state import SECRET_MODE, Session, write_atomic
from tether.errors import BadInput
from tether.keys import check_serial

#: The Host alias of the relay in the generated configuration.
RELAY_ALIAS = "tether-relay"

_NEEDS_QUOTES = re.compile(r"[\s\"'\\#]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WORD = re.compile(r"^[A-Za-z0-9._-]+$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9.:-]+$")


def ssh_path(path: Path | str) -> str:
    """Quote a path as an ``ssh_config`` argument.

    ``%`` is doubled (ssh expands ``%`` tokens in these options); a path with white
    space, quotes, ``\\`` or ``#`` is put in double quotes with ``"`` and ``\\``
    escaped. A path with a control character cannot be written and is refused.
    """
    return _quote(str(path).replace("%", "%%"), str(path))


def _quote(text: str, shown: str) -> str:
    """Double-quote ``text`` when ssh would split or misread it; refuse control characters."""
    if _CONTROL.search(text):
        raise BadInput(f"cannot use the path {shown!r} in an ssh configuration (control character)")
    if not _NEEDS_QUOTES.search(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class SshConfigInput:
    """What the configuration is made of (from ``engineer.toml`` and the state directory).

    :param engineer: the engineer's name (the relay login).
    :param relay_host: the relay's host name or address.
    :param relay_port: its SSH port.
    :param support_account: the account on machines.
    :param identity_file: the engineer's private key.
    :param certificate_file: its certificate.
    :param known_hosts: the file holding the relay's host key.
    :param known_machines: the file ssh fills with machines' host keys.
    :param vendor: the vendor service URL (named in the header comment).
    """

    engineer: str
    relay_host: str
    relay_port: int
    support_account: str
    identity_file: Path
    certificate_file: Path
    known_hosts: Path
    known_machines: Path
    vendor: str = ""


def config_input(session: Session) -> SshConfigInput:
    """The configuration's ingredients for a logged-in engineer."""
    settings, state = session.settings, session.state
    return SshConfigInput(
        engineer=settings.engineer,
        relay_host=settings.relay_host,
        relay_port=settings.relay_port,
        support_account=settings.support_account,
        identity_file=settings.key,
        certificate_file=settings.certificate,
        known_hosts=state.known_hosts_path,
        known_machines=state.known_machines_path,
        vendor=settings.vendor,
    )


def _word(value: str, what: str, pattern: re.Pattern[str] = _WORD) -> str:
    """``value`` if it is one safe word for the configuration, else :class:`BadInput`."""
    if not pattern.fullmatch(value):
        raise BadInput(f"cannot use {what} {value!r} in an ssh configuration")
    return value


def unique_serials(serials: Iterable[str]) -> list[str]:
    """Check each serial and drop repeats (case-insensitive: ssh host names are); sorted."""
    seen: dict[str, str] = {}
    for serial in serials:
        seen.setdefault(check_serial(serial).lower(), serial)
    return [seen[k] for k in sorted(seen)]


def render_ssh_config(cfg: SshConfigInput, serials: Iterable[str]) -> str:
    """The OpenSSH configuration for ``cfg`` and the machines ``serials``.

    Every value is checked or quoted so that nothing from the vendor service can add
    a line of its own; raises :class:`BadInput` for a value that cannot be written.
    """
    engineer = _word(cfg.engineer, "engineer name")
    account = _word(cfg.support_account, "support account")
    relay_host = _word(cfg.relay_host, "relay host", _HOSTNAME)
    if not 1 <= cfg.relay_port <= 65535:
        raise BadInput(f"cannot use relay port {cfg.relay_port} in an ssh configuration")
    identity = [
        f"    IdentityFile {ssh_path(cfg.identity_file)}",
        f"    CertificateFile {ssh_path(cfg.certificate_file)}",
        "    IdentitiesOnly yes",
    ]
    lines = [
        f"# Tether: engineer {engineer}"
        + (f", vendor service {_CONTROL.sub('?', cfg.vendor)}" if cfg.vendor else "")
        + ".",
        "# Written by `tether ssh-config`; run it again to add machines. Then: ssh SERIAL",
        "",
        f"Host {RELAY_ALIAS}",
        f"    HostName {relay_host}",
        f"    Port {cfg.relay_port}",
        f"    User {engineer}",
        f"    UserKnownHostsFile {ssh_path(cfg.known_hosts)}",
        "    StrictHostKeyChecking yes",
        *identity,
    ]
    for serial in unique_serials(serials):
        names = serial if serial == serial.lower() else f"{serial} {serial.lower()}"
        lines += [
            "",
            f"Host {names}",
            f"    HostName {serial}",
            f"    User {account}",
            f"    ProxyJump {RELAY_ALIAS}",
            f"    UserKnownHostsFile {ssh_path(cfg.known_machines)}",
            "    StrictHostKeyChecking accept-new",
            *identity,
        ]
    return "\n".join(lines) + "\n"


# --- ~/.ssh/config ------------------------------------------------------------------


def include_argument(target: Path, home: Path) -> str:
    """How ``Include`` names ``target``: ``~/…`` under the home directory, else absolute."""
    try:
        text = f"~/{target.relative_to(home)}"
    except ValueError:
        text = str(target)
    return _quote(text, text)  # Include expands ~ and globs, not % tokens


def _includes(line: str, target: Path, home: Path) -> bool:
    """Whether an ``ssh_config`` line is an ``Include`` naming ``target``."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return False
    if len(words) < 2 or words[0].lower() != "include":
        return False
    for name in words[1:]:
        if name.startswith("~/"):
            name = str(home / name[2:])
        elif not name.startswith("/"):
            name = str(home / ".ssh" / name)
        if Path(name) == target:
            return True
    return False


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install_include` did.

    :param config: the ``~/.ssh/config`` file.
    :param line: the ``Include`` line.
    :param changed: whether the file was changed (``False``: it was already there).
    :param backup: the copy of the previous file, if there was one and it changed.
    """

    config: Path
    line: str
    changed: bool
    backup: Path | None


def install_include(target: Path, *, home: Path, now: datetime) -> InstallResult:
    """Add ``Include target`` at the top of ``home/.ssh/config``, once.

    Idempotent: a file that already includes ``target`` is left untouched. Otherwise
    an existing file is first copied to ``config.tether-backup-<UTC time>`` and keeps
    its mode; a new one is created 0600 (in a 0700 ``~/.ssh``). The line goes first
    because an ``Include`` after a ``Host`` line would only apply to that host.
    """
    ssh_dir = home / ".ssh"
    config = ssh_dir / "config"
    if config.is_symlink():  # a dotfile manager's link: change the file it points to
        config = config.resolve()
    line = f"Include {include_argument(target, home)}"
    try:
        old = config.read_text(encoding="utf-8")
        mode = stat.S_IMODE(config.stat().st_mode)
    except FileNotFoundError:
        old, mode = None, SECRET_MODE
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {config}: {exc}") from None
    if old is not None and any(_includes(x, target, home) for x in old.splitlines()):
        return InstallResult(config, line, changed=False, backup=None)
    backup = None
    if old is None:
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        backup = ssh_dir / f"config.tether-backup-{now.astimezone(UTC):%Y%m%d-%H%M%S}"
        shutil.copy2(config, backup)
    header = (
        f"# Added by `tether ssh-config --install`: machines reached through the relay.\n{line}\n"
    )
    text = header if not old else f"{header}\n{old}"
    write_atomic(config, text.encode(), mode)
    return InstallResult(config, line, changed=True, backup=backup)

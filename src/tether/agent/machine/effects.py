"""What support access changes on a machine, as a contract (no I/O here).

Every side effect on the customer's system — the support account, its sudoers
drop-in, the sshd drop-in (or managed block) and CA files, validating and reloading
sshd, killing sessions — goes through one implementation of :class:`Machine`
(:class:`tether.agent.machine.system.SystemMachine`). The access state machine only decides
*when*; this contract says *what*, so every effect is listed in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from tether.agent.machine.limits import Limits
from tether.errors import Refused

#: GECOS comment that marks an account as Tether's own; any other account of the
#: same name belongs to the customer and is never touched.
ACCOUNT_COMMENT = "Tether support access"
#: Lines that delimit Tether's block when sshd_config has no drop-in directory.
BLOCK_BEGIN = "# BEGIN tether support access (managed by tether; do not edit)"
BLOCK_END = "# END tether support access"


class MachineError(Refused):
    """A change to the machine failed and was rolled back; the message says why."""


class MachineBadInput(MachineError):
    """The grant itself is invalid (account name, CA line, source address): exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class MachinePaths:
    """Where things live; every path overridable so tests and the demo use a sandbox."""

    sshd: Path = Path("/usr/sbin/sshd")
    sshd_config: Path = Path("/etc/ssh/sshd_config")
    sshd_config_d: Path = Path("/etc/ssh/sshd_config.d")
    #: Tether's CA key and principals files (owned by root, mode 0644 / 0755 dir).
    ssh_dir: Path = Path("/etc/ssh/tether")
    sudoers_d: Path = Path("/etc/sudoers.d")
    #: Where removed support homes are archived (tar.gz) and sshd_config backups kept.
    state_dir: Path = Path("/var/lib/tether")
    sshd_pid_file: Path = Path("/run/sshd.pid")
    drop_in_name: str = "tether.conf"

    @property
    def drop_in(self) -> Path:
        return self.sshd_config_d / self.drop_in_name

    @property
    def archive_dir(self) -> Path:
        return self.state_dir / "archive"

    @property
    def consent_dir(self) -> Path:
        """The customer's admit/refuse decisions: root's, readable by the recorder."""
        return self.state_dir / "consent"


@dataclass(frozen=True)
class RecorderSpec:
    """How sshd records the support account's sessions (its ``ForceCommand``).

    :param command: the recorder's command line (no quotes or blanks inside a word:
        sshd hands it to the account's shell as it stands).
    :param directory: the recordings directory; prepared by :meth:`Machine.open`
        (root-owned, the account's group may only add files: mode 1730).
    :param fail_open: run a session unrecorded when recording cannot start
        (otherwise the session is refused).
    :param library: where :meth:`Machine.open` puts a copy of Tether's code for the
        recorder to import (``None``: the installed package is readable by the account).
    """

    command: str
    directory: Path
    fail_open: bool = False
    library: Path | None = None


@dataclass(frozen=True)
class SupportGrant:
    """What opening access puts in place.

    :param account: the support account's name (e.g. ``tether-support``).
    :param vendor_ca: the vendor's SSH user CA, one OpenSSH public-key line.
    :param expires_at: when access ends (timezone-aware); the account expires on the
        day after its UTC date. None only for ``--no-expire``.
    :param allow_from: source addresses/CIDRs sshd accepts the CA's certificates
        from. Tether mode: ``("127.0.0.1", "::1")`` (engineers arrive through the
        agent). Direct mode: the customer's ``--from`` list, or ``()`` for anywhere.
    :param password: the account's password in clear (set through stdin, never an
        argument), or None for an account without a usable password.
    :param recorder: record every session of the account (``ForceCommand``), or None.
    :param limits: what the grant allows (:mod:`~tether.agent.machine.limits`); limits
        other than sudo need ``recorder``.
    """

    account: str
    vendor_ca: str
    expires_at: datetime | None
    allow_from: tuple[str, ...] = ()
    password: str | None = field(default=None, repr=False)
    recorder: RecorderSpec | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class CloseReport:
    """What closing found and did (for the audit log and the CLI)."""

    sessions_killed: int = 0
    account_removed: bool = False
    home_archive: Path | None = None
    sshd_reloaded: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MachineFacts:
    """What ``tether access check`` needs to know about the machine."""

    sshd_present: bool
    sshd_config_valid: bool
    sshd_error: str | None
    drop_in_included: bool
    can_add_block: bool
    systemd: bool
    cron: bool
    account_conflict: str | None


class Machine(Protocol):
    """The side effects of support access. Every method is idempotent."""

    def open(self, grant: SupportGrant) -> None:
        """Create the account, sudoers drop-in, CA files and sshd config; reload sshd.

        Validates (``visudo -c``, ``sshd -t``) before anything goes live and checks
        that sshd's effective configuration for other users is unchanged; on any
        failure undoes what this call did and raises :class:`MachineError`.
        """
        ...

    def close(self, account: str) -> CloseReport:
        """Kill the account's sessions, remove everything :meth:`open` added, reload.

        Safe on half-applied state and when nothing is there. Afterwards sshd's
        configuration files are byte-identical to before the first :meth:`open` —
        unless an admin edited sshd_config meanwhile: then only Tether's block is
        removed, and the report's notes say so.
        """
        ...

    def kill_sessions(self, account: str) -> int:
        """Kill every process of ``account`` (within a second); return how many.

        Does nothing (returns 0) for an account that is not Tether's; raises
        :class:`MachineError` if the account shares uid 0 or another account's uid.
        """
        ...

    def facts(self, account: str) -> MachineFacts:
        """Inspect prerequisites without changing anything."""
        ...

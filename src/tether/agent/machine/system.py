"""The real :class:`~tether.agent.machine.effects.Machine`: support access on this system.

:class:`SystemMachine` changes the machine only through its stock tools (``useradd``,
``usermod``, ``chage``, ``chpasswd``, ``userdel``, ``visudo``, ``sshd -t`` / ``-T``,
``systemctl`` or SIGHUP, ``pgrep`` / ``pkill``, ``tar``), run from argument lists,
never a shell; a password only ever travels on ``chpasswd``'s stdin.

Opening access (:meth:`SystemMachine.open`):

1. checks its input and refuses a customer's own account of the same name;
2. records sshd's *effective* configuration (``sshd -T -C``) for root (from loopback
   and from a remote documentation address, 198.51.100.1) and for one ordinary user
   with a login shell if there is one (the lowest uid >= 1000), and keeps a byte copy
   of ``sshd_config`` in ``state_dir/backup`` the first time only;
3. creates (or updates) the account, its sudoers file (checked by ``visudo``), the CA
   and principals files, and the sshd drop-in -- or, without an ``Include`` of the
   drop-in directory, a managed block at the *end* of ``sshd_config`` (see
   :mod:`~tether.agent.machine.sshd` for why the end);
4. runs ``sshd -t``, then compares the effective configuration of those other users
   with the record and checks that the support account really gets the CA trust;
   any failure undoes everything this call did and raises
   :class:`~tether.agent.machine.effects.MachineError`;
5. reloads sshd (``systemctl reload ssh``, else SIGHUP to the pid file's sshd).

Closing (:meth:`SystemMachine.close`) undoes all of it, tolerating every half-applied
state; helpers live in :mod:`~tether.agent.machine.account`,
:mod:`~tether.agent.machine.sshd` and :mod:`~tether.agent.machine.files`.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import pwd
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from tether import log
from tether.agent.machine.account import (
    Accounts,
    conflict_message,
    is_ours,
    lookup,
    other_login_user,
)
from tether.agent.machine.effects import (
    CloseReport,
    Machine,
    MachineError,
    MachineFacts,
    MachinePaths,
    SupportGrant,
)
from tether.agent.machine.files import (
    Journal,
    Runner,
    make_dir,
    output_of,
    read_bytes,
    remove_dir_if_empty,
    remove_file,
    run_command,
    write_atomic,
)
from tether.agent.machine.grant import (
    ACCOUNT_NAME,
    CheckedGrant,
    check_account_name,
    check_grant,
)
from tether.agent.machine.limits import Limits
from tether.agent.machine.recorder_setup import check_as_account, install_library, prepare_directory
from tether.agent.machine.service import cron_daemon
from tether.agent.machine.sshd import (
    ConnectionSpec,
    Sshd,
    config_after_close,
    encode,
    find_block,
    includes_path,
    read_text,
    render_block,
    render_match_config,
    strip_blocks,
    with_block,
)

logger = logging.getLogger("tether.agent.machine")

#: The sudoers file's name: no dot in it, since sudo skips such names in includedir.
SUDOERS_NAME = "tether-support"
CA_FILE_NAME = "vendor_ca.pub"
#: What sshd shows the engineer before login when the grant has limits.
BANNER_NAME = "banner"
PRINCIPALS_NAME = "principals"
SUDOERS_TEMPLATE = (
    "# Tether support access; removed when access closes.\n{account} ALL=(ALL:ALL) NOPASSWD: ALL\n"
)
#: A source address that is not on the machine (RFC 5737), for root's remote view.
REMOTE_PROBE_ADDR = "198.51.100.1"
_USERDEL_IN_USE = 8


class SystemMachine:
    """Support access on the machine this process runs on (needs root).

    Args:
        paths: where sshd, its configuration, sudoers.d and Tether's state live.
        run: runs one command (argument list, optional stdin text) and returns its
            captured result; defaults to :func:`~tether.agent.machine.files.run_command`.
    """

    #: The sudoers file's content (``{account}`` is filled in); checked by visudo.
    sudoers_template = SUDOERS_TEMPLATE
    #: Present on a machine with cron jobs (see :meth:`facts`).
    cron_dir = Path("/etc/cron.d")

    def __init__(
        self,
        paths: MachinePaths = MachinePaths(),  # noqa: B008 - frozen, hence shareable
        *,
        run: Runner = run_command,
    ) -> None:
        self.paths = paths
        self._run = run
        self._accounts = Accounts(run)
        self._sshd = Sshd(paths, run)

    @property
    def ca_file(self) -> Path:
        """The vendor CA file sshd trusts for the support account."""
        return self.paths.ssh_dir / CA_FILE_NAME

    @property
    def principals_file(self) -> Path:
        """The file naming the principal a certificate must carry (the account)."""
        return self.paths.ssh_dir / PRINCIPALS_NAME

    @property
    def sudoers_file(self) -> Path:
        """The support account's sudoers drop-in."""
        return self.paths.sudoers_d / SUDOERS_NAME

    @property
    def banner_file(self) -> Path:
        """The grant's limits in words, sshd's ``Banner`` for the support account."""
        return self.paths.ssh_dir / BANNER_NAME

    @property
    def backup_file(self) -> Path:
        """The copy of ``sshd_config`` from before the first :meth:`open`."""
        return self.paths.state_dir / "backup" / "sshd_config"

    def render_sshd_config(
        self,
        account: str,
        sources: tuple[str, ...],
        force_command: str | None = None,
        limits: Limits | None = None,
    ) -> str:
        """Return the sshd settings for ``account`` (the drop-in, or the block's body)."""
        limits = limits or Limits()
        return render_match_config(
            account,
            self.ca_file,
            self.principals_file,
            sources,
            force_command,
            tty=limits.shell,
            banner=self.banner_file if limits.restricted else None,
        )

    def force_command(self, checked: CheckedGrant) -> str | None:
        """sshd's ForceCommand: the recorder, told the grant's limits (None: no recorder)."""
        if checked.recorder is None:
            return None
        args = checked.limits.recorder_args(self.paths.consent_dir)
        return " ".join([checked.recorder.command, *args])

    def _limit_settings(self, limits: Limits) -> dict[str, str]:
        """The effective sshd settings (``sshd -T``) that enforce or show ``limits``."""
        settings: dict[str, str] = {}
        if not limits.shell:
            settings["permittty"] = "no"
        if limits.restricted:
            settings["banner"] = str(self.banner_file)
        return settings

    # -- open -----------------------------------------------------------------------

    def open(self, grant: SupportGrant) -> None:
        """Create the account, sudoers file, CA files and sshd config; reload sshd.

        Validates the grant before touching anything, validates every change
        (``visudo -c``, ``sshd -t``) before it goes live, checks that sshd's effective
        configuration for other users is unchanged and that the support account gets
        the CA trust. On any failure, undoes what this call did and raises
        :class:`MachineError`. Calling it again with the same grant rewrites identical
        files and updates the account's expiry and password.
        """
        checked = check_grant(grant, (self.ca_file, self.principals_file, self.paths.drop_in))
        log.event(
            logger,
            "machine.open.start",
            account=checked.account,
            sources=checked.sources or "any",
            expires=checked.expires or "never",
        )
        before = self._sshd.snapshot(self._probes(checked.account))
        journal = Journal()
        try:
            self._apply(checked, journal)
            self._verify(checked, before)
        except BaseException as exc:
            failures = journal.rollback()
            log.event(
                logger,
                "machine.open.rolled_back",
                level=logging.WARNING,
                account=checked.account,
                error=str(exc),
            )
            if not isinstance(exc, (MachineError, OSError)):
                raise
            message = (
                str(exc)
                if isinstance(exc, MachineError)
                else f"opening support access failed: {exc}"
            )
            if failures:
                message += "; could not undo: " + "; ".join(failures)
            else:
                message += " (everything this attempt changed was undone)"
            raise MachineError(message) from exc
        reloaded = self._sshd.reload()
        log.event(logger, "machine.open.done", account=checked.account, sshd_reloaded=reloaded)

    def _probes(self, account: str) -> list[ConnectionSpec]:
        """Whose settings must not change: root (local and remote), one ordinary user."""
        probes = [ConnectionSpec("root", "127.0.0.1"), ConnectionSpec("root", REMOTE_PROBE_ADDR)]
        other = other_login_user(account)
        if other is not None:
            probes.append(ConnectionSpec(other, "127.0.0.1"))
        return probes

    def _verify(self, checked: CheckedGrant, before: dict[ConnectionSpec, str]) -> None:
        """``sshd -t``; others' settings unchanged; the account gets the CA trust."""
        error = self._sshd.test()
        if error is not None:
            raise MachineError(f"sshd -t refused the configuration for support access: {error}")
        self._sshd.check_unchanged(before)
        first = checked.sources[0] if checked.sources else "127.0.0.1"
        addr = str(ipaddress.ip_network(first, strict=False).network_address)
        recorder = checked.recorder
        self._sshd.check_trust(
            ConnectionSpec(checked.account, addr),
            self.ca_file,
            self.principals_file,
            self.force_command(checked),
            self._limit_settings(checked.limits),
        )
        if recorder is not None:
            problem = check_as_account(self._run, checked.account, recorder)
            if problem is not None and not recorder.fail_open:
                raise MachineError(
                    f"the session recorder cannot run as {checked.account} ({problem}); "
                    "support sessions would all be refused -- see [recording] in agent.toml"
                )
            if problem is not None:
                log.event(
                    logger,
                    "machine.recorder.unusable",
                    level=logging.WARNING,
                    account=checked.account,
                    problem=problem,
                    note="fail = open: sessions will run unrecorded",
                )

    def _apply(self, checked: CheckedGrant, journal: Journal) -> None:
        self._keep_backup(journal)
        account = checked.account
        if checked.exists:
            self._accounts.set_expiry(account, checked.expires)
        else:
            self._accounts.create(account, checked.expires)
            journal.add(f"remove account {account}", lambda: self._accounts.remove_new(account))
        self._accounts.set_password(account, checked.password)
        if checked.recorder is not None:
            entry = lookup(account)
            if entry is None:
                raise MachineError(f"account {account} vanished while access was opening")
            try:
                prepare_directory(
                    checked.recorder.directory, entry.pw_gid, self.paths.state_dir, journal
                )
            except OSError as exc:
                if not checked.recorder.fail_open:
                    raise MachineError(
                        f"cannot prepare the recordings directory {checked.recorder.directory} "
                        f"({exc.strerror or exc}); support sessions would all be refused"
                    ) from exc
                log.event(
                    logger,
                    "machine.recordings_dir.unusable",
                    level=logging.WARNING,
                    path=checked.recorder.directory,
                    error=str(exc),
                )
            if checked.recorder.library is not None:
                try:
                    install_library(checked.recorder.library, self.paths.state_dir, journal)
                except OSError as exc:  # the recorder check below then says what fails
                    log.event(
                        logger,
                        "machine.recorder_library.failed",
                        level=logging.WARNING,
                        path=checked.recorder.library,
                        error=str(exc),
                    )

        journal.save_file(self.sudoers_file)
        if checked.limits.sudo:
            sudoers = self.sudoers_template.format(account=account).encode()
            write_atomic(self.sudoers_file, sudoers, 0o440, owner=(0, 0), validate=self._visudo)
        elif remove_file(self.sudoers_file):  # an earlier open of the same grant allowed it
            log.event(logger, "machine.sudoers.removed", path=self.sudoers_file)

        if make_dir(self.paths.ssh_dir, 0o755):
            journal.add(
                f"remove {self.paths.ssh_dir}", lambda: remove_dir_if_empty(self.paths.ssh_dir)
            )
        for path, text in ((self.ca_file, checked.ca_line), (self.principals_file, account)):
            journal.save_file(path)
            write_atomic(path, f"{text}\n".encode(), 0o644, owner=(0, 0))
        if checked.limits.consent:
            self._prepare_consent_dir(journal)
        journal.save_file(self.banner_file)
        if checked.limits.restricted:
            write_atomic(self.banner_file, checked.limits.banner().encode(), 0o644, owner=(0, 0))
        else:
            remove_file(self.banner_file)

        body = self.render_sshd_config(
            account, checked.sources, self.force_command(checked), checked.limits
        )
        config = read_text(self.paths.sshd_config) or ""
        if includes_path(config, self.paths.drop_in, self.paths.sshd_config.parent):
            if make_dir(self.paths.sshd_config_d, 0o755):
                journal.add(
                    "remove drop-in dir", lambda: remove_dir_if_empty(self.paths.sshd_config_d)
                )
            journal.save_file(self.paths.drop_in)
            write_atomic(self.paths.drop_in, body.encode(), 0o644, owner=(0, 0))
            if find_block(config) is not None:  # left from an earlier open without Include
                self._write_sshd_config(strip_blocks(config), journal)
            log.event(logger, "machine.sshd.drop_in_written", path=self.paths.drop_in)
        else:
            journal.save_file(self.paths.drop_in)
            remove_file(self.paths.drop_in)
            self._write_sshd_config(with_block(strip_blocks(config), render_block(body)), journal)
            log.event(logger, "machine.sshd.block_written", path=self.paths.sshd_config)

    def _prepare_consent_dir(self, journal: Journal) -> None:
        """Make the decisions directory: root's, mode 0755, reachable by the recorder.

        The support account may read a decision but never write one: that is what
        makes the customer's consent hold.
        """
        directory = self.paths.consent_dir
        if directory.is_symlink():
            raise MachineError(f"{directory} is a symlink; refusing it")
        if make_dir(directory, 0o755):
            journal.add(f"remove {directory}", lambda: remove_dir_if_empty(directory))
        os.chown(directory, 0, 0)
        os.chmod(directory, 0o755)  # noqa: S103 - the recorder reads decisions; only root writes
        for parent in directory.parents:
            if parent == self.paths.state_dir or self.paths.state_dir in parent.parents:
                mode = stat.S_IMODE(parent.stat().st_mode)
                if not mode & stat.S_IXOTH:
                    os.chmod(parent, mode | stat.S_IXOTH)
                    journal.add(f"restore {parent}", functools.partial(os.chmod, parent, mode))

    def _keep_backup(self, journal: Journal) -> None:
        """Copy ``sshd_config`` to the backup, unless a backup is already kept."""
        if self.backup_file.exists():
            return
        data = read_bytes(self.paths.sshd_config)
        if data is None:
            raise MachineError(f"{self.paths.sshd_config} does not exist")
        directory = self.backup_file.parent
        if make_dir(directory, 0o700):
            journal.add(f"remove {directory}", lambda: remove_dir_if_empty(directory))
        journal.add(f"remove {self.backup_file}", lambda: remove_file(self.backup_file))
        write_atomic(self.backup_file, data, 0o600)

    def _write_sshd_config(self, text: str, journal: Journal) -> bool:
        journal.save_file(self.paths.sshd_config)
        info = self.paths.sshd_config.stat()
        return write_atomic(
            self.paths.sshd_config,
            encode(text),
            info.st_mode & 0o7777,
            owner=(info.st_uid, info.st_gid),
        )

    def _visudo(self, candidate: Path) -> None:
        """Refuse a sudoers file that ``visudo -c`` rejects (before it is renamed in)."""
        if self._run(["visudo", "-c", "-q", "-f", str(candidate)]).returncode == 0:
            return
        # -q hides the reason; ask again for it, to put it in the message.
        said = output_of(self._run(["visudo", "-c", "-f", str(candidate)]))
        said = " ".join(said.replace(str(candidate), "sudoers file").split())
        raise MachineError(f"visudo refused the support account's sudoers file: {said}")

    # -- close ----------------------------------------------------------------------

    def close(self, account: str) -> CloseReport:
        """Kill the account's sessions, remove everything :meth:`open` added, reload.

        Each step tolerates "already gone", so this is safe on half-applied state and
        when nothing is there. A customer's own account of that name is never locked,
        killed or removed. ``sshd_config`` gets the backup's bytes back if it is still
        exactly what :meth:`open` left; if an admin edited it meanwhile, only Tether's
        block is removed. If ``sshd -t`` then fails, the customer's own configuration
        is broken: sshd is not reloaded and the report's notes say so.
        """
        check_account_name(account)
        log.event(logger, "machine.close.start", account=account)
        notes: list[str] = []
        killed, removed, archive = 0, False, None
        entry = lookup(account)
        if entry is not None and not is_ours(entry):
            notes.append(f"account {account} is not Tether's; it was left untouched")
        elif entry is not None:
            try:
                killed, removed, archive = self._remove_account(entry, notes)
            except MachineError as exc:  # its uid is shared: stop before harming others
                notes.append(str(exc))
        changed = self._remove_files(notes)
        changed = self._restore_sshd_config(notes) or changed
        reloaded = False
        if changed:
            error = self._sshd.test()
            if error is None:
                reloaded = self._sshd.reload()
            else:
                # Reloading a configuration sshd -t refuses would stop sshd (it re-executes
                # and fails): the customer would be locked out. Trust has ended anyway:
                # sshd reads TrustedUserCAKeys at every login, and that file is gone.
                log.event(logger, "machine.close.sshd_invalid", level=logging.CRITICAL, error=error)
                trust = (
                    "sshd trusts the vendor's certificates no more: it reads the CA file at "
                    f"every login, and {self.ca_file} is gone"
                    if not self.ca_file.exists()
                    else f"{self.ca_file} is still there: remove it by hand"
                )
                notes.append(
                    f"sshd was NOT reloaded: its own configuration is broken ({error}), and "
                    f"reloading it would stop sshd; {trust}. Fix the configuration, then reload "
                    "sshd (systemctl reload ssh) so it forgets Tether's settings"
                )
        report = CloseReport(
            sessions_killed=killed,
            account_removed=removed,
            home_archive=archive,
            sshd_reloaded=reloaded,
            notes=tuple(notes),
        )
        log.event(
            logger,
            "machine.close.done",
            account=account,
            killed=killed,
            removed=removed,
            archive=archive,
            sshd_reloaded=reloaded,
            notes=len(notes),
        )
        return report

    def _remove_account(
        self, entry: pwd.struct_passwd, notes: list[str]
    ) -> tuple[int, bool, Path | None]:
        """Lock, kill, archive and delete Tether's account: (killed, removed, archive)."""
        account = entry.pw_name
        notes += self._accounts.lock(account)
        killed = self.kill_sessions(account)
        archive, remove_home = self._accounts.archive_home(entry, self.paths.archive_dir, notes)
        status = self._accounts.delete(account, remove_home=remove_home)
        if status == _USERDEL_IN_USE:  # a process appeared meanwhile: once more
            killed += self.kill_sessions(account)
            status = self._accounts.delete(account, remove_home=remove_home)
        removed = lookup(account) is None
        if not removed:
            notes.append(f"userdel could not remove {account} (exit status {status})")
        return killed, removed, archive

    def _remove_files(self, notes: list[str]) -> bool:
        """Remove the sudoers file, drop-in and CA files; return whether sshd's changed."""
        if remove_file(self.sudoers_file):
            log.event(logger, "machine.sudoers.removed", path=self.sudoers_file)
        changed = False
        for path in (self.paths.drop_in, self.ca_file, self.principals_file, self.banner_file):
            if remove_file(path):
                changed = True
                log.event(logger, "machine.file.removed", path=path)
        if self.paths.consent_dir.is_dir() and not self.paths.consent_dir.is_symlink():
            for decision in self.paths.consent_dir.iterdir():
                remove_file(decision)
            remove_dir_if_empty(self.paths.consent_dir)
        if self.paths.ssh_dir.is_dir() and not remove_dir_if_empty(self.paths.ssh_dir):
            notes.append(f"{self.paths.ssh_dir} holds files Tether did not put there; kept")
        return changed

    def _restore_sshd_config(self, notes: list[str]) -> bool:
        """Take Tether's block out of ``sshd_config``; return whether the file changed."""
        current = read_text(self.paths.sshd_config)
        changed = False
        if current is None:
            notes.append(f"{self.paths.sshd_config} does not exist")
        else:
            text, note = config_after_close(current, read_text(self.backup_file))
            if text is not None:
                changed = self._write_sshd_config(text, Journal())
                log.event(logger, "machine.sshd.block_removed", path=self.paths.sshd_config)
            if note is not None:
                notes.append(f"{self.paths.sshd_config}: {note}")
        if remove_file(self.backup_file):
            remove_dir_if_empty(self.backup_file.parent)
        return changed

    # -- sessions and facts -----------------------------------------------------------

    def kill_sessions(self, account: str) -> int:
        """Kill every process of ``account`` within a second; return how many.

        Processes running as the account (effective or real uid) and those started
        from its sessions under another uid (``sudo``: same audit login uid) are
        killed; sshd's per-connection monitor then closes the connection. A customer's
        own account of that name is never touched (returns 0).
        """
        check_account_name(account)
        return self._accounts.kill_sessions(account, self.paths.sshd)

    def facts(self, account: str) -> MachineFacts:
        """Inspect prerequisites without changing anything."""
        present = os.access(self.paths.sshd, os.X_OK)
        error = self._sshd.test() if present else f"sshd not found at {self.paths.sshd}"
        config = read_text(self.paths.sshd_config)
        included = config is not None and includes_path(
            config, self.paths.drop_in, self.paths.sshd_config.parent
        )
        writable = config is not None and os.access(self.paths.sshd_config, os.W_OK)
        conflict = None
        if not ACCOUNT_NAME.fullmatch(account):
            conflict = f"{account!r} is not a valid account name"
        elif (entry := lookup(account)) is not None and not is_ours(entry):
            conflict = conflict_message(account)
        cron = self.cron_dir.is_dir() and cron_daemon() is not None
        return MachineFacts(
            sshd_present=present,
            sshd_config_valid=error is None,
            sshd_error=error,
            drop_in_included=included,
            can_add_block=writable,
            systemd=self._sshd.systemd_dir.is_dir(),
            cron=cron,
            account_conflict=conflict,
        )


if TYPE_CHECKING:

    def _conforms(machine: SystemMachine) -> Machine:
        """Let mypy prove that SystemMachine implements the Machine protocol."""
        return machine

"""sshd for :mod:`tether.agent.machine`: Tether's config text, the managed block, sshd itself.

Pure helpers render the ``Match`` blocks that let the vendor CA's certificates in for
the support account, find out whether ``sshd_config`` includes the drop-in directory,
and add or remove the managed block. :class:`Sshd` runs ``sshd -t`` / ``sshd -T`` and
reloads the daemon.

Where the block goes: sshd keeps the *first* value it reads for most keywords, and a
``Match`` block runs until the next ``Match`` line or the end of the file. A block of
``Match`` sections at the *start* of ``sshd_config`` would therefore swallow the whole
main configuration (every global line after it would only apply to the support
account). At the *end* nothing follows it, so it scopes exactly its own lines, and
keywords inside a matching ``Match`` still override the global ones. The drop-in is
safe at the top of the file (``Include`` comes first in Debian's ``sshd_config``)
because sshd ends a ``Match`` block at the end of the included file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tether import log
from tether.agent.machine.effects import BLOCK_BEGIN, BLOCK_END, MachineError, MachinePaths
from tether.agent.machine.files import Runner, output_of

logger = logging.getLogger("tether.agent.machine")

#: Settings for the support account whatever the source address.
HARDENING = (
    "AuthorizedKeysFile none",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "DisableForwarding yes",
    "PermitTunnel no",
    "X11Forwarding no",
    "AllowAgentForwarding no",
    "PermitUserRC no",
    "ExposeAuthInfo yes",
)
#: How long a reload may take before we say sshd did not come back (it re-executes).
RELOAD_WAIT = 3.0

_KEYWORD = re.compile(r"^\s*([A-Za-z]+)(?:\s*=\s*|\s+)(.*?)\s*$")


def render_match_config(
    account: str,
    ca_file: Path,
    principals_file: Path,
    sources: Sequence[str],
    force_command: str | None = None,
    *,
    tty: bool = True,
    banner: Path | None = None,
) -> str:
    """Return the ``Match`` sections for ``account`` (the drop-in, or the block's body).

    With ``sources`` the CA is trusted only for connections from those addresses; the
    hardening (and the session recorder, ``force_command``) applies to the account
    from anywhere. ``tty=False`` (a grant without a shell) makes sshd refuse a
    terminal; ``banner`` is shown before login to those the CA is trusted from (it
    lists the grant's limits).
    """
    trust = [f"    TrustedUserCAKeys {ca_file}", f"    AuthorizedPrincipalsFile {principals_file}"]
    if banner is not None:
        trust.append(f"    Banner {banner}")
    lines = [
        f"# Tether support access for {account}: vendor CA certificates only, no forwarding.",
        "# Managed by tether and removed when access closes; do not edit.",
    ]
    if sources:
        lines += [f"Match User {account} Address {','.join(sources)}", *trust]
        lines += [f"Match User {account}"]
    else:
        lines += [f"Match User {account}", *trust]
    lines += [f"    {setting}" for setting in HARDENING]
    if not tty:
        lines += ["    PermitTTY no"]
    if force_command is not None:
        lines += [f"    ForceCommand {force_command}"]
    return "\n".join(lines) + "\n"


def render_block(body: str) -> str:
    """Wrap ``body`` between :data:`BLOCK_BEGIN` and :data:`BLOCK_END` lines."""
    note = (
        "# Keep this block at the end of the file: a Match block runs to the next Match\n"
        "# line or the end of the file, so anything added below would apply only to it.\n"
    )
    return f"{BLOCK_BEGIN}\n{note}{body}{BLOCK_END}\n"


def with_block(base: str, block: str) -> str:
    """Return ``base`` with ``block`` appended as its last lines."""
    separator = "\n" if base and not base.endswith("\n") else ""
    return base + separator + block


@dataclass(frozen=True)
class BlockSplit:
    """``sshd_config`` cut around the first managed block."""

    before: str
    block: str
    after: str


def find_block(text: str) -> BlockSplit | None:
    """Find the first complete managed block (marker lines included), if any."""
    lines = text.splitlines(keepends=True)
    begin = next((i for i, line in enumerate(lines) if line.rstrip("\r\n") == BLOCK_BEGIN), None)
    if begin is None:
        return None
    end = next(
        (i for i in range(begin + 1, len(lines)) if lines[i].rstrip("\r\n") == BLOCK_END), None
    )
    if end is None:
        return None
    return BlockSplit(
        "".join(lines[:begin]), "".join(lines[begin : end + 1]), "".join(lines[end + 1 :])
    )


def strip_blocks(text: str) -> str:
    """Remove every managed block: exactly the lines from BEGIN to END, markers included."""
    while (split := find_block(text)) is not None:
        text = split.before + split.after
    return text


def is_what_open_left(current: str, backup: str) -> bool:
    """Tell whether ``current`` is ``backup`` plus one managed block at its end."""
    split = find_block(current)
    if split is None or split.after:
        return False
    return with_block(backup, split.block) == current


def config_after_close(current: str, backup: str | None) -> tuple[str | None, str | None]:
    """Decide what ``sshd_config`` becomes when access closes.

    Returns the new content (None: leave the file alone) and a note for the report.
    If the file is exactly what :meth:`open` left (the backup plus one block at the
    end), the backup's bytes come back; if it was edited meanwhile, only the lines of
    Tether's block (markers included) are removed.
    """
    if backup is not None and is_what_open_left(current, backup):
        return backup, None
    if find_block(current) is not None:
        note = "edited while access was open; only Tether's block was removed"
        return strip_blocks(current), note if backup is not None else None
    if BLOCK_BEGIN in current:
        return None, "has Tether's BEGIN line without its END line; remove that part by hand"
    return None, None


def includes_path(config_text: str, target: Path, base: Path) -> bool:
    """Tell whether a top-level ``Include`` of ``config_text`` reads file ``target``.

    Only ``Include`` lines before the first ``Match`` count (one inside a ``Match``
    block would be conditional). Relative patterns are taken relative to ``base``
    (sshd's own directory, e.g. ``/etc/ssh``). A pattern matches like glob(3): ``*``
    never crosses a ``/``, and never matches a leading dot.
    """
    wanted = PurePosixPath(target)
    for line in config_text.splitlines():
        found = _KEYWORD.match(line)
        if found is None or line.lstrip().startswith("#"):
            continue
        keyword, rest = found.group(1).lower(), found.group(2)
        if keyword == "match":
            return False
        if keyword != "include":
            continue
        try:
            patterns = shlex.split(rest, comments=True)
        except ValueError:
            continue
        for pattern in patterns:
            full = PurePosixPath(pattern if pattern.startswith("/") else str(base / pattern))
            if full == wanted or (
                not wanted.name.startswith(".")
                and wanted.match(str(full))
                and len(full.parts) == len(wanted.parts)
            ):
                return True
    return False


def diff_lines(before: str, after: str, limit: int = 10) -> list[str]:
    """Return the lines only in ``before`` (``-``) or only in ``after`` (``+``)."""
    old, new = before.splitlines(), after.splitlines()
    old_set, new_set = set(old), set(new)
    changes = [f"-{line}" for line in old if line not in new_set]
    changes += [f"+{line}" for line in new if line not in old_set]
    if not changes and old != new:
        changes = ["(same lines in a different order)"]
    return changes[:limit] + ([f"... {len(changes) - limit} more"] if len(changes) > limit else [])


def parse_effective(text: str) -> dict[str, str]:
    """Turn ``sshd -T`` output into keyword (lower case) -> value, last line wins."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        keyword, _, value = line.partition(" ")
        if keyword:
            result[keyword.lower()] = value.strip()
    return result


def check_own_settings(
    effective: str,
    ca_file: Path,
    principals_file: Path,
    force_command: str | None = None,
    limits: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Compare the support account's ``sshd -T`` output with what Tether asked for.

    Returns the CA-trust settings that are wrong (an earlier ``Match`` of the customer
    won; access would not work as intended) and the hardening settings that are weaker
    than asked (worth a warning, the account still only takes certificates).
    ``limits`` are further settings (keyword in lower case -> value) that must hold:
    they enforce the grant's limits, so one that does not hold is wrong, not weaker.
    """
    settings = parse_effective(effective)
    required = {
        "trustedusercakeys": str(ca_file),
        "authorizedprincipalsfile": str(principals_file),
        "authorizedkeysfile": "none",
    }
    if force_command is not None:
        required["forcecommand"] = force_command
    required.update(limits or {})
    wrong = [f"{k} is {settings.get(k)!r}" for k, v in required.items() if settings.get(k) != v]
    weaker = []
    for setting in HARDENING:
        keyword, _, value = setting.lower().partition(" ")
        if settings.get(keyword, value) != value:
            weaker.append(f"{keyword} {settings.get(keyword)}")
    return wrong, weaker


@dataclass(frozen=True)
class ConnectionSpec:
    """A connection whose effective settings ``sshd -T -C`` prints."""

    user: str
    addr: str
    host: str = "localhost"

    def __str__(self) -> str:
        return f"user={self.user},host={self.host},addr={self.addr}"


class Sshd:
    """Validates, inspects and reloads the machine's sshd."""

    systemd_dir = Path("/run/systemd/system")
    #: Unit names tried with ``systemctl reload`` (Debian and Ubuntu say ``ssh``).
    units = ("ssh", "sshd")

    def __init__(self, paths: MachinePaths, run: Runner) -> None:
        self.paths = paths
        self._run = run

    def test(self) -> str | None:
        """Run ``sshd -t``; return None if the configuration is valid, else sshd's words."""
        result = self._run([str(self.paths.sshd), "-t", "-f", str(self.paths.sshd_config)])
        return None if result.returncode == 0 else output_of(result)

    def effective(self, spec: ConnectionSpec) -> tuple[str | None, str]:
        """Return ``(sshd -T output, "")`` for a connection, or ``(None, error)``."""
        argv = [str(self.paths.sshd), "-T", "-f", str(self.paths.sshd_config), "-C", str(spec)]
        result = self._run(argv)
        if result.returncode != 0:
            return None, output_of(result)
        return result.stdout, ""

    def snapshot(self, probes: Sequence[ConnectionSpec]) -> dict[ConnectionSpec, str]:
        """Record the effective configuration for each probe connection.

        Raises:
            MachineError: sshd cannot load the configuration as it is (the customer's
                own problem, reported before Tether changes anything).
        """
        result: dict[ConnectionSpec, str] = {}
        for probe in probes:
            text, error = self.effective(probe)
            if text is None:
                raise MachineError(
                    f"sshd -T fails on the machine's current configuration ({error}); "
                    "fix it first -- Tether changed nothing"
                )
            result[probe] = text
        return result

    def check_unchanged(self, before: dict[ConnectionSpec, str]) -> None:
        """Raise :class:`MachineError` naming the lines if any probe's settings changed."""
        for probe, old in before.items():
            new, error = self.effective(probe)
            if new is None:
                raise MachineError(f"sshd -T failed for {probe}: {error}")
            if new != old:
                raise MachineError(
                    "the support access configuration would change sshd's settings for "
                    f"{probe.user} (from {probe.addr}): {'; '.join(diff_lines(old, new))}"
                )

    def check_trust(
        self,
        spec: ConnectionSpec,
        ca_file: Path,
        principals_file: Path,
        force_command: str | None = None,
        limits: dict[str, str] | None = None,
    ) -> None:
        """Check that sshd gives the support account the CA trust, the recorder and
        the settings enforcing the grant's ``limits`` (else raise) and the hardening
        (else warn): an earlier ``Match`` of the customer's could win."""
        text, error = self.effective(spec)
        if text is None:
            raise MachineError(f"sshd -T failed for {spec}: {error}")
        wrong, weaker = check_own_settings(text, ca_file, principals_file, force_command, limits)
        if wrong:
            raise MachineError(
                f"an earlier setting in sshd's configuration overrides Tether's for "
                f"{spec.user} ({', '.join(wrong)}); check Match blocks in sshd_config"
            )
        if weaker:
            log.event(
                logger,
                "machine.sshd.hardening_overridden",
                level=logging.WARNING,
                account=spec.user,
                settings=weaker,
            )

    def _pid_file_stamp(self) -> int | None:
        try:
            return self.paths.sshd_pid_file.stat().st_mtime_ns
        except OSError:
            return None

    def _pid(self) -> int | None:
        try:
            pid = int(self.paths.sshd_pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid > 1 else None

    def _wait_back(self, stamp: int | None) -> None:
        """Wait until sshd has rewritten its pid file: it is listening again."""
        if stamp is None:
            return
        deadline = time.monotonic() + RELOAD_WAIT
        while time.monotonic() < deadline:
            now = self._pid_file_stamp()
            if now is not None and now != stamp:
                return
            time.sleep(0.01)
        log.event(
            logger,
            "machine.sshd.reload_slow",
            level=logging.WARNING,
            pid_file=self.paths.sshd_pid_file,
            waited=RELOAD_WAIT,
        )

    def reload(self) -> bool:
        """Make the running sshd read its configuration again; return whether it did.

        ``systemctl reload`` when systemd runs the machine (``systemctl restart`` if
        the unit will not reload), else SIGHUP to the pid in sshd's pid file. Either way this waits (up to :data:`RELOAD_WAIT` s) until sshd
        has re-executed and rewritten its pid file, so the new settings are live when
        it returns. An sshd that is not running is only a warning: the configuration
        is valid and the next start reads it.
        """
        stamp = self._pid_file_stamp()
        if self.systemd_dir.is_dir():
            for unit in self.units:
                result = self._run(["systemctl", "reload", unit])
                if result.returncode == 0:
                    self._wait_back(stamp)
                    log.event(logger, "machine.sshd.reloaded", how="systemctl", unit=unit)
                    return True
            # The configuration is valid (callers run sshd -t first): a unit that will not
            # reload is restarted, which keeps live sessions (sshd's KillMode=process).
            for unit in self.units:
                if self._run(["systemctl", "restart", unit]).returncode == 0:
                    self._wait_back(stamp)
                    log.event(logger, "machine.sshd.restarted", how="systemctl", unit=unit)
                    return True
            log.event(
                logger, "machine.sshd.systemctl_failed", level=logging.DEBUG, units=self.units
            )
        pid = self._pid()
        if pid is None:
            log.event(
                logger,
                "machine.sshd.not_running",
                level=logging.WARNING,
                pid_file=self.paths.sshd_pid_file,
                note="no sshd running; its valid configuration is read when it starts",
            )
            return False
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            log.event(
                logger,
                "machine.sshd.not_running",
                level=logging.WARNING,
                pid=pid,
                note="stale pid file; the configuration is valid and will be read when sshd starts",
            )
            return False
        self._wait_back(stamp)
        log.event(logger, "machine.sshd.reloaded", how="SIGHUP", pid=pid)
        return True


def read_text(path: Path) -> str | None:
    """Return ``path`` decoded as UTF-8 (bytes kept via surrogates), or None if absent."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    return None


def encode(text: str) -> bytes:
    """Inverse of :func:`read_text`: the exact bytes back."""
    return text.encode("utf-8", errors="surrogateescape")

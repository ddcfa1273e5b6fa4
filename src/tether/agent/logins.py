"""Support logins and logouts as the machine's own sshd logged them.

sshd (OpenSSH 9.x, ``LogLevel INFO`` or ``VERBOSE``) is a second witness next to the
agent's audit log: with an engineer certificate it logs *which* engineer logged in::

    Accepted publickey for tether-support from 127.0.0.1 port 40518 ssh2: ED25519-CERT
      SHA256:Sr… ID alice (serial 7966171817672590772) CA ED25519 SHA256:2rC…

and when the connection ends (``packet.c`` names the user once authenticated)::

    Disconnected from user tether-support 127.0.0.1 port 40518
    Connection closed by user tether-support 127.0.0.1 port 40518
    Connection reset by user tether-support 127.0.0.1 port 40518
    Connection from user tether-support 127.0.0.1 port 40518 timed out
    pam_unix(sshd:session): session closed for user tether-support

``Received disconnect from 127.0.0.1 port 40518:11: …`` does not name the user and is
not used; the ``Disconnected from user`` line that follows it is.

Three line forms are read: ``journalctl --output=short-iso``
(``2026-11-25T00:31:05+0000 host sshd[123]: …``, also rsyslog's RFC 3339 form with
fractions and ``+00:00``), classic syslog (``Nov 25 00:31:05 host sshd[123]: …``, which
has no year and is in the machine's local time) and ``sshd -E FILE`` (no prefix and no
timestamp at all: such events have ``at=None``).

Only the exact shapes above are recognised, anchored at the start of sshd's message and
on the exact account name, so text a remote user controls (a user name tried in
``Invalid user …`` or ``Failed …`` lines, a key id of some other account's login) cannot
make a line look like a support login. sshd escapes control characters in what it logs,
and a line that still holds one (or a line break) is ignored.

Trust: these lines are as trustworthy as the machine's logs. The journal is read for the
``ssh``/``sshd`` units only, which other processes cannot log into under the default
``pam_systemd`` setup; a classic ``auth.log`` accepts a forged ``sshd[…]`` line from any
local user (``logger -t sshd``). The hash-chained audit log is the record; this is
corroboration.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Literal, TypeAlias

from tether.audit import AuditEntry, FieldValue
from tether.clock import SYSTEM_CLOCK, Clock, utc

LoginKind: TypeAlias = Literal["login", "logout"]

_IP = r"[0-9A-Za-z.:%_-]+"
_ISO_PREFIX = re.compile(
    r"(?P<at>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2}))"
    r" \S+ sshd(?:-session)?(?:\[(?P<pid>\d{1,10})\])?: (?P<msg>.*)"
)
_SYSLOG_PREFIX = re.compile(
    r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}(?P<day>\d{1,2})"
    r" (?P<time>\d{2}:\d{2}:\d{2}) \S+ sshd(?:-session)?\[(?P<pid>\d{1,10})\]: (?P<msg>.*)"
)
_TIMESTAMPED = re.compile(r"\d{4}-\d{2}-\d{2}T|[A-Z][a-z]{2} [ \d]\d \d{2}:")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_ACCEPTED = re.compile(
    rf"Accepted (?P<method>[a-z][a-z0-9-]*(?:/[a-z][a-z0-9-]*)?) for (?P<user>\S+)"
    rf" from (?P<ip>{_IP}) port (?P<port>\d{{1,5}}) ssh2(?:: (?P<extra>.+))?"
)
_CERT = re.compile(
    r"[A-Z0-9-]+-CERT \S+ ID (?P<id>.*) \(serial (?P<serial>\d{1,20})\) CA [A-Z0-9-]+ \S+"
)
_ENDED = re.compile(
    rf"(?P<how>Disconnected from|Connection closed by|Connection reset by|Connection from)"
    rf" user (?P<user>\S+) (?P<ip>{_IP}) port (?P<port>\d{{1,5}})(?P<timeout> timed out)?"
)
_PAM_CLOSED = re.compile(r"pam_unix\(sshd:session\): session closed for user (?P<user>\S+)")


@dataclass(frozen=True)
class LoginEvent:
    """A support login or logout that sshd logged.

    :ivar at: when (aware UTC), or ``None`` when the log has no timestamps (``sshd -E``).
    :ivar kind: ``login`` or ``logout``.
    :ivar account: the local account (the support account).
    :ivar engineer: the certificate's key id, which names the engineer; ``None`` without
        a certificate.
    :ivar cert_serial: the certificate's serial number.
    :ivar source: the client address sshd saw (``127.0.0.1`` through a tether).
    :ivar port: the client's source port; with ``source`` it pairs a logout to its login.
    :ivar raw: the log line as read.
    :ivar pid: sshd's process id from the line prefix (``None`` for ``sshd -E``).
    :ivar method: how the login authenticated (``publickey``, ``password`` …).
    """

    at: datetime | None
    kind: LoginKind
    account: str
    engineer: str | None
    cert_serial: int | None
    source: str | None
    port: int | None
    raw: str
    pid: int | None = None
    method: str | None = None


def parse_sshd_line(
    line: str,
    *,
    accounts: Collection[str],
    year: int | None = None,
    local_tz: tzinfo | None = UTC,
) -> LoginEvent | None:
    """Return the login or logout of one of ``accounts`` on this line, else ``None`` (pure).

    :param line: one log line (a trailing newline or ``\\r\\n`` is allowed).
    :param accounts: account names to report; a single string is taken as one name.
    :param year: the year of a classic syslog timestamp, which has none; without it such
        an event has ``at=None``.
    :param local_tz: the zone classic syslog timestamps are in; ``None`` means this
        machine's local time (with its daylight-saving rules).
    """
    names = {accounts} if isinstance(accounts, str) else set(accounts)
    text = line.removesuffix("\n").removesuffix("\r")
    if not text.isprintable():
        return None
    at: datetime | None = None
    pid: int | None = None
    if match := _ISO_PREFIX.fullmatch(text):
        try:
            at = datetime.fromisoformat(match["at"]).astimezone(UTC)
        except ValueError:
            return None
        # A log written from sshd's stderr has the time but no pid (``HOST sshd: …``).
        pid, message = (int(match["pid"]) if match["pid"] else None), match["msg"]
    elif match := _SYSLOG_PREFIX.fullmatch(text):
        pid, message = int(match["pid"]), match["msg"]
        if year is not None:
            at = _syslog_time(match, year, local_tz)
    elif _TIMESTAMPED.match(text):
        return None  # another program's line, or one we cannot place
    else:
        message = text  # sshd -E: the message alone
    return _parse_message(message, names, at=at, pid=pid, raw=text)


def _syslog_time(match: re.Match[str], year: int, local_tz: tzinfo | None) -> datetime | None:
    hour, minute, second = (int(part) for part in match["time"].split(":"))
    month = _MONTHS.index(match["mon"]) + 1
    try:
        naive = datetime(year, month, int(match["day"]), hour, minute, second)
    except ValueError:
        return None
    if local_tz is None:
        return naive.astimezone(UTC)  # a naive datetime is taken as local time
    return naive.replace(tzinfo=local_tz).astimezone(UTC)


def _parse_message(
    message: str, names: set[str], *, at: datetime | None, pid: int | None, raw: str
) -> LoginEvent | None:
    if match := _ACCEPTED.fullmatch(message):
        if match["user"] not in names:
            return None
        engineer: str | None = None
        serial: int | None = None
        if match["extra"] and (cert := _CERT.fullmatch(match["extra"])):
            engineer, serial = cert["id"] or None, int(cert["serial"])
        return LoginEvent(
            at=at,
            kind="login",
            account=match["user"],
            engineer=engineer,
            cert_serial=serial,
            source=match["ip"],
            port=int(match["port"]),
            raw=raw,
            pid=pid,
            method=match["method"],
        )
    match = _ENDED.fullmatch(message)
    if (
        match
        and match["user"] in names
        and (match["how"] == "Connection from") == bool(match["timeout"])
    ):
        return LoginEvent(
            at, "logout", match["user"], None, None, match["ip"], int(match["port"]), raw, pid
        )
    if (match := _PAM_CLOSED.fullmatch(message)) and match["user"] in names:
        return LoginEvent(at, "logout", match["user"], None, None, None, None, raw, pid)
    return None


@dataclass
class _Session:
    login: LoginEvent
    closed: bool = False


def attribute_logouts(events: Iterable[LoginEvent]) -> list[LoginEvent]:
    """Name the engineer on each logout and drop the second report of the same logout (pure).

    A logout is paired with the latest login of the same account from the same source
    address and port, or — for ``pam_unix`` lines, which name neither — with the latest
    login logged by the same sshd process id. The logout then carries that login's
    engineer, certificate serial, source and port. sshd usually reports one logout twice
    (``Disconnected from user …`` and the PAM ``session closed``); the second is dropped.
    Logouts with no login to pair with are kept as they are.
    """
    sessions: list[_Session] = []
    out: list[LoginEvent] = []
    for event in events:
        if event.kind == "login":
            sessions.append(_Session(event))
            out.append(event)
            continue
        session = next(
            (s for s in reversed(sessions) if _same_session(s.login, event)),
            None,
        )
        if session is None:
            out.append(event)
        elif not session.closed:
            session.closed = True
            login = session.login
            out.append(
                replace(
                    event,
                    engineer=login.engineer,
                    cert_serial=login.cert_serial,
                    source=login.source,
                    port=login.port,
                )
            )
    return out


def _same_session(login: LoginEvent, logout: LoginEvent) -> bool:
    if login.account != logout.account:
        return False
    if logout.source is not None and logout.port is not None:
        return (login.source, login.port) == (logout.source, logout.port)
    return logout.pid is not None and login.pid == logout.pid


@dataclass(frozen=True)
class LoginSources:
    """Where sshd's log lines are read from, first one that has them wins.

    :ivar sshd_log: an explicit ``sshd -E`` file (the sandbox's ``/var/log/sshd.log``);
        used when set and present.
    :ivar auth_log: the classic syslog file, used when the journal has nothing.
    :ivar use_journal: ask ``journalctl -u ssh -u sshd`` before the auth log.
    :ivar journalctl: the ``journalctl`` program (a name looked up on ``PATH``, or a path).
    :ivar timeout: seconds ``journalctl`` may take before it is given up on.
    :ivar syslog_tz: the zone of classic syslog timestamps in ``auth_log``; ``None``
        means this machine's local time, which is what rsyslog writes.
    """

    sshd_log: Path | None = None
    auth_log: Path = Path("/var/log/auth.log")
    use_journal: bool = True
    journalctl: str = "journalctl"
    timeout: float = 10.0
    syslog_tz: tzinfo | None = None


def read_logins(
    account: str,
    *,
    sources: LoginSources,
    since: datetime | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> list[LoginEvent]:
    """Return the support logins and logouts of ``account``, oldest first.

    Sources, in order: ``sources.sshd_log`` if set and present; else the journal
    (``journalctl -u ssh -u sshd --output=short-iso``) if ``journalctl`` exists and
    prints lines; else ``sources.auth_log`` if present; else nothing. A missing,
    unreadable or hanging source is skipped, never raised.

    Classic syslog lines get the current year, or the previous one when that would put
    them more than a day in the future (a log read just after New Year). Logouts are
    paired with their logins (:func:`attribute_logouts`). ``since`` drops events before
    it; events without a timestamp (``sshd -E``) cannot be placed and are always kept.
    """
    now = utc(clock.now())
    names, zone = {account}, sources.syslog_tz
    events: list[LoginEvent] = []
    for line in _source_lines(sources, since):
        event = parse_sshd_line(line, accounts=names, year=now.year, local_tz=zone)
        if event and event.at and event.at > now + timedelta(days=1):
            event = parse_sshd_line(line, accounts=names, year=now.year - 1, local_tz=zone)
        if event:
            events.append(event)
    paired = attribute_logouts(events)
    if since is None:
        return paired
    cutoff = utc(since)
    return [e for e in paired if e.at is None or e.at >= cutoff]


def _source_lines(sources: LoginSources, since: datetime | None) -> list[str]:
    if sources.sshd_log is not None and (lines := _file_lines(sources.sshd_log)) is not None:
        return lines
    if sources.use_journal and (lines := _journal_lines(sources, since)):
        return lines
    return _file_lines(sources.auth_log) or []


def _file_lines(path: Path) -> list[str] | None:
    try:
        with path.open("rb") as f:
            return [raw.decode("utf-8", errors="replace") for raw in f]
    except OSError:
        return None


def _journal_lines(sources: LoginSources, since: datetime | None) -> list[str]:
    program = shutil.which(sources.journalctl)
    if program is None:
        return []
    command = [program, "-u", "ssh", "-u", "sshd", "--output=short-iso", "--no-pager", "--quiet"]
    if since is not None:
        command.append(f"--since={utc(since).strftime('%Y-%m-%d %H:%M:%S')} UTC")
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=sources.timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    text = done.stdout.decode("utf-8", errors="replace")
    return [line for line in text.split("\n") if line.strip()]


@dataclass(frozen=True)
class TimelineRow:
    """One line of the merged story of an access: what the agent recorded or sshd saw.

    :ivar at: when (aware UTC), ``None`` for an sshd event without a timestamp.
    :ivar source: ``agent`` (the audit log) or ``sshd`` (the machine's sshd log).
    :ivar text: what happened, in plain words.
    """

    at: datetime | None
    source: Literal["agent", "sshd"]
    text: str


def merge_timeline(
    entries: Sequence[AuditEntry], logins: Sequence[LoginEvent]
) -> list[TimelineRow]:
    """Merge audit entries and sshd events into one list ordered by time (pure).

    Rules: rows are sorted by time; at the same time, audit entries come before sshd
    events, and each source keeps its own order. An sshd event without a timestamp
    (``sshd -E`` logs have none) is placed right after the sshd event before it in its
    own log — it happened after that one — and those before any timed sshd event are put
    after every timed row, in log order. Their ``at`` stays ``None``: no time is made up.
    """
    keyed: list[tuple[datetime, int, int, TimelineRow]] = [
        (entry.at, 0, i, TimelineRow(entry.at, "agent", describe_entry(entry)))
        for i, entry in enumerate(entries)
    ]
    tail: list[TimelineRow] = []
    anchor: datetime | None = None
    for j, event in enumerate(logins):
        row = TimelineRow(utc(event.at) if event.at else None, "sshd", describe_login(event))
        if row.at is not None:
            anchor = row.at
        if anchor is None:
            tail.append(row)
        else:
            keyed.append((anchor, 1, j, row))
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed] + tail


def describe_login(event: LoginEvent) -> str:
    """Say what a login event means, e.g. ``engineer alice logged in as tether-support …``."""
    account = _printable(event.account)
    where = f" from {_printable(event.source)}" if event.source else ""
    if event.port is not None:
        where += f" port {event.port}"
    if event.kind == "login":
        if event.engineer is not None:
            serial = (
                f" (certificate serial {event.cert_serial})"
                if event.cert_serial is not None
                else ""
            )
            return f"engineer {_printable(event.engineer)} logged in as {account}{where}{serial}"
        how = {"password": "a password", "publickey": "a plain SSH key"}.get(
            event.method or "", _printable(event.method or "an unknown method")
        )
        return f"someone logged in as {account}{where} with {how}, not an engineer certificate"
    if event.engineer is not None:
        return f"engineer {_printable(event.engineer)} logged out of {account}{where}"
    return f"a session of {account}{where} ended"


#: Events said in a person's words; the rest as ``event name: field value; …``.
_PHRASES = {
    "agent.started": "agent started",
    "agent.stopped": "agent stopped",
    "agent.unclean_shutdown": "the agent's last run did not shut down cleanly",
    "agent.reconciled": "agent reconciled access with the machine",
    "tether.reset": "tether reset by the customer",
}


def describe_entry(entry: AuditEntry) -> str:
    """Say what an audit entry records, e.g. ``access opened: key id k1; ports 22, 443``."""
    words = _PHRASES.get(entry.event) or entry.event.replace(".", " ").replace("_", " ")
    fields = dict(entry.fields)
    if entry.event == "tether.reset":
        fields.pop("by", None)  # already in the words
    if entry.event == "agent.unclean_shutdown":
        fields.pop("note", None)
    details = "; ".join(
        f"{name.replace('_', ' ')} {_render(value)}" for name, value in fields.items()
    )
    return f"{words}: {details}" if details else words


def _render(value: FieldValue) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, int | float):
        return str(value)
    return ", ".join(_printable(str(item)) for item in value)


def _printable(text: str) -> str:
    """Escape anything that could break a line or drive a terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)

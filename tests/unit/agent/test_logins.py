"""Support logins as sshd logged them, and the timeline merged with the audit log.

The lines below are in the exact shapes OpenSSH 9.2 writes (``auth.c`` for ``Accepted``,
``packet.c`` for the connection-ending lines, ``auth2-pubkey.c`` for the certificate
text); the ``-E`` ones were captured from a real ``sshd -E`` (note the ``\\r\\n``).
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tether.agent.logins import (
    LoginEvent,
    LoginKind,
    LoginSources,
    TimelineRow,
    attribute_logouts,
    describe_login,
    merge_timeline,
    parse_sshd_line,
    read_logins,
)
from tether.audit import AuditEntry, chain_entry
from tether.clock import FrozenClock

ACCOUNT = "tether-support"
ACCOUNTS = {ACCOUNT}
SERIAL = 7966171817672590772
CERT = (
    f"ED25519-CERT SHA256:Sr4uKq0m0pTlqzN3J1b1Qp9a1x2cK2d0TnNQ7bW3b8A ID alice (serial {SERIAL}) "
    "CA ED25519 SHA256:2rCZ0y1QmH0b7Cq1sM3p9qKxY4k0sJH8r2t1n5Q6w0E"
)
ACCEPTED = f"Accepted publickey for {ACCOUNT} from 127.0.0.1 port 40518 ssh2: {CERT}"
AT = datetime(2026, 11, 25, 0, 31, 5, tzinfo=UTC)


def journal(message: str, *, pid: int = 1234, at: str = "2026-11-25T00:31:05+0000") -> str:
    return f"{at} box sshd[{pid}]: {message}"


def syslog(message: str, *, pid: int = 1234, stamp: str = "Nov 25 00:31:05") -> str:
    return f"{stamp} box sshd[{pid}]: {message}\n"


def parse(line: str, **kw: Any) -> LoginEvent | None:
    return parse_sshd_line(line, accounts=ACCOUNTS, **kw)


# --- the three line forms -------------------------------------------------------------


def test_journal_short_iso_login() -> None:
    line = journal(ACCEPTED)

    event = parse(line)

    assert event == LoginEvent(
        at=AT,
        kind="login",
        account=ACCOUNT,
        engineer="alice",
        cert_serial=SERIAL,
        source="127.0.0.1",
        port=40518,
        raw=line,
        pid=1234,
        method="publickey",
    )


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-11-25T00:31:05+0000",
        "2026-11-25T00:31:05+00:00",
        "2026-11-25T00:31:05.123456+00:00",  # rsyslog's RFC 3339 file format (Debian 12)
        "2026-11-25T01:31:05+0100",
        "2026-11-25T00:31:05Z",
    ],
)
def test_iso_timestamps_become_utc(stamp: str) -> None:
    event = parse(journal(ACCEPTED, at=stamp))

    assert event is not None
    assert event.at is not None
    assert event.at.replace(microsecond=0) == AT
    assert event.at.tzinfo == UTC


def test_classic_syslog_login_needs_the_year() -> None:
    line = syslog(ACCEPTED, pid=99)

    with_year = parse(line, year=2026)
    without = parse(line)

    assert with_year is not None
    assert without is not None
    assert (with_year.at, with_year.pid, with_year.engineer) == (AT, 99, "alice")
    assert without.at is None
    assert with_year.raw == line.rstrip("\n")


def test_classic_syslog_time_is_taken_in_the_given_zone() -> None:
    line = syslog(ACCEPTED, stamp="Nov  5 01:31:05")

    event = parse(line, year=2026, local_tz=timezone(timedelta(hours=1)))

    assert event is not None
    assert event.at == datetime(2026, 11, 5, 0, 31, 5, tzinfo=UTC)


def test_sshd_minus_e_lines_have_no_time() -> None:
    event = parse(ACCEPTED + "\r\n")

    assert event is not None
    assert (event.at, event.pid, event.engineer, event.cert_serial) == (None, None, "alice", SERIAL)
    assert event.raw == ACCEPTED


@pytest.mark.parametrize(
    "message",
    [
        f"Disconnected from user {ACCOUNT} 127.0.0.1 port 40518",
        f"Connection closed by user {ACCOUNT} 127.0.0.1 port 40518",
        f"Connection reset by user {ACCOUNT} 127.0.0.1 port 40518",
        f"Connection from user {ACCOUNT} 127.0.0.1 port 40518 timed out",
    ],
)
def test_logout_lines(message: str) -> None:
    event = parse(journal(message, pid=1250))

    assert event is not None
    assert (event.kind, event.account, event.source, event.port, event.pid) == (
        "logout",
        ACCOUNT,
        "127.0.0.1",
        40518,
        1250,
    )
    assert event.engineer is None  # the login it ends names the engineer


def test_pam_session_closed_is_a_logout_without_address() -> None:
    event = parse(syslog(f"pam_unix(sshd:session): session closed for user {ACCOUNT}"), year=2026)

    assert event is not None
    assert (event.kind, event.source, event.port, event.pid) == ("logout", None, None, 1234)


@pytest.mark.parametrize(
    ("method", "engineer"),
    [("password", None), ("keyboard-interactive/pam", None)],
)
def test_logins_without_a_certificate_name_no_engineer(method: str, engineer: None) -> None:
    event = parse(journal(f"Accepted {method} for {ACCOUNT} from 10.0.0.5 port 5555 ssh2"))

    assert event is not None
    assert (event.method, event.engineer, event.cert_serial) == (method, engineer, None)


def test_a_plain_key_login_names_no_engineer() -> None:
    plain = f"Accepted publickey for {ACCOUNT} from 10.0.0.5 port 5555 ssh2: ED25519 SHA256:abc"

    event = parse(journal(plain))

    assert event is not None
    assert (event.engineer, event.cert_serial) == (None, None)


@pytest.mark.parametrize(
    "line",
    [
        "Received disconnect from 127.0.0.1 port 40518:11: disconnected by user",
        "Close session: user tether-support from 127.0.0.1 port 40518 id 0",
        f"Postponed publickey for {ACCOUNT} from 127.0.0.1 port 40518 ssh2 [preauth]",
        'Accepted certificate ID "alice" (serial 1) signed by ED25519 CA SHA256:x via /etc/ssh/ca.pub',
        f"Starting session: shell on pts/0 for {ACCOUNT} from 127.0.0.1 port 40518 id 0",
        f"pam_unix(sshd:session): session opened for user {ACCOUNT}(uid=1001) by (uid=0)",
        "Server listening on 0.0.0.0 port 22.",
        "",
    ],
)
def test_other_sshd_lines_are_not_logins(line: str) -> None:
    assert parse(line) is None
    assert parse(journal(line)) is None


def test_other_accounts_are_ignored() -> None:
    assert parse(journal(ACCEPTED.replace(ACCOUNT, "root"))) is None
    assert parse(journal("Disconnected from user root 127.0.0.1 port 40518")) is None
    assert parse_sshd_line(journal(ACCEPTED), accounts={"root", ACCOUNT}) is not None


def test_a_single_account_name_is_not_taken_as_its_letters() -> None:
    line = journal(ACCEPTED.replace(ACCOUNT, "t"))

    assert parse_sshd_line(line, accounts=ACCOUNT) is None
    assert parse_sshd_line(journal(ACCEPTED), accounts=ACCOUNT) is not None


# --- hostile input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        # A remote user tries a name: sshd logs it, but never as an Accepted line.
        f"Invalid user {ACCOUNT} ID alice from 203.0.113.9 port 4444",
        f"Failed publickey for {ACCOUNT} from 203.0.113.9 port 4444 ssh2: {CERT}",
        f"Failed password for invalid user {ACCOUNT} from 203.0.113.9 port 4444 ssh2",
        f"Connection closed by authenticating user {ACCOUNT} 203.0.113.9 port 4444 [preauth]",
        f"Disconnected from invalid user {ACCOUNT} 203.0.113.9 port 4444 [preauth]",
        f"Connection closed by invalid user x Accepted publickey for {ACCOUNT} from 1.2.3.4 port 1 ssh2 203.0.113.9 port 4444 [preauth]",
        # Another account's login whose key id names the support account.
        f"Accepted publickey for evil from 203.0.113.9 port 4444 ssh2: ED25519-CERT SHA256:x ID {ACCOUNT} (serial 1) CA ED25519 SHA256:y",
        f"Accepted publickey for evil from 203.0.113.9 port 4444 ssh2: ID x for {ACCOUNT} from 1.2.3.4 port 1 ssh2",
        # A prefix that makes the account name only a part of the user field.
        f"Accepted publickey for x{ACCOUNT} from 127.0.0.1 port 40518 ssh2: {CERT}",
        f"Accepted publickey for invalid user {ACCOUNT} from 127.0.0.1 port 40518 ssh2: {CERT}",
    ],
)
def test_hostile_text_cannot_fake_a_support_login(message: str) -> None:
    assert parse(journal(message)) is None
    assert parse(message) is None


def test_an_injected_line_break_cannot_forge_a_second_line() -> None:
    forged = f"Accepted publickey for evil from 1.2.3.4 port 1 ssh2\n{journal(ACCEPTED)}"

    assert parse(journal(forged)) is None
    assert parse(forged) is None
    assert parse(journal(ACCEPTED).replace("alice", "al\x1b[2Jice")) is None
    assert parse(journal(ACCEPTED) + "\u2028") is None


def test_another_programs_line_is_not_sshd() -> None:
    assert parse(f"2026-11-25T00:31:05+0000 box sudo[77]: {ACCEPTED}") is None
    assert parse(f"Nov 25 00:31:05 box logger: {ACCEPTED}", year=2026) is None
    assert parse(f"2026-11-25T00:31:05+0000 box sshd[12x]: {ACCEPTED}") is None


def test_the_serial_is_the_certificates_own_even_if_the_key_id_mimics_one() -> None:
    tricky = CERT.replace("ID alice", "ID alice (serial 5) CA ED25519 SHA256:zzz")
    event = parse(journal(f"Accepted publickey for {ACCOUNT} from 127.0.0.1 port 1 ssh2: {tricky}"))

    assert event is not None
    assert event.cert_serial == SERIAL
    assert event.engineer == "alice (serial 5) CA ED25519 SHA256:zzz"


# --- pairing logouts with logins ----------------------------------------------------------


def _events(*lines: str) -> list[LoginEvent]:
    parsed = [parse(line, year=2026) for line in lines]
    return [e for e in parsed if e is not None]


def test_a_logout_is_paired_and_pams_second_report_dropped() -> None:
    events = _events(
        syslog(ACCEPTED, pid=1234, stamp="Nov 25 00:31:05"),
        syslog("Received disconnect from 127.0.0.1 port 40518:11: disconnected by user", pid=1250),
        syslog(
            f"Disconnected from user {ACCOUNT} 127.0.0.1 port 40518",
            pid=1250,
            stamp="Nov 25 00:40:00",
        ),
        syslog(
            f"pam_unix(sshd:session): session closed for user {ACCOUNT}",
            pid=1234,
            stamp="Nov 25 00:40:00",
        ),
    )

    paired = attribute_logouts(events)

    assert [(e.kind, e.engineer, e.cert_serial, e.port) for e in paired] == [
        ("login", "alice", SERIAL, 40518),
        ("logout", "alice", SERIAL, 40518),
    ]
    assert paired[1].pid == 1250


def test_a_killed_session_is_ended_by_pams_line_alone() -> None:
    events = _events(
        syslog(ACCEPTED, pid=1234),
        syslog(f"pam_unix(sshd:session): session closed for user {ACCOUNT}", pid=1234),
    )

    (_, logout) = attribute_logouts(events)

    assert (logout.kind, logout.engineer, logout.source, logout.port) == (
        "logout",
        "alice",
        "127.0.0.1",
        40518,
    )


def test_interleaved_sessions_pair_by_address_and_port() -> None:
    bob = ACCEPTED.replace("ID alice", "ID bob").replace("40518", "40600")
    events = _events(
        ACCEPTED,
        bob,
        f"Disconnected from user {ACCOUNT} 127.0.0.1 port 40518",
        f"Connection closed by user {ACCOUNT} 127.0.0.1 port 40600",
        f"Disconnected from user {ACCOUNT} 127.0.0.1 port 9",
    )

    paired = attribute_logouts(events)

    assert [(e.kind, e.engineer) for e in paired] == [
        ("login", "alice"),
        ("login", "bob"),
        ("logout", "alice"),
        ("logout", "bob"),
        ("logout", None),  # its login was before the window: kept, engineer unknown
    ]


# --- reading the machine's logs ------------------------------------------------------------


@pytest.fixture
def no_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tether.agent.logins.shutil.which", lambda name: None)


class FakeJournal:
    """Stands in for ``journalctl`` (no process is started)."""

    def __init__(self, output: str = "", *, returncode: int = 0, exc: Exception | None = None):
        self.output, self.returncode, self.exc = output, returncode, exc
        self.calls: list[list[str]] = []

    def __call__(self, command: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(command)
        assert kw["timeout"] > 0
        if self.exc is not None:
            raise self.exc
        return subprocess.CompletedProcess(command, self.returncode, self.output.encode(), b"")


@pytest.fixture
def fake_journal(monkeypatch: pytest.MonkeyPatch) -> FakeJournal:
    fake = FakeJournal()
    monkeypatch.setattr("tether.agent.logins.shutil.which", lambda name: "/usr/bin/journalctl")
    monkeypatch.setattr("tether.agent.logins.subprocess.run", fake)
    return fake


CLOCK = FrozenClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))


def test_an_explicit_sshd_log_comes_first(tmp_path: Path, fake_journal: FakeJournal) -> None:
    log = tmp_path / "sshd.log"
    log.write_bytes(
        (
            f"Server listening on 0.0.0.0 port 22.\r\n{ACCEPTED}\r\n"
            f"Disconnected from user {ACCOUNT} 127.0.0.1 port 40518\r\n"
        ).encode()
    )
    fake_journal.output = journal(ACCEPTED.replace("alice", "mallory")) + "\n"

    events = read_logins(ACCOUNT, sources=LoginSources(sshd_log=log), clock=CLOCK)

    assert [(e.kind, e.engineer, e.at) for e in events] == [
        ("login", "alice", None),
        ("logout", "alice", None),
    ]
    assert fake_journal.calls == []


def test_the_journal_is_asked_when_there_is_no_sshd_log(
    tmp_path: Path, fake_journal: FakeJournal
) -> None:
    fake_journal.output = "\n".join(
        [
            "2026-11-25T00:30:00+0000 box systemd[1]: Started ssh.service.",
            journal(ACCEPTED),
            journal(
                f"Disconnected from user {ACCOUNT} 127.0.0.1 port 40518",
                at="2026-11-25T00:40:00+0000",
            ),
            "",
        ]
    )
    sources = LoginSources(sshd_log=tmp_path / "absent.log", auth_log=tmp_path / "auth.log")

    events = read_logins(ACCOUNT, sources=sources, since=AT - timedelta(minutes=5), clock=CLOCK)

    assert [(e.kind, e.engineer, e.at) for e in events] == [
        ("login", "alice", AT),
        ("logout", "alice", datetime(2026, 11, 25, 0, 40, tzinfo=UTC)),
    ]
    (command,) = fake_journal.calls
    assert command[1:] == [
        "-u",
        "ssh",
        "-u",
        "sshd",
        "--output=short-iso",
        "--no-pager",
        "--quiet",
        "--since=2026-11-25 00:26:05 UTC",
    ]


@pytest.mark.parametrize(
    "journal_says",
    [
        FakeJournal(""),
        FakeJournal(journal(ACCEPTED), returncode=1),
        FakeJournal(exc=subprocess.TimeoutExpired("journalctl", 10)),
        FakeJournal(exc=PermissionError("no")),
    ],
)
def test_the_auth_log_is_read_when_the_journal_has_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal_says: FakeJournal
) -> None:
    monkeypatch.setattr("tether.agent.logins.shutil.which", lambda name: "/usr/bin/journalctl")
    monkeypatch.setattr("tether.agent.logins.subprocess.run", journal_says)
    auth = tmp_path / "auth.log"
    auth.write_text(syslog(ACCEPTED.replace("alice", "carol")))

    events = read_logins(ACCOUNT, sources=LoginSources(auth_log=auth, syslog_tz=UTC), clock=CLOCK)

    assert [(e.engineer, e.at) for e in events] == [("carol", AT)]


def test_the_journal_can_be_turned_off(tmp_path: Path, fake_journal: FakeJournal) -> None:
    auth = tmp_path / "auth.log"
    auth.write_text(syslog(ACCEPTED))

    events = read_logins(
        ACCOUNT,
        sources=LoginSources(auth_log=auth, use_journal=False, syslog_tz=UTC),
        clock=CLOCK,
    )

    assert len(events) == 1
    assert fake_journal.calls == []


def test_no_source_at_all_is_no_logins_and_no_error(tmp_path: Path, no_journal: None) -> None:
    sources = LoginSources(sshd_log=tmp_path / "a", auth_log=tmp_path / "b")

    assert read_logins(ACCOUNT, sources=sources, clock=CLOCK) == []


def test_an_unreadable_source_is_skipped(tmp_path: Path, no_journal: None) -> None:
    directory = tmp_path / "sshd.log"
    directory.mkdir()  # exists, but reading it fails
    auth = tmp_path / "auth.log"
    auth.write_text(syslog(ACCEPTED))

    sources = LoginSources(sshd_log=directory, auth_log=auth, syslog_tz=UTC)

    assert [e.engineer for e in read_logins(ACCOUNT, sources=sources, clock=CLOCK)] == ["alice"]


def test_syslog_lines_from_december_read_in_january_keep_last_year(
    tmp_path: Path, no_journal: None
) -> None:
    auth = tmp_path / "auth.log"
    auth.write_text(
        syslog(ACCEPTED, stamp="Dec 31 23:50:00")
        + syslog(f"Disconnected from user {ACCOUNT} 127.0.0.1 port 40518", stamp="Jan  1 00:05:00")
    )
    clock = FrozenClock(datetime(2027, 1, 1, 0, 10, tzinfo=UTC))

    events = read_logins(ACCOUNT, sources=LoginSources(auth_log=auth, syslog_tz=UTC), clock=clock)

    assert [e.at for e in events] == [
        datetime(2026, 12, 31, 23, 50, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 5, tzinfo=UTC),
    ]


def test_since_drops_older_events_but_keeps_untimed_ones(tmp_path: Path, no_journal: None) -> None:
    auth = tmp_path / "auth.log"
    auth.write_text(
        syslog(ACCEPTED, stamp="Nov 25 00:31:05")
        + syslog(ACCEPTED.replace("40518", "40999"), stamp="Nov 25 09:00:00")
    )
    sshd_log = tmp_path / "sshd.log"
    sshd_log.write_text(ACCEPTED + "\r\n")
    since = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)

    timed = read_logins(
        ACCOUNT, sources=LoginSources(auth_log=auth, syslog_tz=UTC), since=since, clock=CLOCK
    )
    untimed = read_logins(
        ACCOUNT, sources=LoginSources(sshd_log=sshd_log), since=since, clock=CLOCK
    )

    assert [e.port for e in timed] == [40999]
    assert [e.at for e in untimed] == [None]


# --- the merged timeline ----------------------------------------------------------------


def _audit(*events: tuple[str, int, dict[str, Any]]) -> list[AuditEntry]:
    chain: list[AuditEntry] = []
    for name, minute, fields in events:
        prev = chain[-1] if chain else None
        chain.append(chain_entry(prev, name, fields, AT + timedelta(minutes=minute)))
    return chain


def _login(minute: int | None, kind: LoginKind = "login", engineer: str = "alice") -> LoginEvent:
    at = None if minute is None else AT + timedelta(minutes=minute)
    return LoginEvent(at, kind, ACCOUNT, engineer, SERIAL, "127.0.0.1", 40518, "raw")


def test_merge_timeline_orders_by_time_agent_first_on_ties() -> None:
    entries = _audit(
        ("access.opened", 0, {"key_id": "k-1", "ports": [22, 443]}),
        ("access.closed", 30, {"reason": "expired", "forced": True}),
    )
    rows = merge_timeline(entries, [_login(30, "logout"), _login(0)])

    assert rows == [
        TimelineRow(AT, "agent", "access opened: key id k-1; ports 22, 443"),
        TimelineRow(
            AT,
            "sshd",
            f"engineer alice logged in as {ACCOUNT} from 127.0.0.1 port 40518 (certificate serial {SERIAL})",
        ),
        TimelineRow(
            AT + timedelta(minutes=30), "agent", "access closed: reason expired; forced yes"
        ),
        TimelineRow(
            AT + timedelta(minutes=30),
            "sshd",
            f"engineer alice logged out of {ACCOUNT} from 127.0.0.1 port 40518",
        ),
    ]


def test_merge_timeline_keeps_untimed_sshd_events_after_their_predecessor() -> None:
    entries = _audit(("access.opened", 0, {}), ("access.closed", 30, {}))
    logins_ = [_login(None, engineer="first"), _login(10), _login(None, "logout")]

    rows = merge_timeline(entries, logins_)

    assert [(r.source, r.at is None, r.text.split(" ")[:2]) for r in rows] == [
        ("agent", False, ["access", "opened"]),
        ("sshd", False, ["engineer", "alice"]),
        ("sshd", True, ["engineer", "alice"]),  # the logout: right after its login
        ("agent", False, ["access", "closed"]),
        ("sshd", True, ["engineer", "first"]),  # nothing timed before it: at the end
    ]


def test_descriptions_escape_control_characters_and_say_how_without_a_certificate() -> None:
    password = LoginEvent(
        AT, "login", ACCOUNT, None, None, "10.0.0.5", 22, "raw", method="password"
    )
    ended = LoginEvent(AT, "logout", ACCOUNT, None, None, None, None, "raw")
    entry = chain_entry(None, "access.requested", {"description": "disk full\n\x1b[2Jfake"}, AT)

    assert describe_login(password) == (
        f"someone logged in as {ACCOUNT} from 10.0.0.5 port 22 with a password, "
        "not an engineer certificate"
    )
    assert describe_login(ended) == f"a session of {ACCOUNT} ended"
    (row,) = merge_timeline([entry], [])
    assert row.text == "access requested: description disk full\\x0a\\x1b[2Jfake"

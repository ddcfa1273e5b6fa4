"""The agent's audit log as a file: concurrent writers, permissions, damage, bounded reads.

SPEC (Invariants): "The audit log is append-only and hash-chained: a changed or removed
entry is detected." — here with real files and several processes writing at once (the
CLI and the daemon both append).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether.audit import GENESIS, AuditEntry, AuditFormatError, chain_entry
from tether.audit_log import AuditLog
from tether.cli import main
from tether.clock import FrozenClock
from tether.keys import SigningKey

T0 = datetime(2026, 11, 25, 0, 31, 5, tzinfo=UTC)

WRITER = """
import sys
from pathlib import Path
from tether.audit_log import AuditLog

log = AuditLog(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    log.append("test.appended", writer=int(sys.argv[2]), i=i)
"""


def test_invariant_audit_log_is_append_only_and_hash_chained_across_processes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), "50"]) for w in range(4)
    ]
    assert [p.wait(timeout=60) for p in writers] == [0, 0, 0, 0]

    log = AuditLog(path)
    result = log.verify()
    entries = log.entries()

    assert result.ok, result.problems
    assert [e.seq for e in entries] == list(range(1, 201))  # one chain, no fork, no gap
    assert log.head() == (200, entries[-1].hash) == (result.head_seq, result.head)
    for w in range(4):
        mine = [e.fields["i"] for e in entries if e.fields["writer"] == w]
        assert mine == list(range(50))


def test_threads_of_one_process_do_not_fork_the_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")

    def write(w: int) -> None:
        for i in range(25):
            log.append("test.appended", writer=w, i=i)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert log.verify().ok
    assert log.head()[0] == 100


def test_the_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        log = AuditLog(tmp_path / "new" / "audit.log")
        log.append("access.opened", key_id="k-1")
    finally:
        os.umask(old)

    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.path.parent.stat().st_mode) == 0o700


def test_an_existing_readable_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.touch()
    path.chmod(0o644)

    AuditLog(path).append("access.opened")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_missing_log_is_empty(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "absent.log")

    assert log.head() == (0, GENESIS)
    assert log.read_lines() == []
    assert log.entries() == []
    assert log.verify().ok
    assert not log.path.exists()


def test_append_uses_the_clock_and_returns_what_it_wrote(tmp_path: Path) -> None:
    clock = FrozenClock(T0)
    log = AuditLog(tmp_path / "audit.log", clock=clock)

    first = log.append("access.opened", key_id="k-1", ports=[22, 443])
    clock.advance(timedelta(minutes=5))
    second = log.append("access.closed", event="a field may be called event")

    assert log.entries() == [first, second]
    assert (first.at, second.at) == (T0, T0 + timedelta(minutes=5))
    assert second.prev == first.hash
    assert log.path.read_text().count("\n") == 2


def test_secret_fields_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")

    with pytest.raises(ValueError, match="looks like a secret"):
        log.append("access.opened", support_password="hunter2")
    with pytest.raises(ValueError, match="dotted lower-case"):
        log.append("Opened")

    assert not log.path.exists()


def test_append_reads_only_the_end_of_a_long_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    entry = None
    with path.open("w") as f:
        for i in range(10_000):
            entry = chain_entry(entry, "test.filled", {"i": i}, T0)
            f.write(entry.to_json_line() + "\n")
    assert path.stat().st_size > 1_000_000

    read = 0
    real_pread, real_read = os.pread, os.read

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        nonlocal read
        data = real_pread(fd, n, offset)
        read += len(data)
        return data

    def counting_read(fd: int, n: int) -> bytes:
        nonlocal read
        data = real_read(fd, n)
        read += len(data)
        return data

    monkeypatch.setattr(os, "pread", counting_pread)
    monkeypatch.setattr(os, "read", counting_read)
    appended = AuditLog(path).append("test.appended")
    head = AuditLog(path).head()

    assert appended.seq == 10_001
    assert head == (10_001, appended.hash)
    # append and head each read the last 4 KiB chunk and the last byte: not the 1 MB file.
    assert read <= 2 * (4096 + 1)


def test_a_cut_short_last_line_does_not_stop_the_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    log.append("access.opened")
    second = log.append("tunnel.up")
    with log.path.open("a") as f:
        f.write('{"at":"2026-11-25T0')  # a crash in the middle of a write

    third = log.append("access.closed")
    result = log.verify()

    assert third.seq == 3
    assert third.prev == second.hash
    assert [(p.kind, p.seq) for p in result.problems] == [("malformed", None)]
    assert "line 3" in result.problems[0].message
    assert log.read_lines()[3] == third.to_json_line()
    with pytest.raises(AuditFormatError, match="line 3"):
        log.entries()
    assert [e.seq for e in log.entries(skip_damaged=True)] == [1, 2, 3]


def test_editing_and_truncating_the_file_are_detected(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    for i in range(10):
        log.append("test.appended", i=i)
    head = log.head()
    lines = log.read_lines()

    log.path.write_text(
        "\n".join([*lines[:4], lines[4].replace('"i":4', '"i":40'), *lines[5:]]) + "\n"
    )
    changed = log.verify(expected_head=head)
    log.path.write_text("\n".join(lines[:-1]) + "\n")
    truncated = log.verify(expected_head=head)

    assert [(p.kind, p.seq) for p in changed.problems] == [("changed", 5)]
    assert not truncated.ok
    assert [(p.kind, p.seq) for p in truncated.problems] == [("truncated", 10)]
    assert AuditLog(log.path).verify().ok  # without the head, a shorter chain looks fine


def test_a_symlink_in_place_of_the_log_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "audit.log"
    link.symlink_to(target)

    with pytest.raises(OSError, match="symbolic link"):
        AuditLog(link).append("access.opened")
    assert target.read_text() == ""


def test_entries_round_trip_through_the_file(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", clock=FrozenClock(T0))
    written = log.append("access.opened", note="Zürich", ports=[22], ok=True, ratio=0.5, by=None)

    (line,) = log.read_lines()

    assert line.isascii()
    assert AuditEntry.from_json_line(line) == written


def test_entry_hash_answers_from_the_file_as_it_is_now(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    written = [log.append("test.appended", i=i) for i in range(5)]

    assert [log.entry_hash(e.seq) for e in written] == [e.hash for e in written]
    assert log.entry_hash(6) is None
    assert AuditLog(tmp_path / "none.log").entry_hash(1) is None
    lines = log.read_lines()
    log.path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # entry 3 removed
    assert log.entry_hash(3) is None
    assert log.entry_hash(4) == written[3].hash


def _agent_config(tmp_path: Path) -> Path:
    """An agent configuration whose state (and audit log) lives under ``tmp_path``."""
    (tmp_path / "sshd.log").write_text("")
    path = tmp_path / "agent.toml"
    path.write_text(
        'serial = "SN-1"\n'
        f'vendor_keys = ["{SigningKey.generate().verify_key().to_paserk()}"]\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'run_dir = "{tmp_path / "run"}"\n'
        f'sshd_log = "{tmp_path / "sshd.log"}"\n'
    )
    return path


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (
            lambda ls: [*ls[:2], ls[2].replace('"alice"', '"mallory"'), *ls[3:]],
            "entry 3 (support.login",
        ),
        (lambda ls: [*ls[:2], *ls[3:]], "entry 3 is missing"),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "entry 2 (tether.up"),
    ],
    ids=["edited", "removed", "swapped"],
)
def test_access_log_verify_names_an_edited_removed_or_swapped_event(
    tmp_path: Path, tamper: object, words: str
) -> None:
    config = _agent_config(tmp_path)
    log = AuditLog(tmp_path / "state" / "audit.log")
    log.append("access.opened", by="cli", mode="tether", key_id="k1")
    log.append("tether.up", relay="relay.example:2222", serial="SN-1")
    log.append("support.login", engineer="alice")
    log.append("access.closed", by="expiry", reason="expired")
    args = ["access", "log", "--verify", "--config", str(config)]
    intact = CliRunner().invoke(main, args)
    lines = log.read_lines()
    assert callable(tamper)
    log.path.write_text("\n".join(tamper(lines)) + "\n")

    tampered = CliRunner().invoke(main, args)
    as_json = CliRunner().invoke(main, [*args, "--json"])

    assert intact.exit_code == 0, intact.output
    assert "Audit log intact: 4 entries" in intact.stdout
    assert tampered.exit_code == 1
    assert "TAMPERED" in tampered.stdout
    assert words in tampered.stdout
    assert as_json.exit_code == 1
    assert '"verified": false' in as_json.stdout

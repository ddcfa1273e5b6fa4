"""The pure parts of session recording: asciicast writer, SFTP/scp followers, engineer
names from certificates, session plans, retention, sizes and the player's timing."""

from __future__ import annotations

import gzip
import io
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.agent.recording.catalog import (
    RecordingInfo,
    RecordingNotFound,
    check_id,
    list_recordings,
    new_recording_id,
    read_cast,
    select_for_removal,
)
from tether.agent.recording.recorder.cast import CastWriter, decompress_partial, header
from tether.agent.recording.recorder.context import (
    ScpLog,
    certificate_key_id,
    engineer_from_auth_info,
    plan_session,
)
from tether.agent.recording.recorder.session import parse_args
from tether.agent.recording.recorder.sftp_log import SftpLog
from tether.cli.access_recordings import playback
from tether.config import parse_size
from tether.sshlib import asyncssh


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _events(raw: bytes) -> tuple[dict[str, object], list[list[object]]]:
    lines = decompress_partial(raw).decode().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def test_cast_writer_records_output_resizes_and_split_characters() -> None:
    stream, clock = io.BytesIO(), FakeClock()
    head = header(101, 33, 1_700_000_000.5, {"TERM": "xterm", "SHELL": ""}, {"engineer": "alice"})
    writer = CastWriter(stream, head, limit=1000, clock=clock)
    clock.now += 0.5
    writer.output("héllo ".encode()[:2])  # "h" and half of "é"
    clock.now += 0.25
    writer.output("héllo ".encode()[2:])
    writer.resize(120, 40)
    writer.close()
    first, events = _events(stream.getvalue())
    assert first == {
        "version": 2,
        "width": 101,
        "height": 33,
        "timestamp": 1_700_000_000,
        "env": {"TERM": "xterm"},
        "tether": {"engineer": "alice"},
    }
    assert events == [[0.5, "o", "h"], [0.75, "o", "éllo "], [0.75, "r", "120x40"]]
    assert gzip.decompress(stream.getvalue())  # a complete, valid gzip file


def test_cast_writer_stops_at_its_limit_and_says_so() -> None:
    stream = io.BytesIO()
    writer = CastWriter(stream, header(80, 24, 0, {}, {}), limit=10, clock=FakeClock())
    writer.output(b"0123456789abcdef")
    writer.output(b"more")
    writer.close()
    _, events = _events(stream.getvalue())
    assert [e[2] for e in events] == ["0123456789"]
    assert writer.truncated
    assert writer.recorded == 10


def test_a_recording_cut_mid_session_keeps_what_was_flushed(tmp_path: Path) -> None:
    clock = FakeClock()
    stream = io.BytesIO()
    writer = CastWriter(stream, header(80, 24, 0, {}, {}), limit=1000, clock=clock)
    writer.output(b"before the crash\r\n")
    clock.now += 1.5  # past FLUSH_EVERY: the next output flushes
    writer.output(b"flushed too\r\n")
    cut = stream.getvalue()  # the recorder is killed here: no gzip trailer
    writer.output(b"lost")
    recording_id = "20261125T031502Z-3f9c2a1b"
    (tmp_path / f"{recording_id}.cast.gz").write_bytes(cut + b"\x00\x01garbage")
    text = read_cast(tmp_path, recording_id)
    assert "before the crash" in text
    assert "flushed too" in text
    assert "lost" not in text
    assert text.endswith("\n")


def test_recording_ids_sort_by_time_and_bad_ids_are_refused(tmp_path: Path) -> None:
    early = new_recording_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = new_recording_id(datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC))
    assert early.startswith("20260102T030405Z-")
    assert early < late
    assert check_id(early) == early
    for bad in ("../../etc/shadow", "20260102T030405Z-", "x" * 30):
        with pytest.raises(RecordingNotFound):
            read_cast(tmp_path, bad)
    with pytest.raises(RecordingNotFound, match="no recording"):
        read_cast(tmp_path, early)


def _packet(kind: int, *fields: bytes | int, wide: tuple[int, ...] = ()) -> bytes:
    body = bytes([kind])
    for i, value in enumerate(fields):
        if isinstance(value, int):
            body += struct.pack(">Q" if i in wide else ">I", value)
        else:
            body += struct.pack(">I", len(value)) + value
    return struct.pack(">I", len(body)) + body


def test_sftp_log_follows_uploads_downloads_removals_and_renames() -> None:
    log = SftpLog()
    log.client_data(_packet(1, 3))  # INIT
    log.client_data(_packet(3, 7, b"/home/s/up.txt", 2 | 8 | 16, 0))  # OPEN write
    log.server_data(_packet(102, 7, b"H1"))
    write = _packet(6, 8, b"H1", 0, b"x" * 5000, wide=(2,))
    log.client_data(write[:100])  # split across reads
    log.client_data(write[100:])
    log.client_data(_packet(6, 9, b"H1", 5000, b"y" * 12, wide=(2,)))
    log.client_data(_packet(4, 10, b"H1"))  # CLOSE
    log.client_data(_packet(3, 11, b"/etc/hostname", 1, 0))  # OPEN read
    log.server_data(_packet(102, 11, b"H2"))
    log.client_data(_packet(5, 12, b"H2", 0, 32768, wide=(2,)))
    log.server_data(_packet(103, 12, b"machine\n"))
    log.client_data(_packet(5, 13, b"H2", 8, 32768, wide=(2,)))
    log.server_data(_packet(101, 13, 1, b"EOF", b""))
    log.client_data(_packet(3, 14, b"/nope", 1, 0))
    log.server_data(_packet(101, 14, 2, b"No such file", b""))  # failed open: no transfer
    log.client_data(_packet(13, 15, b"/home/s/old"))
    log.client_data(_packet(18, 16, b"/home/s/a", b"/home/s/b"))
    assert [t.to_json() for t in log.transfers] == [
        {"op": "upload", "path": "/home/s/up.txt", "bytes": 5012},
        {"op": "download", "path": "/etc/hostname", "bytes": 8},
        {"op": "remove", "path": "/home/s/old"},
        {"op": "rename", "path": "/home/s/a", "target": "/home/s/b"},
    ]


def test_sftp_log_gives_up_on_a_stream_that_is_not_sftp() -> None:
    log = SftpLog()
    log.client_data(b"\xff\xff\xff\xff not sftp at all")
    log.client_data(_packet(13, 1, b"/x"))
    assert log.broken
    assert log.transfers == []


def test_scp_log_reads_file_names_and_sizes_across_chunks() -> None:
    log = ScpLog("upload")
    stream = b"T1 0 1 0\nC0644 5 a.txt\nhello\x00D0755 0 dir\nC0600 3 b\nabc\x00E\nC0644 0 c\n\x00"
    for i in range(0, len(stream), 4):
        log.feed(stream[i : i + 4])
    assert log.files == [
        {"op": "upload", "path": "a.txt", "bytes": 5},
        {"op": "upload", "path": "dir/b", "bytes": 3},
        {"op": "upload", "path": "c", "bytes": 0},
    ]


def test_engineer_is_the_certificate_key_id() -> None:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    user = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.generate_user_certificate(user, "alice", principals=["alice", "tether-support"])
    line = cert.export_certificate().decode().strip()
    assert certificate_key_id(line) == "alice"
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    rsa_cert = ca.generate_user_certificate(rsa, "bob.smith", principals=["bob.smith"])
    auth = f"password\npublickey {rsa_cert.export_certificate().decode().strip()}\n"
    assert engineer_from_auth_info(auth) == "bob.smith"
    plain = user.export_public_key().decode().strip()
    assert engineer_from_auth_info(f"publickey {plain}\n") is None
    assert certificate_key_id("ssh-ed25519-cert-v01@openssh.com AAAA!!") is None
    assert certificate_key_id("ssh-ed25519-cert-v01@openssh.com " + line.split()[1][:40]) is None


def test_session_plans_follow_what_sshd_asked_for() -> None:
    shell = plan_session("/bin/bash", None, "/usr/lib/openssh/sftp-server")
    assert (shell.kind, shell.argv, shell.argv0) == ("shell", ["/bin/bash"], "-bash")
    command = plan_session("/bin/bash", "echo hi; exit 3", None)
    assert (command.kind, command.argv) == ("command", ["/bin/bash", "-c", "echo hi; exit 3"])
    sftp = plan_session("/bin/bash", "internal-sftp -l INFO", "/usr/lib/openssh/sftp-server")
    assert (sftp.kind, sftp.argv) == ("sftp", ["/usr/lib/openssh/sftp-server", "-l", "INFO"])
    scp = plan_session("/bin/bash", "scp -t -- /tmp/x", None)
    assert (scp.kind, scp.scp_mode, scp.argv) == (
        "scp",
        "t",
        ["/bin/bash", "-c", "scp -t -- /tmp/x"],
    )
    assert plan_session("/bin/bash", "scp -r -f /etc", None).scp_mode == "f"
    assert plan_session("/bin/bash", "scp --help", None).kind == "command"


def _info(recording_id: str, started: datetime, size: int, live: bool = False) -> RecordingInfo:
    return RecordingInfo(
        id=recording_id,
        engineer="e",
        kind="shell",
        command=None,
        started=started,
        ended=None if live else started,
        exit_status=0,
        size=size,
        live=live,
    )


def test_retention_removes_the_too_old_then_the_oldest_until_it_fits() -> None:
    now = datetime(2026, 11, 25, tzinfo=UTC)
    recs = [
        _info("a", now - timedelta(days=100), 10),
        _info("b", now - timedelta(days=5), 40),
        _info("c", now - timedelta(days=4), 40),
        _info("d", now - timedelta(days=3), 40),
        _info("live", now - timedelta(days=200), 30, live=True),
    ]
    removals = select_for_removal(recs, now=now, max_age_seconds=90 * 86400, max_total=100)
    assert [(r.id, r.reason) for r in removals] == [("a", "age"), ("b", "size"), ("c", "size")]
    assert select_for_removal(recs[1:4], now=now, max_age_seconds=1e9, max_total=120) == []


def test_sizes_read_like_people_write_them() -> None:
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("500 MB") == 500_000_000
    assert parse_size("64k") == 64_000
    assert parse_size(4096) == 4096
    for bad in ("", "-1MB", "10 parsecs", 0, True, "nanMB"):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


def test_playback_keeps_timing_caps_idle_and_scales_speed() -> None:
    cast = "\n".join(
        [
            json.dumps({"version": 2, "width": 80, "height": 24}),
            json.dumps([0.5, "o", "a"]),
            json.dumps([0.6, "r", "100x30"]),
            json.dumps([10.5, "o", "b"]),
            "not json",
        ]
    )
    assert list(playback(cast, speed=1.0, max_idle=None)) == [(0.5, "a"), (10.0, "b")]
    assert list(playback(cast, speed=2.0, max_idle=2.0)) == [(0.25, "a"), (1.0, "b")]


def test_recorder_options_are_read_strictly() -> None:
    options = parse_args(["--dir", "/r", "--serial", "S1", "--fail", "open", "--max-bytes", "9"])
    assert (options.dir, options.serial, options.fail, options.max_bytes) == (
        Path("/r"),
        "S1",
        "open",
        9,
    )
    assert parse_args(["--dir", "/r", "--check"]).check
    for bad, words in (
        ([], "--dir is required"),
        (["--dir"], "needs a value"),
        (["--dir", "/r", "--fail", "maybe"], "closed or open"),
        (["--dir", "/r", "--max-bytes", "-1"], "number of bytes"),
        (["--dir", "/r", "--shell"], "unknown option"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_args(bad)


def test_a_recording_whose_recorder_died_is_ended_not_live(tmp_path: Path) -> None:
    """Issue 11: a session cut off by a close is shown ended, with its duration."""
    import fcntl
    import json
    import os
    from datetime import UTC, datetime

    from tether.agent.recording.catalog import info_for
    from tether.agent.recording.watch import notification

    recording_id = "20261125T031502Z-3f9c2a1b"
    cast = tmp_path / f"{recording_id}.cast.gz"
    cast.write_bytes(b"")
    started = datetime(2026, 11, 25, 3, 15, 2, tzinfo=UTC)
    os.utime(cast, (started.timestamp() + 90, started.timestamp() + 90))  # its last write
    meta = {"status": "live", "engineer": "alice", "kind": "shell", "started": started.isoformat()}
    (tmp_path / f"{recording_id}.json").write_text(json.dumps(meta))
    with cast.open("rb") as held:  # the recorder holds its lock: live
        fcntl.flock(held, fcntl.LOCK_EX)
        assert info_for(tmp_path, recording_id).live
    info = info_for(tmp_path, recording_id)  # the recorder is gone, killed with its session
    assert not info.live
    assert info.cut_off
    assert info.duration == 90.0
    body = notification("support.logout", info)
    assert body["live"] is False
    assert body["duration"] == 90.0


def test_a_recording_with_an_error_or_lost_output_counts_as_failed(tmp_path: Path) -> None:
    started = datetime(2026, 11, 25, 3, 15, 2, tzinfo=UTC)
    ids = [new_recording_id(started) for _ in range(3)]
    metas: list[dict[str, object]] = [
        {"status": "done", "exit_status": 1},  # the engineer's command failed: not ours
        {"status": "done", "exit_status": 0, "write_error": True},  # disk full mid-session
        {"status": "done", "exit_status": 127, "error": "session failed: no shell"},
    ]
    for recording_id, meta in zip(ids, metas, strict=True):
        (tmp_path / f"{recording_id}.cast.gz").write_bytes(gzip.compress(b"{}\n"))
        (tmp_path / f"{recording_id}.json").write_text(json.dumps(meta))
    found = {info.id: info for info in list_recordings(tmp_path)}
    assert [found[i].failed for i in ids] == [False, True, True]
    assert found[ids[2]].to_json()["error"] == "session failed: no shell"
    assert found[ids[1]].to_json()["write_error"] is True

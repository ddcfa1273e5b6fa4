"""The agent's side of recording, with the real recorder (no sshd) and a real HTTP receiver:
support.login / support.logout / recording.stored in the audit log, the webhook (retried
after a 500) and the command hook, catching up after a restart without auditing twice,
and retention removing the oldest recordings, each removal audited."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tether.agent.notify import Notifier
from tether.agent.recording.catalog import list_recordings, read_cast
from tether.agent.recording.watch import RecordingWatcher
from tether.audit_log import AuditLog
from tether.config import AgentConfig, NotifySettings, RecordingSettings

SRC = str(Path(__file__).resolve().parents[2] / "src")


class Receiver:
    """A webhook receiver on 127.0.0.1: answers 500 to the first POST, then 204."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts == 1:
                    self.send_response(500)
                else:
                    receiver.bodies.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def _recorder(
    directory: Path, command: str, extra: list[str] | None = None, **kwargs: Any
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": SRC, "SSH_ORIGINAL_COMMAND": command}
    env.pop("SSH_USER_AUTH", None)
    argv = [sys.executable, "-m", "tether.agent.recording.recorder", "--dir", str(directory)]
    return subprocess.Popen([*argv, "--serial", "S-1", *(extra or [])], env=env, **kwargs)


def _events(audit: AuditLog) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, dict(e.fields)) for e in audit.entries()]


async def _until(check: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_sessions_are_audited_announced_once_and_retained(
    tmp_path: Path, receiver: Receiver
) -> None:
    directory = tmp_path / "recordings"
    directory.mkdir()
    hook_file = tmp_path / "hook.jsonl"
    config = AgentConfig(
        path=tmp_path / "agent.toml",
        serial="S-1",
        vendor_keys=(),
        state_dir=tmp_path,
        recording=RecordingSettings(directory=directory, max_total=1 << 20),
        notify=NotifySettings(
            webhook_url=receiver.url,
            command=("/bin/sh", "-c", f'cat >> {hook_file}; echo "$TETHER_EVENT" >> {hook_file}'),
            timeout=5.0,
        ),
    )
    audit = AuditLog(tmp_path / "audit.log")
    notifier = Notifier(config.notify, backoff_first=0.05)
    watcher = RecordingWatcher(config, audit, notify=notifier.send)
    delivery = asyncio.get_running_loop().create_task(notifier.serve())
    try:
        # A live session: login only.
        live = _recorder(directory, "read line; echo got $line; exit 3", stdin=subprocess.PIPE)
        await _until(lambda: len(list_recordings(directory)) == 1)
        await _until(lambda: any(r.live for r in list_recordings(directory)))
        await asyncio.to_thread(watcher.scan)
        assert [e for e, _ in _events(audit)] == ["support.login"]
        assert live.stdin is not None
        live.stdin.write(b"hello\n")
        live.stdin.close()
        assert await asyncio.to_thread(live.wait, 10) == 3
        await asyncio.to_thread(watcher.scan)
        events = _events(audit)
        assert [e for e, _ in events] == ["support.login", "support.logout", "recording.stored"]
        (info,) = list_recordings(directory)
        assert events[1][1]["exit_status"] == 3
        assert events[1][1]["engineer"] == "unknown"  # no certificate outside sshd
        assert events[2][1]["size"] == info.size
        assert "got hello" in read_cast(directory, info.id)
        # Taken over: root's, 0600 (the support account can no longer rewrite it).
        stat = (directory / f"{info.id}.cast.gz").stat()
        assert (stat.st_uid, stat.st_mode & 0o777) == (0, 0o600)

        # Webhook: login and logout, in order, the first attempt (500) retried.
        await _until(lambda: len(receiver.bodies) == 2)
        assert [b["event"] for b in receiver.bodies] == ["support.login", "support.logout"]
        assert receiver.attempts == 3
        assert receiver.bodies[1]["session"] == info.id
        assert receiver.bodies[1]["exit_status"] == 3
        assert receiver.bodies[1]["serial"] == "S-1"
        await _until(lambda: hook_file.exists() and hook_file.read_text().count("\n") == 4)
        lines = hook_file.read_text().splitlines()
        assert json.loads(lines[0])["event"] == "support.login"
        assert lines[1] == "support.login"
        assert lines[3] == "support.logout"

        # A session that ended while the daemon was down is caught up once.
        done = _recorder(directory, "echo offline", stdout=subprocess.DEVNULL)
        assert await asyncio.to_thread(done.wait, 10) == 0
        restarted = RecordingWatcher(config, audit)
        await asyncio.to_thread(restarted.scan)
        await asyncio.to_thread(restarted.scan)
        assert [e for e, _ in _events(audit)][3:] == [
            "support.login",
            "support.logout",
            "recording.stored",
        ]
    finally:
        delivery.cancel()
        await asyncio.gather(delivery, return_exceptions=True)
    assert "s3cret" not in (tmp_path / "audit.log").read_text()


def _old_recording(directory: Path, started: datetime, size: int) -> str:
    recording_id = f"{started:%Y%m%dT%H%M%SZ}-{os.urandom(4).hex()}"
    head = json.dumps({"version": 2, "width": 80, "height": 24})
    data = gzip.compress(head.encode() + b"\n") + os.urandom(size)  # padding: size on disk
    (directory / f"{recording_id}.cast.gz").write_bytes(data)
    meta = {"status": "done", "started": started.isoformat(), "ended": started.isoformat()}
    (directory / f"{recording_id}.json").write_text(json.dumps({**meta, "exit_status": 0}))
    return recording_id


def test_retention_removes_the_oldest_first_and_audits_each(tmp_path: Path) -> None:
    directory = tmp_path / "recordings"
    directory.mkdir()
    now = datetime.now(UTC)
    ancient = _old_recording(directory, now - timedelta(days=200), 1000)
    older = _old_recording(directory, now - timedelta(days=3), 40_000)
    old = _old_recording(directory, now - timedelta(days=2), 40_000)
    new = _old_recording(directory, now - timedelta(days=1), 40_000)
    config = AgentConfig(
        path=tmp_path / "agent.toml",
        serial="S-1",
        vendor_keys=(),
        state_dir=tmp_path,
        recording=RecordingSettings(
            directory=directory, max_age=timedelta(days=90), max_total=100_000
        ),
    )
    audit = AuditLog(tmp_path / "audit.log")
    RecordingWatcher(config, audit).scan()
    removed = [(f["session"], f["reason"]) for e, f in _events(audit) if e == "recording.removed"]
    assert removed == [(ancient, "age"), (older, "size")]
    assert [r.id for r in list_recordings(directory)] == [old, new]
    # Removed by hand, not by retention: that is audited too.
    (directory / f"{old}.cast.gz").unlink()
    RecordingWatcher(config, audit).scan()
    assert _events(audit)[-1] == ("recording.missing", {"session": old})


def test_metadata_the_audit_log_refuses_is_withheld_not_the_entry(tmp_path: Path) -> None:
    """The support account writes the metadata: a command that looks like a tether key
    (or anything else the log refuses) must not stop the audit."""
    directory = tmp_path / "recordings"
    directory.mkdir()
    recording_id = _old_recording(directory, datetime.now(UTC), 10)
    meta = json.loads((directory / f"{recording_id}.json").read_text())
    meta.update(engineer="mallory", command="echo v4.public.eyJzZWNyZXQiOiJ4In0", kind="command")
    (directory / f"{recording_id}.json").write_text(json.dumps(meta))
    config = AgentConfig(
        path=tmp_path / "agent.toml",
        serial="S-1",
        vendor_keys=(),
        state_dir=tmp_path,
        recording=RecordingSettings(directory=directory),
    )
    audit = AuditLog(tmp_path / "audit.log")
    RecordingWatcher(config, audit).scan()
    events = _events(audit)
    assert [e for e, _ in events] == ["support.login", "support.logout", "recording.stored"]
    assert events[0][1]["session"] == recording_id
    assert "looks like a private key or a tether key" in events[0][1]["withheld"]
    assert "v4.public" not in (tmp_path / "audit.log").read_text()
    assert events[1][1]["engineer"] == "mallory"


async def test_a_login_waiting_for_consent_is_announced_and_runs_once_admitted(
    tmp_path: Path,
) -> None:
    directory, decisions = tmp_path / "recordings", tmp_path / "consent"
    directory.mkdir()
    decisions.mkdir()
    config = AgentConfig(
        path=tmp_path / "agent.toml",
        serial="S-1",
        vendor_keys=(),
        state_dir=tmp_path,
        recording=RecordingSettings(directory=directory),
    )
    sent: list[dict[str, Any]] = []
    watcher = RecordingWatcher(config, AuditLog(tmp_path / "audit.log"), notify=sent.append)
    waiting = _recorder(
        directory,
        "echo ran",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        extra=["--consent-dir", str(decisions), "--consent-timeout", "30"],
    )
    try:
        await _until(lambda: any(r.live for r in list_recordings(directory)))
        await asyncio.to_thread(watcher.scan)
        assert [b["event"] for b in sent] == ["support.login", "support.login_requested"]
        assert sent[1]["consent"] == {"state": "waiting"}
        (info,) = list_recordings(directory)
        (decisions / info.id).write_text(json.dumps({"decision": "admit", "by": "test"}))
        out, err = await asyncio.to_thread(waiting.communicate, None, 20)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert out == b"ran\n", err
    assert b"waiting for the customer to admit you" in err
    (info,) = list_recordings(directory)
    assert info.consent is not None
    assert (info.consent["state"], info.consent["by"]) == ("admitted", "test")

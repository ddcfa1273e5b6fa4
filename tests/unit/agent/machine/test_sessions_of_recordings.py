"""Which support session writes a recording: the kernel's word, not the metadata's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.agent.machine.sessions import recorder_of
from tether.agent.recording.catalog import info_for
from tether.agent.recording.recorder.cast import cast_path, meta_path
from tether.agent.web.live import session_of

RECORDING = "20261207T052500Z-3f9c2a1b"

#: A stand-in for an sshd monitor: a process whose child runs ``child`` (Python code
#: given the recording's path) and which stays until killed.
_SESSION = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(child.pid, flush=True)
time.sleep(120)
"""
_RECORDER = """
import fcntl, sys, time
f = open(sys.argv[1], "ab")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""
_READER = """
import sys, time
f = open(sys.argv[1], "rb")
print("open", flush=True)
time.sleep(120)
"""


class Session:
    """A monitor-like process and the pid of its child."""

    def __init__(self, child_code: str, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SESSION, child_code, str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.child = int(self.proc.stdout.readline())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        subprocess.run(["pkill", "-KILL", "-P", str(self.proc.pid)], check=False)
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    started: list[Session] = []
    yield started
    for session in started:
        session.stop()


def _until(check: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.02)
    raise AssertionError(what)


def _recording(tmp_path: Path, metadata_pid: int) -> Path:
    cast = cast_path(tmp_path, RECORDING)
    cast.write_bytes(b"")
    meta_path(tmp_path, RECORDING).write_text(json.dumps({"status": "live", "pid": metadata_pid}))
    return cast


def test_the_lock_holder_is_the_recorder_whatever_else_has_the_file_open(
    tmp_path: Path, sessions: list[Session]
) -> None:
    cast = _recording(tmp_path, 1)
    assert recorder_of(cast) is None  # nobody holds its lock: no live recorder
    recorder = Session(_RECORDER, cast)
    sessions.append(recorder)
    _until(lambda: recorder_of(cast) == recorder.child, "the lock holder was not found")
    sessions.append(reader := Session(_READER, cast))  # the support account opens it too
    time.sleep(0.2)
    assert recorder_of(cast) == recorder.child
    assert reader.child != recorder.child


def test_a_link_to_a_locked_recording_names_no_recorder(
    tmp_path: Path, sessions: list[Session]
) -> None:
    cast = _recording(tmp_path, 1)
    sessions.append(recorder := Session(_RECORDER, cast))
    _until(lambda: recorder_of(cast) == recorder.child, "the lock holder was not found")
    link = tmp_path / "link.cast.gz"
    link.symlink_to(cast)
    assert recorder_of(link) is None


def test_a_rewritten_metadata_pid_cannot_point_the_page_at_another_session(
    tmp_path: Path, sessions: list[Session]
) -> None:
    """The support account owns the metadata file: it names the other session's process
    there, and the page still ends the session whose recorder holds the recording."""
    cast = cast_path(tmp_path, RECORDING)
    cast.write_bytes(b"")
    sessions.append(watched := Session(_RECORDER, cast))
    sessions.append(decoy := Session(_READER, cast))
    _until(lambda: recorder_of(cast) == watched.child, "the lock holder was not found")
    meta_path(tmp_path, RECORDING).write_text(json.dumps({"status": "live", "pid": decoy.child}))
    info = info_for(tmp_path, RECORDING)
    assert info.pid == decoy.child  # what the metadata says...
    monitors = {watched.pid, decoy.pid}
    assert session_of(tmp_path, info, monitors) == watched.pid  # ...is not what counts
    # A recording whose recorder runs under no listed session belongs to none of them.
    assert session_of(tmp_path, info, {decoy.pid}) is None

"""The live view's stream in one process: the recorder's feed and the customer's reader.

A real Unix socket in a temporary directory; no sshd. What a watcher sees, that a slow
one is let go instead of waited for, that one cannot send anything in, and that a
forged stream line is never passed on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tether.agent.recording.follow import (
    End,
    Full,
    Output,
    Start,
    Transfers,
    connect,
    follow,
    parse,
)
from tether.agent.recording.recorder.cast import cast_path
from tether.agent.recording.recorder.live import MAX_WATCHERS, RECENT, LiveFeed, live_path
from tether.cli import access_watch
from tether.errors import NotReady

SESSION = "20261207T020000Z-0123456789ab"


def _feed(directory: Path) -> LiveFeed:
    cast_path(directory, SESSION).write_bytes(b"")  # the recorder's file: its owner is checked
    return LiveFeed(live_path(directory, SESSION), 80, 24)


def test_a_watcher_sees_the_screen_so_far_then_each_event_and_the_end(tmp_path: Path) -> None:
    feed = _feed(tmp_path)
    feed.output(b"before \xe2\x82")  # a character cut in two by the reads
    feed.output(b"\xac\r\n")
    conn = connect(tmp_path, SESSION)
    feed.accept()
    assert feed.watched
    feed.output(b"marker\r\n")
    feed.resize(100, 30)
    feed.transfers([{"op": "upload", "path": "/tmp/x", "bytes": 5}])
    feed.close(3)
    messages = list(follow(conn))
    assert messages[0] == Start(80, 24, messages[0].time, "before \u20ac\r\n")  # type: ignore[union-attr]
    assert [m for m in messages[1:] if isinstance(m, Output)] == [
        Output(messages[1].time, "o", "marker\r\n"),  # type: ignore[union-attr]
        Output(messages[2].time, "r", "100x30"),  # type: ignore[union-attr]
    ]
    assert Transfers(({"op": "upload", "path": "/tmp/x", "bytes": 5},)) in messages
    assert messages[-1] == End(3)
    assert not live_path(tmp_path, SESSION).exists()


def test_a_late_watcher_gets_only_the_recent_output(tmp_path: Path) -> None:
    feed = _feed(tmp_path)
    feed.output(b"old" + b"x" * RECENT)
    feed.output(b"new")
    conn = connect(tmp_path, SESSION)
    feed.accept()
    feed.close(0)
    start = next(follow(conn))
    assert isinstance(start, Start)
    assert start.init.endswith("new")
    assert "old" not in start.init
    assert len(start.init) == RECENT


@pytest.mark.timeout(30)
def test_a_watcher_that_does_not_read_is_let_go_never_waited_for(tmp_path: Path) -> None:
    feed = _feed(tmp_path)
    stalled = socket.socket(socket.AF_UNIX)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(str(live_path(tmp_path, SESSION)))
    feed.accept()
    assert feed.watched
    chunk = b"y" * 65536
    started = time.monotonic()
    for _ in range(64):  # 4 MiB: far more than the watcher's socket holds
        feed.output(chunk)
    assert not feed.watched  # dropped, and output went on
    assert time.monotonic() - started < 10  # (a blocking send would hang here for good)
    stalled.close()
    feed.close(0)


def test_nothing_a_watcher_sends_gets_in(tmp_path: Path) -> None:
    feed = _feed(tmp_path)
    watcher = socket.socket(socket.AF_UNIX)
    watcher.connect(str(live_path(tmp_path, SESSION)))
    feed.accept()
    with pytest.raises(BrokenPipeError):
        watcher.send(b"rm -rf /\r")
    feed.close(0)
    watcher.close()


def test_a_long_directory_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(live_path(deep, SESSION))) > 108
    feed = _feed(deep)
    conn = connect(deep, SESSION)
    feed.accept()
    feed.close(7)
    assert list(follow(conn))[-1] == End(7)


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'[1, "i", "typed input"]',
        b'[1, "o", 5]',
        b'["1", "o", "x"]',
        b'{"cols": 0, "rows": 24, "time": 0, "init": ""}',
        b'{"cols": "80", "rows": 24, "time": 0, "init": ""}',
        b'{"cols": 80, "rows": 24, "time": 0}',
        b"[true, 1]",
        b'{"full": true}',
        b'{"full": {"watchers": "8"}}',
        b'{"full": {"watchers": 0}}',
    ],
)
def test_a_forged_stream_line_is_dropped(line: bytes) -> None:
    assert parse(line) is None


def test_stream_messages_are_checked_field_by_field() -> None:
    forged = {"transfer": [{"op": "upload", "path": "/x", "bytes": "9"}, "junk", {"op": 1}]}
    assert parse(json.dumps(forged).encode()) == Transfers(({"op": "upload", "path": "/x"},))
    assert parse(b'{"end": {"status": "0"}}') == End(None)
    assert parse(b'[1.5, "o", "hi"]') == Output(1.5, "o", "hi")
    assert parse(b'{"full": {"watchers": 8}}') == Full(8)


def _listener(path: Path) -> socket.socket:
    """A socket the test owns, where a swapped-in link could lead a watcher."""
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    other.listen(1)
    other.setblocking(False)
    return other


def test_a_link_in_place_of_the_live_socket_is_refused_and_never_connected_to(
    tmp_path: Path,
) -> None:
    cast_path(tmp_path, SESSION).write_bytes(b"")
    other = _listener(tmp_path / "other.sock")
    live_path(tmp_path, SESSION).symlink_to(tmp_path / "other.sock")
    with pytest.raises(NotReady, match="is not the live stream"):
        connect(tmp_path, SESSION)
    with pytest.raises(BlockingIOError):
        other.accept()  # nobody ever connected to it
    other.close()


def test_a_link_swapped_in_after_the_check_is_never_connected_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = _feed(tmp_path)
    other = _listener(tmp_path / "other.sock")
    path = live_path(tmp_path, SESSION)
    checked = stat.S_ISSOCK

    def check_then_swap(mode: int) -> bool:
        # The support account wins the race: right after the check, the entry
        # becomes a link to another socket.
        result = checked(mode)
        path.rename(tmp_path / "moved.sock")
        path.symlink_to(tmp_path / "other.sock")
        return result

    monkeypatch.setattr(stat, "S_ISSOCK", check_then_swap)
    conn = connect(tmp_path, SESSION)
    monkeypatch.undo()
    with pytest.raises(BlockingIOError):
        other.accept()  # the link was not followed
    feed.accept()
    assert feed.watched  # the socket that was checked is the one connected to
    feed.close(0)
    conn.close()
    other.close()


@contextlib.contextmanager
def _running(directory: Path, answer: Callable[[], None], ready: int) -> Iterator[None]:
    """The session is live (its recording locked) and ``answer`` takes each connection."""
    locked = os.open(cast_path(directory, SESSION), os.O_RDONLY)
    fcntl.flock(locked, fcntl.LOCK_EX)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if select.select([ready], [], [], 0.05)[0]:
                answer()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        os.close(locked)


def _counting_connects(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    made: list[None] = []

    def counted(directory: Path, recording_id: str) -> socket.socket:
        made.append(None)
        return connect(directory, recording_id)

    monkeypatch.setattr(access_watch, "connect", counted)
    monkeypatch.setattr(access_watch, "RECONNECT_FOR", 1.0)
    return made


@pytest.mark.timeout(30)
def test_a_watcher_turned_away_by_a_full_session_says_so_and_gives_up_without_hammering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = _feed(tmp_path)
    others = []
    for _ in range(MAX_WATCHERS):
        others.append(connect(tmp_path, SESSION))
        feed.accept()
    made = _counting_connects(monkeypatch)
    with (
        _running(tmp_path, feed.accept, feed.fileno()),
        pytest.raises(NotReady, match=f"{MAX_WATCHERS} watchers already follow session"),
    ):
        access_watch._watch(tmp_path, SESSION)
    told = capsys.readouterr().err
    assert told.count(f"{MAX_WATCHERS} watchers already follow this session; retrying") == 1
    # One try per pause, not tens of thousands a second.
    assert 2 <= len(made) <= 1.0 / access_watch.RETRY_PAUSE + 2
    assert len(feed._watchers) == MAX_WATCHERS  # the watchers already there stay
    feed.close(0)
    for conn in others:
        conn.close()


@pytest.mark.timeout(30)
def test_a_stream_that_ends_before_it_starts_is_retried_with_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cast_path(tmp_path, SESSION).write_bytes(b"")
    closing = socket.socket(socket.AF_UNIX)  # a recorder that closes every watcher at once
    closing.bind(str(live_path(tmp_path, SESSION)))
    closing.listen(8)

    def close_at_once() -> None:
        closing.accept()[0].close()

    made = _counting_connects(monkeypatch)
    with _running(tmp_path, close_at_once, closing.fileno()):
        assert access_watch._watch(tmp_path, SESSION) is None
    assert 2 <= len(made) <= 1.0 / access_watch.RETRY_PAUSE + 2
    closing.close()

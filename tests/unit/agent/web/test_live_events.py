"""The page's live stream (server-sent events) of a session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.agent.recording.test_live_feed import SESSION, _feed, _running
from tether.agent.recording.follow import connect
from tether.agent.recording.recorder.live import MAX_WATCHERS
from tether.agent.web.live import LiveStreams, live_events


def _events(raw: list[bytes]) -> list[tuple[str, object]]:
    out = []
    for chunk in raw:
        text = chunk.decode()
        if text.startswith("retry:"):
            continue
        name = "message"
        for line in text.strip().splitlines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((name, json.loads(line.removeprefix("data: "))))
    return out


@pytest.mark.timeout(30)
async def test_a_full_session_says_so_once_and_the_stream_ends(tmp_path: Path) -> None:
    """With every watcher place taken, the page is told why it shows nothing (and its
    script stops asking), rather than a stream that ends and is asked for again."""
    feed = _feed(tmp_path)
    others = []
    for _ in range(MAX_WATCHERS):
        others.append(connect(tmp_path, SESSION))
        feed.accept()
    try:
        with _running(tmp_path, feed.accept, feed.fileno()):
            got = [chunk async for chunk in live_events(tmp_path, SESSION, LiveStreams())]
        assert _events(got) == [("full", {"watchers": MAX_WATCHERS})]
        assert len(feed._watchers) == MAX_WATCHERS  # the watchers already there stay
    finally:
        feed.close(0)
        for conn in others:
            conn.close()


@pytest.mark.timeout(30)
async def test_the_stream_gives_the_screen_then_the_end(tmp_path: Path) -> None:
    feed = _feed(tmp_path)
    with _running(tmp_path, feed.accept, feed.fileno()):
        stream = live_events(tmp_path, SESSION, LiveStreams())
        got = [await anext(stream), await anext(stream)]  # retry, then the start
        feed.output(b"hello\r\n")
        got.append(await anext(stream))
        feed.close(3)
        got += [chunk async for chunk in stream]
    events = _events(got)
    assert events[-1] == ("done", {"status": 3})
    assert any(name == "message" and "hello" in json.dumps(data) for name, data in events)

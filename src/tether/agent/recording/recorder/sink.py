"""Where the recorder puts a session's output: its recording and the live view (stdlib only).

:class:`Recording` writes the asciicast (:mod:`.cast`) and metadata files and feeds
the live view (:mod:`.live`); :class:`Unrecorded` stands in for it when ``--fail
open`` let a session run without a recording.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tether.agent.recording.recorder.cast import CastWriter, cast_path, meta_path, open_new
from tether.agent.recording.recorder.live import LiveFeed, live_path


class Recording:
    """One session's files: the asciicast stream (locked) and its metadata."""

    def __init__(self, directory: Path, meta: dict[str, Any], head: dict[str, Any], limit: int):
        self.directory = directory
        self.meta = meta
        self.id = str(meta["id"])
        self._fd = open_new(str(cast_path(directory, self.id)))
        self.live: LiveFeed | None = None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file = os.fdopen(self._fd, "wb", buffering=0)
            self.writer = CastWriter(self._file, head, limit=limit)
            self.write_meta()
            self.live = _open_feed(directory, self.id, head)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(cast_path(directory, self.id))
            os.close(self._fd)
            raise

    def write_meta(self) -> None:
        """Replace the metadata file (write a new file, then rename it over the old)."""
        temporary = self.directory / f".{self.id}.tmp"
        data = json.dumps(self.meta, ensure_ascii=False, indent=1).encode() + b"\n"
        fd = open_new(str(temporary))
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temporary, meta_path(self.directory, self.id))

    def output(self, data: bytes) -> None:
        try:
            self.writer.output(data)
        except OSError:
            self.meta["write_error"] = True
        if self.live is not None:
            self.live.output(data)

    def resize(self, columns: int, rows: int) -> None:
        with contextlib.suppress(OSError):
            self.writer.resize(columns, rows)
        if self.live is not None:
            self.live.resize(columns, rows)

    def live_fd(self) -> int | None:
        """The live view's listening socket, for the copy loop's ``select``."""
        return self.live.fileno() if self.live is not None else None

    def accept_watchers(self) -> None:
        if self.live is not None:
            self.live.accept()

    def transfers(self, current: list[dict[str, Any]]) -> None:
        if self.live is not None:
            self.live.transfers(current)

    def tick(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.maybe_flush()

    def finish(self, status: int, transfers: list[dict[str, Any]], notes: list[str]) -> None:
        """Close the stream and write the final metadata (best effort: never raises)."""
        if transfers or notes:
            lines = [f"tether: {n}" for n in notes]
            lines += [f"tether: {_describe(t)}" for t in transfers]
            self.output(("\r\n".join(lines) + "\r\n").encode())
        with contextlib.suppress(OSError):
            self.writer.close()
        if self.live is not None:
            self.live.close(status)
            self.live = None
        self.meta.update(
            status="done",
            ended=datetime.now(UTC).isoformat(),
            exit_status=status,
            recorded_bytes=self.writer.recorded,
            truncated=self.writer.truncated,
            transfers=transfers,
        )
        if notes:
            self.meta["notes"] = notes
        with contextlib.suppress(OSError):
            self.write_meta()
        with contextlib.suppress(OSError):
            self._file.close()


class Unrecorded:
    """Stands in for a :class:`Recording` when ``--fail open`` let a session run without."""

    def output(self, data: bytes) -> None:
        pass

    def resize(self, columns: int, rows: int) -> None:
        pass

    def live_fd(self) -> int | None:
        return None

    def accept_watchers(self) -> None:
        pass

    def transfers(self, current: list[dict[str, Any]]) -> None:
        pass

    def tick(self) -> None:
        pass

    def finish(self, status: int, transfers: list[dict[str, Any]], notes: list[str]) -> None:
        pass


Sink = Recording | Unrecorded


def _open_feed(directory: Path, recording_id: str, head: dict[str, Any]) -> LiveFeed | None:
    """The live view's socket; a session runs (recorded) without one if it cannot be made."""
    try:
        return LiveFeed(live_path(directory, recording_id), int(head["width"]), int(head["height"]))
    except OSError:
        return None


def _describe(transfer: dict[str, Any]) -> str:
    text = f"{transfer.get('op')} {transfer.get('path')}"
    if "bytes" in transfer:
        text += f" ({transfer['bytes']} bytes)"
    if transfer.get("target"):
        text += f" -> {transfer['target']}"
    return text

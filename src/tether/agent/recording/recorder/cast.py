"""asciicast v2 recordings, gzip-compressed and written as the session runs (stdlib only).

A recording is one ``.cast.gz`` file: a JSON header line, then one JSON array per event,
``[seconds_since_start, "o", text]`` for output and ``[t, "r", "COLSxROWS"]`` for a
window resize (the asciicast v2 format asciinema and asciinema-player read). The gzip
stream is flushed (``Z_SYNC_FLUSH``) at least every :data:`FLUSH_EVERY` seconds, so a
recorder killed mid-session leaves everything up to the last flush readable:
:func:`decompress_partial` reads such a cut stream.

This module is imported by the recorder that sshd runs as the support account, often
under the system's own Python: it must use nothing outside the standard library.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import time
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

#: Longest time (seconds) recorded output may wait in memory before it reaches the disk.
FLUSH_EVERY = 1.0
CAST_SUFFIX = ".cast.gz"
META_SUFFIX = ".json"


def new_recording_id(now: datetime) -> str:
    """Return a fresh id for a session starting at ``now`` (timezone-aware)."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{os.urandom(6).hex()}"


def cast_path(directory: Path, recording_id: str) -> Path:
    """The recording's asciicast file."""
    return directory / f"{recording_id}{CAST_SUFFIX}"


def meta_path(directory: Path, recording_id: str) -> Path:
    """The recording's metadata file."""
    return directory / f"{recording_id}{META_SUFFIX}"


def header(
    width: int,
    height: int,
    timestamp: float,
    env: Mapping[str, str],
    tether: Mapping[str, Any],
) -> dict[str, Any]:
    """Return an asciicast v2 header; ``tether`` holds Tether's own metadata (engineer…)."""
    return {
        "version": 2,
        "width": max(1, int(width)),
        "height": max(1, int(height)),
        "timestamp": int(timestamp),
        "env": {k: v for k, v in env.items() if v},
        "tether": dict(tether),
    }


class CastWriter:
    """Writes one asciicast v2 stream into ``stream`` through gzip.

    Output text is decoded incrementally as UTF-8 (a character split across two reads
    stays whole; invalid bytes become U+FFFD). After ``limit`` bytes of output the
    writer stops recording output and :attr:`truncated` turns true; the session itself
    is not affected.

    :param stream: a binary file opened for writing (owned by the caller).
    :param head: the header from :func:`header`.
    :param limit: most bytes of output to record.
    :param clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        stream: IO[bytes],
        head: Mapping[str, Any],
        *,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._gz = gzip.GzipFile(fileobj=stream, mode="wb", mtime=0)
        self._clock = clock
        self._start = clock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._limit = limit
        self._last_flush = self._start
        self._dirty = False
        self.recorded = 0
        self.truncated = False
        self._line(head)
        self.flush()

    def _line(self, value: Any) -> None:
        self._gz.write(json.dumps(value, ensure_ascii=False).encode() + b"\n")
        self._dirty = True

    def _elapsed(self) -> float:
        return round(float(self._clock()) - self._start, 6)

    def output(self, data: bytes) -> None:
        """Record ``data`` the session wrote (up to the limit)."""
        if self.truncated or not data:
            return
        room = self._limit - self.recorded
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self.recorded += len(data)
        text = self._decoder.decode(data, final=self.truncated)
        if text:
            self._line([self._elapsed(), "o", text])
        self.maybe_flush()

    def resize(self, columns: int, rows: int) -> None:
        """Record a window size change."""
        self._line([self._elapsed(), "r", f"{columns}x{rows}"])
        self.maybe_flush()

    def maybe_flush(self) -> None:
        """Flush if output has waited :data:`FLUSH_EVERY` seconds (cheap to call often)."""
        if self._dirty and self._clock() - self._last_flush >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Push everything recorded so far to the file (readable after a crash)."""
        self._gz.flush(zlib.Z_SYNC_FLUSH)
        self._stream.flush()
        self._last_flush = self._clock()
        self._dirty = False

    def close(self) -> None:
        """Finish the stream (the caller closes the file)."""
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._line([self._elapsed(), "o", tail])
        self._gz.close()


def decompress_partial(data: bytes, chunk: int = 65536) -> bytes:
    """Return what a gzip stream holds, also when it was cut short (a crashed recorder)
    or damaged (everything before the damage is kept)."""
    out: list[bytes] = []
    inflater = zlib.decompressobj(wbits=31)
    at = 0
    while at < len(data):
        saved = inflater.copy()
        try:
            out.append(inflater.decompress(data[at : at + chunk]))
        except zlib.error:
            # The damage is somewhere in this chunk: keep what precedes it.
            inflater = saved
            for offset in range(at, min(at + chunk, len(data))):
                try:
                    out.append(inflater.decompress(data[offset : offset + 1]))
                except zlib.error:
                    break
            break
        at += chunk
        if inflater.eof:  # another gzip member may follow
            rest = inflater.unused_data + data[at:]
            inflater, data, at = zlib.decompressobj(wbits=31), rest, 0
    return b"".join(out)


def open_new(path: str) -> int:
    """Create ``path`` for a recording (mode 0600; refuses an existing file or a symlink)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o600)

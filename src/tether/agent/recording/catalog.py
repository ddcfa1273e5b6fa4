"""The recordings directory: names, metadata, listing, reading, retention (stdlib only).

Each support session leaves two files in the recordings directory, named after its id
(``20261125T031502Z-3f9c2a1b``: start time in UTC, then random hex, so names sort by
start time and listing never opens a recording):

- ``ID.cast.gz`` -- the session's output as gzip-compressed asciicast v2
  (:mod:`tether.agent.recording.recorder.cast`);
- ``ID.json`` -- its metadata (:class:`RecordingInfo`): engineer, command, start,
  and once the session has ended its end, exit status and the files transferred.

The recorder (running as the support account) writes both; the agent daemon takes
them over (root, mode 0600) when the session ends. The recorder imports this module,
so it uses nothing outside the standard library.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tether.agent.recording.recorder.cast import (
    CAST_SUFFIX,
    META_SUFFIX,
    cast_path,
    decompress_partial,
    meta_path,
    new_recording_id,
)

__all__ = [
    "CAST_SUFFIX",
    "META_SUFFIX",
    "RecordingInfo",
    "RecordingNotFound",
    "Removal",
    "cast_path",
    "check_id",
    "info_for",
    "is_live",
    "list_recordings",
    "meta_path",
    "new_recording_id",
    "read_cast",
    "recording_ids",
    "select_for_removal",
]
#: A recording id: ``YYYYMMDDTHHMMSSZ-`` and 8 to 32 hex digits.
RECORDING_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8,32}$")
#: Biggest metadata file read (the recorder caps its transfer list well below).
MAX_META_BYTES = 1 << 20


class RecordingNotFound(LookupError):
    """No recording of that id (or the id is not a recording id)."""


def check_id(recording_id: str) -> str:
    """Return ``recording_id`` if it is well formed, else raise :class:`RecordingNotFound`."""
    if not RECORDING_ID.match(recording_id):
        raise RecordingNotFound(
            f"{recording_id!r} is not a recording id (they look like 20261125T031502Z-3f9c2a1b)"
        )
    return recording_id


@dataclass(frozen=True)
class RecordingInfo:
    """One recorded session, as its metadata file describes it.

    :param id: the recording id (also the file names' stem).
    :param engineer: the engineer's name from their certificate ("unknown" if none).
    :param kind: ``shell`` (interactive login), ``command`` (``ssh host cmd``),
        ``sftp`` or ``scp``.
    :param command: what the engineer asked to run (None for a login shell).
    :param started: when the session began (UTC).
    :param ended: when it ended; None while live.
    :param exit_status: the session's exit status (128+N for a signal N).
    :param size: bytes of the ``.cast.gz`` file on disk.
    :param live: the session has not finished: its metadata says so and its recorder
        still holds the recording's lock.
    :param transfers: files moved (``{"op", "path", "bytes"}``), from SFTP or scp.
    """

    id: str
    engineer: str
    kind: str
    command: str | None
    started: datetime
    ended: datetime | None
    exit_status: int | None
    size: int
    live: bool
    serial: str = ""
    account: str = ""
    truncated: bool = False
    recorded_bytes: int = 0
    transfers: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    #: The session was ended from outside (access closed or expired, the page's End):
    #: its recorder died with it, and ``ended`` is the recording's last write.
    cut_off: bool = False
    #: The customer's consent, for a grant that asks it: ``{"state": "waiting"}``, or
    #: ``admitted`` / ``refused`` with ``by``, ``waited`` (seconds) and ``reason``.
    consent: dict[str, Any] | None = None
    #: Why the session failed to start or run (the recorder could not run what was
    #: asked, or found no sftp-server); None if it ran.
    error: str | None = None
    #: Output could not be written to the recording (a full disk): it is incomplete.
    write_error: bool = False
    #: The recorder's process id, as it wrote it: the support account's word only, never
    #: used to find its session (see :func:`tether.agent.machine.sessions.recorder_of`).
    pid: int | None = None

    @property
    def failed(self) -> bool:
        """The session or its recording failed: what monitoring counts as a failure."""
        return self.error is not None or self.write_error

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (None without an end)."""
        if self.ended is None:
            return None
        return max(0.0, (self.ended - self.started).total_seconds())

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "engineer": self.engineer,
            "kind": self.kind,
            "command": self.command,
            "started": self.started.isoformat(),
            "ended": self.ended.isoformat() if self.ended else None,
            "duration": self.duration,
            "exit_status": self.exit_status,
            "size": self.size,
            "live": self.live,
            "serial": self.serial,
            "account": self.account,
            "truncated": self.truncated,
            "recorded_bytes": self.recorded_bytes,
            "transfers": list(self.transfers),
            "cut_off": self.cut_off,
            "error": self.error,
            "write_error": self.write_error,
        }
        if self.consent is not None:
            body["consent"] = dict(self.consent)
        return body


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _started_from_id(recording_id: str) -> datetime:
    return datetime.strptime(recording_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _read_json(path: Path) -> dict[str, Any]:
    """Read a metadata file without following a symlink; {} if missing or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as stream:
        raw = stream.read(MAX_META_BYTES + 1)
    if len(raw) > MAX_META_BYTES:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _text(data: dict[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    return value[:500] if isinstance(value, str) else default


def info_for(directory: Path, recording_id: str) -> RecordingInfo:
    """Return the :class:`RecordingInfo` of one recording (metadata file may be missing)."""
    data = _read_json(meta_path(directory, recording_id))
    try:
        size = cast_path(directory, recording_id).lstat().st_size
    except OSError:
        size = 0
    started = _time(data.get("started")) or _started_from_id(recording_id)
    status = data.get("exit_status")
    transfers = data.get("transfers")
    command = data.get("command")
    error = data.get("error")
    live, ended, cut_off = data.get("status") == "live", _time(data.get("ended")), False
    if live and not is_live(cast_path(directory, recording_id)):
        # The recorder never wrote its end: it was killed with its session (access
        # closed or expired, ended from the page). The session is over; its last
        # output is the best end there is.
        live, cut_off = False, True
        ended = ended or _mtime(cast_path(directory, recording_id)) or started
    return RecordingInfo(
        id=recording_id,
        engineer=_text(data, "engineer", "unknown"),
        kind=_text(data, "kind", "unknown"),
        command=command[:2000] if isinstance(command, str) else None,
        started=started,
        ended=ended,
        exit_status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        size=size,
        live=live,
        serial=_text(data, "serial"),
        account=_text(data, "account"),
        truncated=data.get("truncated") is True,
        recorded_bytes=int(data.get("recorded_bytes") or 0)
        if isinstance(data.get("recorded_bytes"), int)
        else 0,
        transfers=tuple(t for t in transfers if isinstance(t, dict))
        if isinstance(transfers, list)
        else (),
        cut_off=cut_off,
        consent=data["consent"] if isinstance(data.get("consent"), dict) else None,
        error=error[:500] if isinstance(error, str) else None,
        write_error=data.get("write_error") is True,
        pid=pid if isinstance(pid := data.get("pid"), int) and not isinstance(pid, bool) else None,
    )


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.lstat().st_mtime, UTC)
    except OSError:
        return None


def recording_ids(directory: Path) -> list[str]:
    """Return the ids of every recording in ``directory``, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    ids = {name[: -len(CAST_SUFFIX)] for name in names if name.endswith(CAST_SUFFIX)}
    return sorted(i for i in ids if RECORDING_ID.match(i))


def is_live(path: Path) -> bool:
    """Tell whether a recorder still holds its lock on recording ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def list_recordings(directory: Path) -> list[RecordingInfo]:
    """Return every recording in ``directory``, oldest first ([] if there is no directory)."""
    return [info_for(directory, i) for i in recording_ids(directory)]


def read_cast(directory: Path, recording_id: str) -> str:
    """Return the recording's asciicast v2 text, uncompressed.

    A recording whose recorder was killed mid-session returns what was flushed.

    Raises:
        RecordingNotFound: no recording of that id.
        PermissionError: the recording is not readable by this process (not root).
    """
    path = cast_path(directory, check_id(recording_id))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        raise RecordingNotFound(f"no recording {recording_id} in {directory}") from None
    with os.fdopen(fd, "rb") as stream:
        data = stream.read()
    text = decompress_partial(data).decode("utf-8", errors="replace")
    # A cut stream may end mid-line: drop the partial line so every line is JSON.
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return text


@dataclass(frozen=True)
class Removal:
    """A recording retention removes, and why (``age`` or ``size``)."""

    id: str
    reason: str
    size: int


def select_for_removal(
    recordings: Sequence[RecordingInfo],
    *,
    now: datetime,
    max_age_seconds: float,
    max_total: int,
) -> list[Removal]:
    """Pick the recordings retention removes: past ``max_age``, then oldest first until the
    rest fit in ``max_total`` bytes. Live sessions are never removed."""
    done = sorted((r for r in recordings if not r.live), key=lambda r: (r.started, r.id))
    removals: list[Removal] = []
    keep: list[RecordingInfo] = []
    for rec in done:
        if (now - rec.started).total_seconds() > max_age_seconds:
            removals.append(Removal(rec.id, "age", rec.size))
        else:
            keep.append(rec)
    total = sum(r.size for r in keep) + sum(r.size for r in recordings if r.live)
    for rec in keep:
        if total <= max_total:
            break
        removals.append(Removal(rec.id, "size", rec.size))
        total -= rec.size
    return removals

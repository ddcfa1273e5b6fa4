"""The agent's side of session recording: audit, take over, retain, notify.

The recorder runs as the support account and cannot write the agent's audit log (root,
0600). The daemon looks at the recordings directory every second and, for each
session:

- when it first sees the recording: ``support.login`` (engineer, session id, kind,
  command) in the audit log and a ``support.login`` notification, followed by
  ``support.login_requested`` when the login waits for the customer's consent;
- when the recorder's ``flock`` on the recording is free (the session ended, or the
  recorder was killed): takes the files over (root, 0600), then ``support.logout``
  (exit status, duration) and ``recording.stored`` (size, SHA-256 of the file,
  transfers) in the audit log -- the hash ties the recording to the hash chain -- and
  a ``support.logout`` notification;
- retention: recordings past ``max_age``, then the oldest while the total is over
  ``max_total``, are removed, each with a ``recording.removed`` entry; a finished
  recording that vanished otherwise gets ``recording.missing``.

What has been audited is remembered in ``STATE_DIR/recordings.json``, so a daemon
started later catches up on sessions it missed, and nothing is audited twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tether import log
from tether.agent.recording.catalog import (
    RecordingInfo,
    cast_path,
    info_for,
    is_live,
    list_recordings,
    meta_path,
    recording_ids,
    select_for_removal,
)
from tether.agent.recording.recorder.live import live_path
from tether.audit_log import AuditLog
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import AgentConfig

logger = logging.getLogger("tether.agent.recording.catalog")

#: How often (seconds) the daemon looks at the recordings directory.
SCAN_INTERVAL = 1.0
#: How often (seconds) retention runs when no session has ended meanwhile.
RETENTION_INTERVAL = 60.0
LIVE, DONE = "live", "done"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with contextlib.suppress(OSError), path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _take_over(path: Path) -> None:
    """Make a finished recording's file root's, 0600 (the account can no longer change it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def transfer_lines(info: RecordingInfo) -> list[str]:
    """The transfers as audit-friendly strings (``upload /path 1234``), at most 20."""
    lines = []
    for item in info.transfers[:20]:
        line = f"{item.get('op')} {item.get('path')}"
        if "bytes" in item:
            line += f" {item.get('bytes')}"
        if item.get("target"):
            line += f" -> {item.get('target')}"
        lines.append(line[:200])
    if len(info.transfers) > 20:
        lines.append(f"... {len(info.transfers) - 20} more (tether access recordings)")
    return lines


def notification(event: str, info: RecordingInfo) -> dict[str, Any]:
    """The JSON a webhook or command receives for ``event`` about a session."""
    body: dict[str, Any] = {"event": event, **info.to_json(), "session": info.id}
    body.pop("id", None)
    return body


class RecordingWatcher:
    """Audits, takes over, retains and announces recordings (see the module docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        audit: AuditLog,
        *,
        notify: Callable[[dict[str, Any]], None] = lambda event: None,
        clock: Clock = SYSTEM_CLOCK,
        interval: float = SCAN_INTERVAL,
    ) -> None:
        self.config = config
        self.directory = config.recordings_dir
        self.audit = audit
        self.notify = notify
        self.clock = clock
        self.interval = interval
        self._state_path = config.state_dir / "recordings.json"
        self._seen: dict[str, str] | None = None
        self._retained_at: float | None = None

    async def serve(self) -> None:
        """Scan every :attr:`interval` seconds until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.scan)
            except Exception as exc:
                log.event(logger, "recordings.scan_failed", level=logging.ERROR, error=repr(exc))
            await asyncio.sleep(self.interval)

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {}
        seen = data.get("seen") if isinstance(data, dict) else None
        return (
            {k: v for k, v in seen.items() if isinstance(v, str)} if isinstance(seen, dict) else {}
        )

    def _save(self, seen: dict[str, str]) -> None:
        temporary = self._state_path.with_name(self._state_path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as stream:
            json.dump({"seen": seen}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self._state_path)

    def scan(self) -> list[dict[str, Any]]:
        """Look once; return the notifications sent (also for tests).

        Cheap when nothing happened (one directory listing, one lock probe per live
        session); retention runs when a session ended, and otherwise once a minute.
        """
        if self._seen is None:
            self._seen = self._load()
        seen = self._seen
        before = dict(seen)
        sent: list[dict[str, Any]] = []
        present = recording_ids(self.directory)
        for recording_id in present:
            if seen.get(recording_id) == DONE:
                continue
            cast = cast_path(self.directory, recording_id)
            live = is_live(cast)
            if live and not meta_path(self.directory, recording_id).exists():
                continue  # the recorder is writing its metadata right now
            if recording_id not in seen:
                info = info_for(self.directory, recording_id)
                self._login(info, sent)
                seen[recording_id] = LIVE
            if not live:
                for path in (cast, meta_path(self.directory, recording_id)):
                    _take_over(path)
                # A recorder killed with its session (End session, access closed)
                # leaves its live view's socket behind.
                with contextlib.suppress(OSError):
                    live_path(self.directory, recording_id).unlink()
                self._logout(info_for(self.directory, recording_id), sent)
                seen[recording_id] = DONE
        for recording_id in set(seen) - set(present):
            if seen.pop(recording_id) == DONE:
                self._append("recording.missing", session=recording_id)
        now = time.monotonic()
        if (
            seen != before
            or self._retained_at is None
            or now - self._retained_at > RETENTION_INTERVAL
        ):
            self._retained_at = now
            self._retain(seen)
        if seen != before:
            self._save(seen)
        return sent

    def _append(self, event: str, **fields: Any) -> None:
        """Audit ``event``; fields the log refuses (they come from files the support
        account wrote: too long, or looking like a secret) are withheld, never the entry."""
        try:
            self.audit.append(event, **fields)
        except ValueError as exc:
            kept = {k: fields[k] for k in ("session", "exit_status", "size") if k in fields}
            self.audit.append(event, **kept, withheld=f"other fields refused: {exc}"[:500])

    def _login(self, info: RecordingInfo, sent: list[dict[str, Any]]) -> None:
        self._append(
            "support.login",
            engineer=info.engineer,
            session=info.id,
            kind=info.kind,
            command=info.command,
            account=info.account,
            started=info.started.isoformat(),
        )
        log.event(logger, "support.login", engineer=info.engineer, session=info.id)
        self._notify("support.login", info, sent)
        if (info.consent or {}).get("state") == "waiting":
            # The grant asks for consent: the customer must come and decide.
            self._notify("support.login_requested", info, sent)

    def _logout(self, info: RecordingInfo, sent: list[dict[str, Any]]) -> None:
        ended = info.ended.isoformat() if info.ended else None
        consent = info.consent or {}
        if consent.get("state") in ("admitted", "refused") and consent.get("by") in (
            "timeout",
            "gone",
        ):
            # Nobody decided: the recorder did, at the grant's timeout (the customer's
            # own decisions are audited by `tether access admit/refuse`).
            self._append(
                f"support.{consent['state']}",
                by=str(consent.get("by")),
                session=info.id,
                engineer=info.engineer,
                kind=info.kind,
                waited=consent.get("waited")
                if isinstance(consent.get("waited"), float | int)
                else None,
                reason=str(consent.get("reason") or "")[:300] or None,
            )
        self._append(
            "support.logout",
            engineer=info.engineer,
            session=info.id,
            exit_status=info.exit_status,
            ended=ended,
            duration=round(info.duration, 3) if info.duration is not None else None,
            clean=not info.cut_off and info.ended is not None,
        )
        self._append(
            "recording.stored",
            session=info.id,
            engineer=info.engineer,
            size=info.size,
            sha256=_sha256(cast_path(self.directory, info.id)),
            recorded_bytes=info.recorded_bytes,
            truncated=info.truncated,
            transfers=transfer_lines(info),
        )
        log.event(
            logger,
            "support.logout",
            engineer=info.engineer,
            session=info.id,
            exit_status=info.exit_status,
        )
        self._notify("support.logout", info, sent)

    def _notify(self, event: str, info: RecordingInfo, sent: list[dict[str, Any]]) -> None:
        body = notification(event, info)
        body["serial"] = info.serial or self.config.serial
        sent.append(body)
        self.notify(body)

    def _retain(self, seen: dict[str, str]) -> None:
        settings = self.config.recording
        # Not finished (or not yet audited): never removed, but counted.
        recordings = [
            r if seen.get(r.id) == DONE else replace(r, live=True)
            for r in list_recordings(self.directory)
        ]
        removals = select_for_removal(
            recordings,
            now=self.clock.now(),
            max_age_seconds=settings.max_age.total_seconds(),
            max_total=settings.max_total,
        )
        for removal in removals:
            for path in (
                cast_path(self.directory, removal.id),
                meta_path(self.directory, removal.id),
            ):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            seen.pop(removal.id, None)
            self._append(
                "recording.removed", session=removal.id, reason=removal.reason, size=removal.size
            )
            log.event(logger, "recording.removed", session=removal.id, reason=removal.reason)

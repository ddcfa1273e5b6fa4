"""The customer page's recordings: a list, and a player page for each (asciinema-player).

The player (vendored under ``static/``) fetches the recording's asciicast from
``/recordings/ID/cast``; both need the admin's session, like every other page. Ids
are checked against the recording id pattern before any file is touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse

from tether.agent.recording.catalog import (
    RecordingInfo,
    RecordingNotFound,
    cast_path,
    check_id,
    info_for,
    is_live,
    list_recordings,
    read_cast,
)
from tether.agent.web.auth import Session
from tether.config import AgentConfig

#: Recordings listed on the page (newest first); the CLI lists them all.
RECORDINGS_SHOWN = 50

#: The player compiles its terminal emulator from WebAssembly and sizes it with inline
#: styles: its page alone allows exactly that, on top of the pages' usual policy.
PLAYER_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'"
)


def recordings_view(config: AgentConfig) -> dict[str, Any]:
    """The recordings panel: the newest recordings, described for people."""
    try:
        everything = list_recordings(config.recordings_dir)
    except OSError as exc:
        return {"recordings": [], "recordings_total": 0, "recordings_error": str(exc)}
    newest = list(reversed(everything))[:RECORDINGS_SHOWN]
    return {
        "recordings": [describe(info, config.recordings_dir) for info in newest],
        "recordings_total": len(everything),
        "recordings_error": None,
    }


def describe(info: RecordingInfo, directory: Path) -> dict[str, Any]:
    seconds = info.duration
    # Its metadata says "live" until the recorder ends it; a recorder killed with its
    # session (ended from this page, access closed) never does: ask its lock instead.
    running = info.live and is_live(cast_path(directory, info.id))
    return {
        "id": info.id,
        "engineer": info.engineer,
        "started": info.started.strftime("%Y-%m-%d %H:%M:%S"),
        "duration": "still running"
        if running
        else _span(seconds) + (" (cut off when it was ended)" if info.cut_off else ""),
        "what": info.command or ("interactive shell" if info.kind == "shell" else info.kind),
        "exit": "" if info.exit_status is None else str(info.exit_status),
        "size": _size(info.size),
        "transfers": [
            f"{t.get('op', '?')} {t.get('path', '?')} ({t.get('bytes', '?')} bytes)"
            for t in info.transfers
        ],
    }


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "ended (its recorder was stopped with it)"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size >= 1024 else f"{size} B"


def add_recording_routes(
    app: FastAPI,
    config: AgentConfig,
    admin_or_login: Callable[[Request], Session | Response],
    render: Callable[..., HTMLResponse],
) -> None:
    """Add ``/recordings/ID`` (player page) and ``/recordings/ID/cast`` to the page's app."""

    @app.get("/recordings/{recording_id}", response_class=HTMLResponse)
    async def player(request: Request, recording_id: str) -> Response:
        session = admin_or_login(request)
        if isinstance(session, Response):
            return session
        try:
            info = await asyncio.to_thread(info_for, config.recordings_dir, check_id(recording_id))
        except (RecordingNotFound, OSError):
            return render(
                request,
                "refused.html",
                session,
                404,
                message=f"There is no recording {recording_id[:40]!r}.",
                back="/#recordings",
            )
        recording = describe(info, config.recordings_dir)
        response = render(request, "recording.html", session, recording=recording)
        response.headers["Content-Security-Policy"] = PLAYER_POLICY
        return response

    @app.get("/recordings/{recording_id}/cast")
    async def cast(request: Request, recording_id: str) -> Response:
        session = admin_or_login(request)
        if isinstance(session, Response):
            return session
        try:
            text = await asyncio.to_thread(read_cast, config.recordings_dir, check_id(recording_id))
        except (RecordingNotFound, FileNotFoundError):
            return PlainTextResponse("no such recording\n", status_code=404)
        return PlainTextResponse(text, media_type="application/x-asciicast")

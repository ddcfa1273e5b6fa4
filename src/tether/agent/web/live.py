"""The customer page's live view: a running support session's terminal, as it happens.

``/live/ID`` shows the session in the vendored asciinema-player, which reads
``/live/ID/events``: server-sent events carrying the recorder's live stream
(:mod:`tether.agent.recording.recorder.live`) -- a reset with the screen so far,
then output and size changes -- plus ``transfer`` events (files being moved) and a
``done`` event when the session ends. End session sits beside it.

Both need the admin's session, like every page (the stream answers 401 without it).
The stream is a GET that changes nothing: there is no route a watcher could send
anything to, and the page's server only reads the recorder's socket (see
:mod:`tether.agent.recording.follow`). Every message is parsed and written out again
as JSON, so nothing the support account put in the stream reaches the browser
unchecked. A watcher that falls behind is let go by the recorder (the session never
waits); the stream then ends and the browser reconnects, starting from the screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    StreamingResponse,
)

from tether.agent.consent import decide
from tether.agent.machine.sessions import SupportSession, monitor_of, recorder_of
from tether.agent.recording.catalog import RecordingInfo, RecordingNotFound, check_id, info_for
from tether.agent.recording.follow import End, Full, Output, Start, Transfers, follow_async
from tether.agent.recording.recorder.cast import cast_path
from tether.agent.web.auth import Session
from tether.agent.web.recordings import PLAYER_POLICY
from tether.config import AgentConfig
from tether.errors import NotReady, TetherError

#: Milliseconds the browser waits before reconnecting a stream that stopped.
RETRY_MS = 500


class LiveStreams:
    """The page's open live streams, ended together when the page stops."""

    def __init__(self) -> None:
        self._closers: set[Callable[[], None]] = set()

    def add(self, closer: Callable[[], None]) -> None:
        self._closers.add(closer)

    def discard(self, closer: Callable[[], None]) -> None:
        self._closers.discard(closer)

    def close(self) -> None:
        """End every open stream (the browsers see it end)."""
        for closer in list(self._closers):
            with contextlib.suppress(Exception):
                closer()
        self._closers.clear()


def session_of(directory: Path, info: RecordingInfo, monitors: set[int]) -> int | None:
    """The listed session (sshd monitor pid) whose recorder writes ``info``'s recording,
    by the kernel's word (:func:`~tether.agent.machine.sessions.recorder_of`), never the
    pid in the metadata, which the support account can rewrite."""
    recorder = recorder_of(cast_path(directory, info.id))
    return monitor_of(recorder, monitors) if recorder is not None else None


def watchable(
    directory: Path, running: list[RecordingInfo], sessions: list[SupportSession]
) -> dict[int, str]:
    """Which running recording each listed session (by sshd monitor pid) can be watched as."""
    monitors = {s.pid for s in sessions}
    found: dict[int, str] = {}
    if not monitors:
        return found
    for info in running:
        monitor = session_of(directory, info, monitors)
        if monitor is not None:
            found.setdefault(monitor, info.id)
    return found


def _event(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


async def live_events(
    directory: Path, recording_id: str, streams: LiveStreams
) -> AsyncIterator[bytes]:
    """The server-sent events of a live session: its output (``data``), ``transfer``,
    ``done`` when it ends, ``full`` when it has no room for another watcher (the page
    then stops asking, instead of its EventSource reconnecting for ever)."""
    yield f"retry: {RETRY_MS}\n\n".encode()
    messages = follow_async(directory, recording_id, streams)
    try:
        async for message in messages:
            if isinstance(message, Start | Output):
                yield _event(message.to_json())
            elif isinstance(message, Transfers):
                yield _event(
                    {"files": list(message.files), "lines": message.describe()}, "transfer"
                )
            elif isinstance(message, End):
                yield _event({"status": message.status}, "done")
                return
            elif isinstance(message, Full):
                yield _event({"watchers": message.watchers}, "full")
                return
    except NotReady:
        # It ended between the check and the connection.
        yield _event({"status": None}, "done")
    finally:
        await messages.aclose()


def add_live_routes(
    app: FastAPI,
    config: AgentConfig,
    admin_or_login: Callable[[Request], Session | Response],
    render: Callable[..., HTMLResponse],
    sessions: Callable[[], list[SupportSession]],
    streams: LiveStreams,
) -> None:
    """Add ``/live/ID`` (the watch page) and ``/live/ID/events`` (its stream)."""

    def live_info(recording_id: str) -> RecordingInfo | None:
        try:
            info = info_for(config.recordings_dir, check_id(recording_id))
        except (RecordingNotFound, OSError):
            return None
        return info if info.live else None

    @app.get("/live/{recording_id}", response_class=HTMLResponse)
    async def watch_page(request: Request, recording_id: str) -> Response:
        session = admin_or_login(request)
        if isinstance(session, Response):
            return session
        info = await asyncio.to_thread(live_info, recording_id)
        if info is None:
            return render(
                request,
                "refused.html",
                session,
                404,
                message=f"No support session {recording_id[:40]!r} is running now; "
                "a finished one is among the recordings.",
                back="/#recordings",
            )
        live = await asyncio.to_thread(sessions)
        monitor = session_of(config.recordings_dir, info, {s.pid for s in live})
        response = render(
            request,
            "live.html",
            session,
            live={
                "id": info.id,
                "engineer": info.engineer,
                "started": info.started.strftime("%Y-%m-%d %H:%M:%S"),
                "what": info.command
                or ("interactive shell" if info.kind == "shell" else info.kind),
                "pid": monitor,
            },
        )
        response.headers["Content-Security-Policy"] = PLAYER_POLICY
        return response

    @app.get("/live/{recording_id}/events")
    async def events(request: Request, recording_id: str) -> Response:
        session = admin_or_login(request)
        if isinstance(session, Response):
            return PlainTextResponse("log in on the page first\n", status_code=401)
        if await asyncio.to_thread(live_info, recording_id) is None:
            # 204: the browser's EventSource stops asking.
            return Response(status_code=204)
        return StreamingResponse(
            live_events(config.recordings_dir, recording_id, streams),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


def add_consent_routes(
    app: FastAPI,
    config: AgentConfig,
    guard: Callable[[Request], Awaitable[Session | Response]],
) -> None:
    """Add ``POST /logins/ID/admit`` and ``/logins/ID/refuse`` (grants with consent).

    The same decision ``tether access admit / refuse`` writes, audited ``by web``.
    """

    async def decide_from_page(request: Request, recording_id: str, admit: bool) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        form = await request.form()
        reason = form.get("reason")
        try:
            info, waited = await asyncio.to_thread(
                decide,
                config,
                recording_id,
                admit=admit,
                by="web",
                reason=reason.strip() if isinstance(reason, str) else "",
            )
        except (TetherError, RecordingNotFound) as exc:
            guarded.flash = (str(exc), True)
            return RedirectResponse("/#sessions", status_code=303)
        verb = "Admitted" if admit else "Refused"
        guarded.flash = (f"{verb} the login of {info.engineer} (waited {waited:.0f} s).", False)
        return RedirectResponse("/#sessions", status_code=303)

    @app.post("/logins/{recording_id}/admit")
    async def admit(request: Request, recording_id: str) -> Response:
        return await decide_from_page(request, recording_id, True)

    @app.post("/logins/{recording_id}/refuse")
    async def refuse(request: Request, recording_id: str) -> Response:
        return await decide_from_page(request, recording_id, False)

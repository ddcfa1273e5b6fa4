"""``tether agent serve``: the long-running agent on a customer's machine.

One per machine (a ``flock`` on ``agent.lock``). On start it notices an unclean
previous shutdown (the ``agent.running`` marker was left behind), logs it, and
reconciles: access past its expiry is closed, open access gets its tether back.
While running it holds the tether for open access, closes access at its expiry
(in-process timer) or when the relay refuses the key for good, and answers the CLI
on its control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether import log
from tether.agent.access import SPENDING_REASONS, AccessManager
from tether.agent.control import serve_control
from tether.agent.identity import load_or_create_machine_key
from tether.agent.locks import DaemonLock
from tether.agent.metrics import TEXTFILE_INTERVAL, AgentFacts, read_facts, write_textfile
from tether.agent.notify import Notifier
from tether.agent.recording.watch import RecordingWatcher
from tether.agent.state import AccessMode, AccessState, CloseReason
from tether.agent.status import TunnelState, TunnelStatus
from tether.agent.tunnel import TetherRefused, Tunnel, backoff_delay, report_spent
from tether.audit import FieldValue
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import AgentConfig
from tether.errors import NotReady
from tether.keys import TetherKeyError, parse_key
from tether.protocol import RefusalReason
from tether.sshlib import asyncssh
from tether.tasks import TaskSet

if TYPE_CHECKING:
    from tether.agent.web.server import AgentWebServer

logger = logging.getLogger("tether.agent")


class AgentDaemon:
    """The agent process: ``await daemon.serve()`` until :meth:`stop` or a signal."""

    def __init__(self, config: AgentConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.access = AccessManager(config, clock=clock)
        self._lock = DaemonLock(config.run_dir / "agent.lock")
        self._marker = config.state_dir / "agent.running"
        self._tasks = TaskSet()
        self._tunnel: Tunnel | None = None
        self._tunnel_key: tuple[str | None, ...] | None = None
        self._tether_up = False
        self._expiry: asyncio.TimerHandle | None = None
        self._machine_key: asyncssh.SSHKey | None = None
        self._report: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._stop = asyncio.Event()
        self._reconcile_lock = asyncio.Lock()
        self.socket_path: Path = config.run_dir / "agent.sock"
        self.recordings: RecordingWatcher | None = None
        #: Set when the tether goes up or down: the textfile is rewritten at once.
        self._facts_changed = asyncio.Event()

    async def serve(self) -> None:
        """Run until stopped; always leaves a clean-shutdown trace when it ends normally."""
        self._lock.acquire()
        try:
            self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._machine_key = load_or_create_machine_key(self.config.machine_key_path)
            fingerprint = self._machine_key.get_fingerprint("sha256")
            # The customer's record says when the agent ran, and when it did not stop
            # cleanly (`tether access log`), as the SPEC's tether log does.
            self._audit("agent.started", serial=self.config.serial, machine=fingerprint)
            log.event(logger, "agent.start", serial=self.config.serial, machine_key=fingerprint)
            if self._marker.exists():
                self._audit("agent.unclean_shutdown", note="the last run did not shut down cleanly")
                log.event(
                    logger,
                    "agent.unclean_shutdown",
                    level=logging.WARNING,
                    message="the last run did not shut down cleanly; reconciling",
                )
            self._marker.write_text("running\n")
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            # Repair and reconcile before answering anyone: nobody may see pre-crash
            # state as current.
            repaired = await asyncio.to_thread(self.access.recover)
            if repaired:
                log.event(logger, "agent.recovered", message=repaired)
            await self.reconcile()
            state = self.access.state()
            self._audit(
                "agent.reconciled",
                outcome=repaired or "the machine matched the stored state",
                access=state.status.value,
            )
            server = await serve_control(self.socket_path, self._on_command)
            self._start_recordings()
            if self.config.metrics_textfile is not None:
                self._tasks.spawn(
                    self._keep_textfile(self.config.metrics_textfile), "agent.metrics"
                )
            web = await self._start_web()
            await self._stop.wait()
            if web is not None:
                await web.aclose()
            server.close()
            await self._stop_tunnel()
            await self._tasks.aclose()
            self.socket_path.unlink(missing_ok=True)
            self._marker.unlink(missing_ok=True)
            self._audit("agent.stopped")
            log.event(logger, "agent.stop")
        finally:
            self._lock.release()

    def stop(self) -> None:
        self._stop.set()

    async def _start_web(self) -> AgentWebServer | None:
        """The customer's admin page, on this loop ([web] in agent.toml)."""
        if not self.config.web.enabled:
            return None
        from tether.agent.web.server import AgentWebServer

        web = AgentWebServer(self)
        try:
            await web.start()
        except NotReady as exc:
            # The page is a convenience: access control (and the CLI) must go on without it.
            log.event(logger, "agent.web_failed", level=logging.ERROR, message=str(exc))
            await web.aclose()
            return None
        return web

    def reset_tether(self) -> bool:
        """Reconnect the tether now (the customer's reset); False if none is held."""
        if self._tunnel is None:
            return False
        self._audit("tether.reset", by="customer")
        self._tunnel.reset()
        return True

    def _audit(self, event: str, **fields: FieldValue) -> None:
        """Append to the customer's audit log; a failure is logged, never fatal."""
        try:
            self.access.audit.append(event, **fields)
        except (OSError, ValueError) as exc:
            log.event(
                logger, "audit.failed", level=logging.ERROR, audit_event=event, error=str(exc)
            )

    def _start_recordings(self) -> None:
        """Audit, retain and announce support sessions (also those from while we were down)."""
        notifier = Notifier(self.config.notify)
        if notifier.enabled:
            self._tasks.spawn(notifier.serve(), "agent.notify")
        self.recordings = RecordingWatcher(
            self.config, self.access.audit, notify=notifier.send, clock=self.clock
        )
        self._tasks.spawn(self.recordings.serve(), "agent.recordings")

    async def _keep_textfile(self, path: Path) -> None:
        """Keep node_exporter's textfile current while the agent runs."""
        while True:
            try:
                facts = await asyncio.to_thread(self.facts)
                await asyncio.to_thread(write_textfile, path, facts)
            except OSError as exc:  # a full disk or a bad directory must not stop the agent
                log.event(logger, "metrics.textfile_failed", level=logging.WARNING, error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._facts_changed.wait(), TEXTFILE_INTERVAL)
            self._facts_changed.clear()

    def facts(self) -> AgentFacts:
        """The agent's facts now (reads /proc for live sessions: call it off the loop)."""
        return read_facts(self.config, self.access.state(), self._tether_up, self.clock.now())

    async def _on_command(self, cmd: str) -> dict[str, Any]:
        if cmd == "reconcile":
            await self.reconcile()
        elif cmd == "reset":
            self.reset_tether()
        return {"ok": True, "tunnel": self._tunnel.status.to_json() if self._tunnel else None}

    async def reconcile(self) -> None:
        """Make the running tether match the stored access state."""
        async with self._reconcile_lock:
            await asyncio.to_thread(self.access.expire_if_due)
            state = self.access.state()
            self._facts_changed.set()  # access opened or closed: the textfile says so now
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
            if not state.is_open:
                told = await self._stop_tunnel(closed=state)
                if state.unreported_key is not None:
                    if told:
                        await asyncio.to_thread(self.access.spent_reported, state.unreported_key)
                    else:
                        self._start_report(state)
                return
            if state.expires_at is not None:
                delay = max(0.0, (state.expires_at - self.clock.now()).total_seconds())
                self._expiry = asyncio.get_running_loop().call_later(delay, self._on_expiry)
            if state.mode != AccessMode.TETHER or state.key is None:
                await self._stop_tunnel()
                return
            if self._tunnel is not None and self._tunnel_key == _tunnel_key(state):
                return  # a changed password (withdrawn) reconnects to say so
            await self._stop_tunnel()
            self._start_tunnel(state)

    def _on_expiry(self) -> None:
        self._tasks.spawn(self.reconcile(), "agent.expiry")

    def _start_tunnel(self, state: AccessState) -> None:
        if state.key is None or self._machine_key is None:
            return
        try:
            claims = parse_key(
                state.key, self.config.vendor_keys, now=self.clock.now(), serial=self.config.serial
            )
        except TetherKeyError as exc:
            self._tasks.spawn(self._close(CloseReason.REFUSED, "agent", str(exc)), "agent.close")
            return
        tunnel = Tunnel(
            state.key,
            claims,
            self._machine_key,
            state.ports,
            self.config.tether,
            clock=self.clock,
            on_change=self._on_tunnel_change,
            sealed_password=state.sealed_password,
            password_withdrawn=state.password_withdrawn,
            limits=tuple(state.limits.describe()),
            audit=self.access.audit,
        )
        self._tunnel = tunnel
        self._tunnel_key = _tunnel_key(state)
        self._tasks.spawn(self._hold(tunnel), f"agent.tunnel.{claims.key_id}")

    async def _hold(self, tunnel: Tunnel) -> None:
        refusal: TetherRefused | None = await tunnel.serve()
        if refusal is None or tunnel is not self._tunnel:
            return
        reason = (
            CloseReason.REVOKED if refusal.reason == RefusalReason.REVOKED else CloseReason.REFUSED
        )
        if refusal.reason == RefusalReason.EXPIRED:
            reason = CloseReason.EXPIRED
        await self._close(reason, "relay", refusal.message)

    async def _close(self, reason: CloseReason, by: str, detail: str) -> None:
        await asyncio.to_thread(self.access.close, reason, by=by, detail=detail)
        await self.reconcile()

    def _on_tunnel_change(self, status: TunnelStatus) -> None:
        log.event(
            logger,
            "tether.state",
            state=status.state.value,
            relay=status.relay,
            reason=status.reason,
        )
        was_up, self._tether_up = self._tether_up, status.state == TunnelState.CONNECTED
        if was_up != self._tether_up:
            self._facts_changed.set()
        if was_up != self._tether_up:
            # Rare (once per connection), so the fsync'd append runs right here, in order.
            event = "tether.up" if self._tether_up else "tether.down"
            fields: dict[str, FieldValue] = {"relay": status.relay, "serial": self.config.serial}
            if self._tether_up:
                fields["ports"] = list(status.ports)
            else:
                fields["reason"] = status.reason or status.state.value
            self._audit(event, **fields)

    async def _stop_tunnel(self, closed: AccessState | None = None) -> bool:
        """Stop the tether; with ``closed``, the access it served was closed here.

        The relay is then told that the key is spent (a copy of this machine's state
        must not open it again); returns whether it was. A refusal from the relay
        needs no word back: the relay itself refused the key.
        """
        tunnel, self._tunnel, self._tunnel_key = self._tunnel, None, None
        if tunnel is None:
            return False
        spent = None
        if (
            closed is not None
            and closed.key_id == tunnel.key_id
            and closed.close_reason in SPENDING_REASONS
        ):
            spent = closed.close_reason.value
        return await tunnel.aclose(closed=spent)

    def _start_report(self, state: AccessState) -> None:
        """Tell the relay, in the background, that a key closed while no tether was up
        is spent (retried with backoff until it knows; see :func:`report_spent`)."""
        if self._report is not None and not self._report.done():
            return
        if state.unreported_key is None or state.close_reason is None:
            return
        self._report = self._tasks.spawn(
            self._report_spent(state.unreported_key, state.close_reason.value),
            "agent.report_spent",
        )

    async def _report_spent(self, key: str, reason: str) -> None:
        try:
            claims = parse_key(
                key, self.config.vendor_keys, now=self.clock.now(), serial=self.config.serial
            )
        except TetherKeyError:
            claims = None  # expired (or unreadable): no relay admits it any more
        attempt = 0
        while claims is not None and self._machine_key is not None:
            if self.access.state().unreported_key != key:
                return  # access was opened again meanwhile; its key is its own matter
            if await report_spent(key, claims, self._machine_key, self.config.tether, reason):
                break
            settings = self.config.tether
            delay = backoff_delay(
                attempt, initial=settings.backoff_initial, cap=settings.backoff_cap, rng=self._rng
            )
            attempt += 1
            await asyncio.sleep(delay)
        await asyncio.to_thread(self.access.spent_reported, key)
        log.event(logger, "agent.key_spent_reported", key=claims.key_id if claims else None)

    @property
    def tunnel_status(self) -> TunnelStatus | None:
        return self._tunnel.status if self._tunnel else None


def _tunnel_key(state: AccessState) -> tuple[str | None, ...]:
    """What a running tether must match: the key, and what it says of the password."""
    return (state.key, state.sealed_password, "withdrawn" if state.password_withdrawn else None)

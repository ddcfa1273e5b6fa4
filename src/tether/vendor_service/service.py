"""``tether vendor serve``: the vendor service — its HTTP API and the request policy.

:class:`VendorService` has the shape of every long-lived component: dependencies in,
:meth:`~VendorService.serve` / :meth:`~VendorService.aclose` out. It runs uvicorn
in-process on a socket it binds itself (so port 0 works and :attr:`url` names the
port the OS picked), and next to it a task that every half second looks at pending
one-click cases: under ``request_policy = "auto"`` a case from the machine its serial is
bound to gets a key at once (issued by ``auto-approve``); every other case, and every
case under ``"hold"``, waits for an engineer. Expired API
sessions are purged once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import uvicorn

from tether import log
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import RequestPolicy, VendorConfig
from tether.errors import BadInput, NotReady, Refused
from tether.keys import format_address
from tether.metrics_http import DATABASE_UNAVAILABLE, MetricsServer
from tether.seal import SealPrivateKey
from tether.store import CaseStatus, Store, StoreError
from tether.tasks import TaskSet
from tether.vendor_service.app import create_app
from tether.vendor_service.authority import AUTO_APPROVER, Authority
from tether.vendor_service.metrics import VendorMetrics

__all__ = ["DEFAULT_LISTEN", "POLICY_INTERVAL", "VendorService", "bind_listener", "load_seal_key"]

logger = logging.getLogger("tether.vendor_service.service")

#: Where the vendor service listens unless told otherwise (its internal network only).
DEFAULT_LISTEN = ("127.0.0.1", 8080)
#: How often pending cases are looked at (seconds).
POLICY_INTERVAL = 0.5
#: How often expired API sessions are deleted (seconds).
PURGE_INTERVAL = 60.0
#: Seconds the store has to answer a readiness check or a scrape's query.
READINESS_TIMEOUT = 2.0


def load_seal_key(config: VendorConfig) -> SealPrivateKey | None:
    """The password seal key of the data directory, or ``None`` (logged) if it is missing."""
    path = config.seal_key_path
    try:
        return SealPrivateKey.from_pem(path.read_bytes())
    except FileNotFoundError:
        log.event(logger, "seal_key.missing", level=logging.WARNING, path=str(path))
        return None
    except OSError as exc:
        raise NotReady(f"cannot read the password seal key {path}: {exc.strerror}") from None
    except ValueError:
        raise BadInput(f"{path} is not a PEM private key") from None


def bind_listener(listen: tuple[str, int]) -> socket.socket:
    """Bind the service's listening socket (port 0: the OS picks one).

    Done before anything else starts, so that an address in use is one clear
    :class:`NotReady` (what is wrong, what to do) and not a failure of a running service.
    """
    host, port = listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        words = os.strerror(exc.errno) if exc.errno else str(exc)
        raise NotReady(
            f"cannot listen on {format_address(host, port)}: {words}; stop what uses it "
            "or choose another --listen"
        ) from None
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: the caller decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install no signal handlers (``tether vendor serve`` installs its own)."""
        yield


class VendorService:
    """The vendor service: HTTP API plus the one-click request policy.

    :param config: ``vendor.toml`` (keys, relay address, request policy).
    :param store: the shared database.
    :param clock: the time for sessions, keys and decisions.
    :param listen: ``(host, port)`` to bind; port 0 lets the OS pick.
    :param sock: a socket already bound by :func:`bind_listener` (then ``listen`` is
        not bound again).
    """

    def __init__(
        self,
        config: VendorConfig,
        store: Store,
        *,
        clock: Clock = SYSTEM_CLOCK,
        listen: tuple[str, int] = DEFAULT_LISTEN,
        sock: socket.socket | None = None,
    ) -> None:
        """Load the vendor keys (:class:`NotReady` if missing) and build the app."""
        self.config = config
        self.store = store
        self.clock = clock
        self.listen = listen
        self.authority = Authority(config, store, clock=clock)
        #: This service's metrics, in a registry of its own (never the global one).
        self.metrics = VendorMetrics()
        self.app = create_app(
            self.authority, clock=clock, seal_key=load_seal_key(config), metrics=self.metrics
        )
        #: The internal ``/metrics``, ``/healthz``, ``/readyz`` (``[metrics] listen``).
        self.metrics_server: MetricsServer | None = None
        if config.metrics_listen is not None:
            self.metrics_server = MetricsServer(
                *config.metrics_listen,
                self.metrics.registry,
                self.readiness,
                part="vendor",
                refresh=self._refresh_metrics,
            )
        self._socket: socket.socket | None = sock
        self._server: _Server | None = None
        self._ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stop_requested = False
        self._last_purge: float | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` the service is bound to (after :meth:`wait_ready`)."""
        if self._socket is None:
            raise NotReady("the vendor service is not listening yet")
        host, port = self._socket.getsockname()[:2]
        return f"http://{format_address(str(host), int(port))}"

    async def wait_ready(self) -> None:
        """Return once the service is listening (its :attr:`url` is known)."""
        await self._ready.wait()

    async def serve(self) -> None:
        """Serve until :meth:`aclose` (or cancellation)."""
        if self._socket is None:
            self._socket = bind_listener(self.listen)
        sock = self._socket
        host, port = self.listen
        self._server = _Server(uvicorn.Config(self.app, host, port, log_config=None))
        if self._stop_requested:
            self._server.should_exit = True
        tasks = TaskSet()
        tasks.spawn(self._policy_loop(), "vendor.request_policy")
        if self.metrics_server is not None:
            await self.metrics_server.start()
        log.event(
            logger,
            "vendor.serving",
            url=self.url,
            metrics="" if self.metrics_server is None else self.metrics_server.address,
            policy=str(self.config.request_policy),
            database=self.store.url_for_display,
        )
        self._ready.set()
        try:
            await self._server.serve(sockets=[sock])
        finally:
            await tasks.aclose()
            if self.metrics_server is not None:
                await self.metrics_server.aclose()
            sock.close()
            self._stopped.set()
            log.event(logger, "vendor.stopped")

    def request_stop(self) -> None:
        """Ask :meth:`serve` to finish (safe from a signal handler)."""
        self._stop_requested = True
        if self._server is not None:
            self._server.should_exit = True

    async def aclose(self) -> None:
        """Stop serving and wait until :meth:`serve` has finished."""
        self.request_stop()
        if self._ready.is_set():
            await self._stopped.wait()

    async def readiness(self) -> str | None:
        """``None`` while the service takes requests, else why not (``/readyz``)."""
        if self._stop_requested or not self._ready.is_set():
            return "stopping" if self._stop_requested else "starting"
        try:
            await asyncio.wait_for(self.store.revocations.head(), READINESS_TIMEOUT)
        except Exception:  # whatever the driver raises, the answer is the same
            return DATABASE_UNAVAILABLE
        return None

    async def _refresh_metrics(self) -> None:
        """Read the figures kept in the store, just before a scrape renders them."""
        try:
            pending = await asyncio.wait_for(self.store.cases.count_pending(), READINESS_TIMEOUT)
        except Exception:  # the scrape still answers, and says the database is gone
            self.metrics.database_up.set(0)
            return
        self.metrics.database_up.set(1)
        self.metrics.cases_pending.set(pending)

    async def _policy_loop(self) -> None:
        while True:
            try:
                await self.process_pending()
                await self._purge_sessions()
            except (StoreError, NotReady) as exc:
                log.event(logger, "policy.error", level=logging.WARNING, error=str(exc))
            except Exception:  # a bug must not stop one-click requests for good
                logger.exception("policy.crashed; retrying")
            await asyncio.sleep(POLICY_INTERVAL)

    async def process_pending(self) -> int:
        """Under the ``auto`` policy, issue keys for pending cases; return how many.

        Only a case whose serial is already bound to the machine key that asked is
        served: a request never binds a serial by itself, so a case for an unbound serial
        (or one bound to another machine) waits for an engineer. A case that cannot be
        served (e.g. a serial no key can name) is denied with the reason; a case someone
        else decided meanwhile is left alone.
        """
        if self.config.request_policy != RequestPolicy.AUTO:
            return 0
        pending = await self.store.cases.list(status=CaseStatus.PENDING)
        bound = await self.store.machines.get_many(c.serial for c in pending)
        issued = 0
        for case in reversed(pending):
            owner = bound.get(case.serial)
            if owner is None or owner.machine_key != case.machine_key:
                continue
            try:
                await self.authority.approve_case(case.id, by=AUTO_APPROVER)
                issued += 1
            except Refused:
                continue
            except BadInput as exc:
                with contextlib.suppress(Refused, BadInput):
                    await self.authority.deny_case(
                        case.id, by=AUTO_APPROVER, reason=f"cannot issue a key: {exc}"[:500]
                    )
        return issued

    async def _purge_sessions(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._last_purge is not None and now - self._last_purge < PURGE_INTERVAL:
            return
        self._last_purge = now
        await self.store.tokens.purge_expired(self.clock.now())

"""The relay's pre-authentication gate (pure: no sockets, injected clock and randomness).

asyncssh has no ``MaxStartups``; this module is the relay's, modelled on OpenSSH's
``MaxStartups start:rate:full``, ``PerSourceMaxStartups``, ``PerSourceNetBlockSize`` and
``PerSourcePenalties`` (9.8), and shaped for a relay whose legitimate clients are known
machine keys and certificate holders that finish their handshake in milliseconds.

A connection is *pending* from accept until it authenticates or closes. For each new
one :meth:`Gate.admit` decides, in this order:

1. a network block under penalty is refused (``penalty``);
2. an address holding :attr:`GateLimits.per_address` pending connections is refused
   (``address``), and so is a block holding :attr:`GateLimits.per_netblock` (``netblock``);
   blocks are /24 (IPv4) and /64 (IPv6) by default, so one IPv6 customer, who has
   2^64 addresses, counts as one source;
3. from :attr:`GateLimits.start` pending connections on, a newcomer from a block that
   holds a *stalling* connection (one admitted at least :attr:`GateLimits.stall_after`
   seconds ago that has still not finished its key exchange) is dropped with a
   probability rising linearly from :attr:`GateLimits.rate` at ``start`` to 1 at
   ``full`` (``early``). Drops follow stalls, not counts: a block whose pending
   connections are all progressing (engineers of one office logging in one after the
   other, each through its key exchange in milliseconds) is never dropped at random,
   while a flood's block, whose connections sit on their slots, is;
4. at :attr:`GateLimits.full` the *stalled* connection (one that has not yet finished
   its key exchange and asked to log in) that has been quiet the longest is evicted to
   make room; only if none is stalled is the newcomer refused (``full``). A client in
   its key exchange sends something every round trip (:meth:`Gate.active`), a flood's
   connection sits silent or trickles, so a flood that refills as fast as it is dropped
   evicts its own connections, not an engineer's that is slow only because the relay
   or the machine is busy. (By admission order alone, a fast refill made a slow
   engineer the oldest within a few dozen admissions.)

The pre-auth time limit shrinks with pressure: :attr:`GateLimits.login_timeout` while
fewer than ``start`` are pending, falling linearly to :attr:`GateLimits.busy_login_timeout`
at ``full``; :meth:`Gate.expired` applies it to every pending connection, old ones too.

Penalties (per block, as OpenSSH's): a connection that times out or is evicted before
logging in adds :attr:`GateLimits.penalty_stall` seconds, one that closes without logging
in :attr:`GateLimits.penalty_noauth`. Seconds add up, capped at
:attr:`GateLimits.penalty_max`, and drain in real time; once a block's total reaches
:attr:`GateLimits.penalty_min` its new connections are refused until the total has drained
(then it is forgotten). An address that authenticated within
:attr:`GateLimits.trust_for` seconds is never penalised, never dropped at random and never
refused for its block's penalty (a reconnecting agent behind a busy NAT), and its stalled
connections are the last evicted.

Every refusal is counted in :attr:`Gate.drops` (by :class:`Drop`), evictions in
:attr:`Gate.evictions` and time-outs in :attr:`Gate.expirations`, for metrics to read.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

H = TypeVar("H", bound=Hashable)

#: Penalty records and trusted addresses kept at most (oldest forgotten first), so a
#: flood from 2^64 addresses cannot grow the relay's memory without bound.
MAX_TRACKED = 65_536
#: Stalled connections examined for a non-trusted eviction victim before the quietest is taken.
_EVICTION_SCAN = 64


class Drop(Enum):
    """Why a new connection was refused before it could log in."""

    PENALTY = "penalty"
    ADDRESS = "address"
    NETBLOCK = "netblock"
    EARLY = "early"
    FULL = "full"


class Outcome(Enum):
    """How a pending connection ended without logging in (what it is penalised for)."""

    #: The client closed, or failed, before logging in.
    NOAUTH = "noauth"
    #: The relay ended it: its pre-auth time ran out, or it was evicted while stalled.
    STALLED = "stalled"


@dataclass(frozen=True)
class GateLimits:
    """The gate's thresholds (``relay.toml``; the defaults are documented there)."""

    #: Pending connections from which newcomers from busy blocks may be dropped at random.
    start: int = 100
    #: Drop probability at ``start`` (0..1), rising linearly to 1 at ``full``.
    rate: float = 0.3
    #: Pending connections at most; a stalled one is evicted to admit another.
    full: int = 400
    per_address: int = 20
    per_netblock: int = 100
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    #: Seconds to log in while fewer than ``start`` connections are pending.
    login_timeout: float = 30.0
    #: Seconds to log in when ``full`` are pending (linear in between).
    busy_login_timeout: float = 5.0
    penalty_stall: float = 10.0
    penalty_noauth: float = 1.0
    penalty_min: float = 15.0
    penalty_max: float = 600.0
    #: Seconds an address that logged in stays exempt from penalties and random drops.
    trust_for: float = 3600.0
    #: Seconds without finishing the key exchange after which a connection is stalling:
    #: its block is subject to random early drop.
    stall_after: float = 2.0

    def check(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent threshold."""
        if not 1 <= self.start <= self.full:
            raise ValueError(f"early_drop_start ({self.start}) must be 1..max_unauthenticated")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"early_drop_rate ({self.rate}) must be 0..100 percent")
        if not 8 <= self.ipv4_prefix <= 32 or not 16 <= self.ipv6_prefix <= 128:
            raise ValueError("netblock prefixes must be 8..32 (IPv4) and 16..128 (IPv6)")
        if not 0 < self.busy_login_timeout <= self.login_timeout:
            raise ValueError("login_timeout_busy must be > 0 and at most login_timeout")
        if not 0 <= self.penalty_min <= self.penalty_max:
            raise ValueError("penalty_min must be at most penalty_max")
        if not self.stall_after >= 0:
            raise ValueError("stall_after must be at least 0")


@dataclass
class _Pending:
    address: str
    block: str
    started: float
    stalled: bool = True


@dataclass(frozen=True)
class Decision(Generic[H]):
    """What :meth:`Gate.admit` decided.

    :ivar drop: why the newcomer is refused; ``None``: admitted.
    :ivar evict: a stalled connection to close to make room (only when admitted).
    :ivar block: the newcomer's network block (for summaries).
    """

    drop: Drop | None
    block: str
    evict: H | None = None

    @property
    def admitted(self) -> bool:
        return self.drop is None


def netblock(address: str, ipv4_prefix: int = 24, ipv6_prefix: int = 64) -> str:
    """The network block ``address`` counts in, as CIDR text (IPv4-mapped IPv6 as IPv4).

    A text that is no IP address (a Unix socket's, ``"?"``) is its own block.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class Gate(Generic[H]):
    """Admission of unauthenticated connections, each known by a handle ``H``.

    :param limits: thresholds.
    :param clock: monotonic seconds (``time.monotonic`` or a test's).
    :param rng: a uniform [0, 1) source (``random.random`` or a seeded test's).
    """

    def __init__(
        self,
        limits: GateLimits,
        clock: Callable[[], float],
        rng: Callable[[], float] = random.random,
    ) -> None:
        limits.check()
        self.limits = limits
        self._clock = clock
        self._rng = rng
        #: Every pending connection, oldest first.
        self._pending: OrderedDict[H, _Pending] = OrderedDict()
        #: Those that have not yet asked to log in, quiet the longest first (eviction
        #: candidates).
        self._stalled: OrderedDict[H, None] = OrderedDict()
        #: The same by block, with when each was admitted (oldest first): stalling blocks.
        self._stalled_in: dict[str, OrderedDict[H, float]] = {}
        self._per_address: Counter[str] = Counter()
        self._per_block: Counter[str] = Counter()
        #: block -> (seconds owed, as of time, enforced).
        self._penalties: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()
        #: address -> when it last logged in.
        self._trusted: OrderedDict[str, float] = OrderedDict()
        #: Refusals by reason since start (never reset: metrics read it as counters).
        self.drops: Counter[Drop] = Counter()
        self.evictions = 0
        self.expirations = 0
        self.admitted = 0

    # --- what metrics and logs read -------------------------------------------------

    def __len__(self) -> int:
        """Pending (unauthenticated) connections now."""
        return len(self._pending)

    @property
    def stalled(self) -> int:
        """Pending connections that have not yet asked to log in."""
        return len(self._stalled)

    @property
    def penalised(self) -> int:
        """Network blocks whose connections are refused now."""
        now = self._clock()
        return sum(1 for b in list(self._penalties) if self._penalty_active(b, now))

    def pending_from(self, address: str) -> int:
        return self._per_address[address]

    def block_of(self, address: str) -> str:
        return netblock(address, self.limits.ipv4_prefix, self.limits.ipv6_prefix)

    def login_timeout(self) -> float:
        """Seconds a connection may take to log in at the current pressure."""
        lim = self.limits
        n = len(self._pending)
        if n < lim.start or lim.full == lim.start:
            return lim.login_timeout if n < lim.full else lim.busy_login_timeout
        share = min(1.0, (n - lim.start) / (lim.full - lim.start))
        return lim.login_timeout - share * (lim.login_timeout - lim.busy_login_timeout)

    # --- events ----------------------------------------------------------------------

    def admit(self, handle: H, address: str) -> Decision[H]:
        """Decide on a new connection from ``address``; if admitted it is pending.

        When the decision names a connection to ``evict`` it has already left the gate
        (as :data:`Outcome.STALLED`); the caller closes it.
        """
        now = self._clock()
        lim = self.limits
        block = self.block_of(address)
        trusted = self._is_trusted(address, now)
        drop: Drop | None = None
        if not trusted and self._penalty_active(block, now):
            drop = Drop.PENALTY
        elif self._per_address[address] >= lim.per_address:
            drop = Drop.ADDRESS
        elif self._per_block[block] >= lim.per_netblock:
            drop = Drop.NETBLOCK
        elif (
            not trusted
            and len(self._pending) >= lim.start
            and self._stalling(block, now)
            and self._rng() < self._early_drop_probability()
        ):
            drop = Drop.EARLY
        evict: H | None = None
        if drop is None and len(self._pending) >= lim.full:
            evict = self._victim(now)
            if evict is None:
                drop = Drop.FULL
            else:
                self.evictions += 1
                self._leave(evict, Outcome.STALLED, now)
        if drop is not None:
            self.drops[drop] += 1
            return Decision(drop, block)
        self._pending[handle] = _Pending(address, block, now)
        self._stalled[handle] = None
        self._stalled_in.setdefault(block, OrderedDict())[handle] = now
        self._per_address[address] += 1
        self._per_block[block] += 1
        self.admitted += 1
        return Decision(None, block, evict)

    def active(self, handle: H) -> None:
        """The connection sent something before finishing its key exchange: it is the
        last to be evicted among the stalled (no-op once it progressed or left)."""
        if handle in self._stalled:
            self._stalled.move_to_end(handle)

    def progressed(self, handle: H) -> None:
        """The connection finished its key exchange and asked to log in: not stalled."""
        pending = self._pending.get(handle)
        if pending is not None:
            self._unstall(handle, pending.block)

    def withdraw(self, handle: H) -> None:
        """The relay let a pending connection go for its own reasons (it is draining):
        it leaves the gate without a penalty (no-op if it had left already)."""
        pending = self._pending.get(handle)
        if pending is not None:
            self._forget(handle, pending)

    def authenticated(self, handle: H) -> None:
        """The connection logged in: it leaves the gate, and its address is trusted."""
        pending = self._pending.get(handle)
        if pending is None:
            return
        now = self._clock()
        self._forget(handle, pending)
        self._trusted[pending.address] = now
        self._trusted.move_to_end(pending.address)
        while len(self._trusted) > MAX_TRACKED:
            self._trusted.popitem(last=False)

    def closed(self, handle: H, outcome: Outcome) -> None:
        """A pending connection ended without logging in (no-op if it had left already)."""
        if handle in self._pending:
            self._leave(handle, outcome, self._clock())

    def expired(self) -> list[H]:
        """Pending connections past the current time limit; they leave the gate.

        The caller closes them. Called about once a second; the cost is the number expired.
        """
        now = self._clock()
        limit = self.login_timeout()
        out: list[H] = []
        while self._pending:
            handle, pending = next(iter(self._pending.items()))
            if now - pending.started < limit:
                break
            out.append(handle)
            self._leave(handle, Outcome.STALLED, now)
        self.expirations += len(out)
        return out

    # --- internals -------------------------------------------------------------------

    def _early_drop_probability(self) -> float:
        lim = self.limits
        if lim.full <= lim.start:
            return 1.0
        share = (len(self._pending) - lim.start) / (lim.full - lim.start)
        return min(1.0, lim.rate + (1.0 - lim.rate) * share)

    def _stalling(self, block: str, now: float) -> bool:
        """Whether ``block`` holds a connection stalled for ``stall_after`` seconds."""
        stalled = self._stalled_in.get(block)
        if not stalled:
            return False
        return now - next(iter(stalled.values())) >= self.limits.stall_after

    def _unstall(self, handle: H, block: str) -> None:
        self._stalled.pop(handle, None)
        stalled = self._stalled_in.get(block)
        if stalled is not None:
            stalled.pop(handle, None)
            if not stalled:
                del self._stalled_in[block]

    def _victim(self, now: float) -> H | None:
        """The stalled connection quiet the longest, preferring one from an address not
        trusted."""
        for i, handle in enumerate(self._stalled):
            if i >= _EVICTION_SCAN:
                break
            if not self._is_trusted(self._pending[handle].address, now):
                return handle
        return next(iter(self._stalled), None)

    def _leave(self, handle: H, outcome: Outcome, now: float) -> None:
        pending = self._pending[handle]
        self._forget(handle, pending)
        if self._is_trusted(pending.address, now):
            return
        amount = (
            self.limits.penalty_stall if outcome is Outcome.STALLED else self.limits.penalty_noauth
        )
        if amount > 0:
            self._penalise(pending.block, amount, now)

    def _forget(self, handle: H, pending: _Pending) -> None:
        del self._pending[handle]
        self._unstall(handle, pending.block)
        for counter, key in (
            (self._per_address, pending.address),
            (self._per_block, pending.block),
        ):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def _owed(self, block: str, now: float) -> tuple[float, bool]:
        record = self._penalties.get(block)
        if record is None:
            return 0.0, False
        owed, since, enforced = record
        left = owed - (now - since)
        if left <= 0:
            del self._penalties[block]  # drained: forgotten
            return 0.0, False
        return left, enforced

    def _penalise(self, block: str, amount: float, now: float) -> None:
        lim = self.limits
        left, enforced = self._owed(block, now)
        owed = min(lim.penalty_max, left + amount)
        self._penalties[block] = (owed, now, enforced or owed >= lim.penalty_min)
        self._penalties.move_to_end(block)
        while len(self._penalties) > MAX_TRACKED:
            self._penalties.popitem(last=False)

    def _penalty_active(self, block: str, now: float) -> bool:
        return self._owed(block, now)[1]

    def _is_trusted(self, address: str, now: float) -> bool:
        since = self._trusted.get(address)
        if since is None:
            return False
        if now - since >= self.limits.trust_for:
            del self._trusted[address]
            return False
        return True


class RefusalSummary:
    """Refused connections counted per block and reason, written as one line per block
    per interval (at most ``max_lines`` blocks, the rest added up in one more line).

    :param interval: seconds between two summaries.
    """

    def __init__(self, interval: float, clock: Callable[[], float], max_lines: int = 20) -> None:
        self.interval = interval
        self.max_lines = max_lines
        self._clock = clock
        self._since = clock()
        self._counts: dict[str, Counter[str]] = {}

    def count(self, block: str, reason: str) -> None:
        counts = self._counts.get(block)
        if counts is None:
            if len(self._counts) >= MAX_TRACKED:
                block = "other"
                counts = self._counts.setdefault(block, Counter())
            else:
                counts = self._counts[block] = Counter()
        counts[reason] += 1

    def due(self) -> list[tuple[str, dict[str, int]]]:
        """If an interval has passed: the blocks with refusals (most first) and their
        counts by reason, then start a new interval; otherwise nothing."""
        now = self._clock()
        if now - self._since < self.interval:
            return []
        self._since = now
        counts, self._counts = self._counts, {}
        ranked = sorted(counts.items(), key=lambda kv: -sum(kv[1].values()))
        lines = [(block, dict(c)) for block, c in ranked[: self.max_lines]]
        rest: Counter[str] = Counter()
        for _, c in ranked[self.max_lines :]:
            rest.update(c)
        if rest:
            lines.append((f"{len(ranked) - self.max_lines} other blocks", dict(rest)))
        return lines


__all__ = ["Decision", "Drop", "Gate", "GateLimits", "Outcome", "RefusalSummary", "netblock"]

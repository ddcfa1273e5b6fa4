"""The audit log: one append-only, hash-chained event format shared by agent, relay and vendor.

Each entry is one JSON object on one line (JSON lines)::

    {"at":"2026-11-25T00:31:05Z","event":"access.opened","fields":{"key_id":"k1"},
     "hash":"<sha256 hex>","prev":"<hash of entry seq-1>","seq":5}

``hash`` is the SHA-256 of the canonical JSON of ``{seq, at, event, fields, prev}``
(``sort_keys``, ``separators=(",", ":")``, ``ensure_ascii=False``, UTF-8), and ``prev``
is the ``hash`` of the entry before (:data:`GENESIS` for entry 1). Numbers run 1, 2, 3 …
without gaps; times are UTC to the second.

What the chain proves, and what it cannot
-----------------------------------------
Because every entry carries the hash of the one before, :func:`verify` detects an entry
that was changed, removed, swapped with another or inserted in the middle, and says which
one and how. Two kinds of tampering leave a chain that is valid on its own and therefore
cannot be detected from the log alone:

- removing the *last* entries (what is left is a shorter, valid chain);
- changing an entry and then recomputing every later hash (a valid, forged chain).

Both are caught by comparing the log with a chain head, ``(seq, hash)`` of the last
entry, that was kept somewhere the person editing the log cannot reach. That is why the
agent sends its chain head to the vendor (issue 6), why every chain of the shared
database is anchored in another one (:mod:`tether.store.anchors`), and why
:func:`verify` and :meth:`AuditLog.verify` take ``expected_head``.

Entries never hold secrets: writers refuse field names that look like one
(``password``, ``key``, ``token``, ``secret`` …) and values that look like private keys or
tether keys. Pass identifiers (``key_id``, a fingerprint) instead.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

from tether.errors import TetherError

#: ``prev`` of the first entry of every chain.
GENESIS: Final = "0" * 64

#: Largest entry a writer accepts, as one line of the file (bytes, newline excluded).
MAX_LINE_BYTES: Final = 16 * 1024
#: Limits that keep an entry small: number of fields, characters per string, list items.
MAX_FIELDS: Final = 64
MAX_STRING: Final = 4096
MAX_LIST: Final = 256

_EVENT = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_NAME_MAX = 64
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_SECRET_SUFFIXES = (
    "password",
    "passwords",
    "passwd",
    "passphrase",
    "key",
    "keys",
    "token",
    "tokens",
    "secret",
    "secrets",
)
_SECRET_VALUE = re.compile(r"PRIVATE KEY-----|\bv[1-4]\.(?:local|public)\.")
_KEYS = frozenset({"seq", "at", "event", "fields", "prev", "hash"})
_READ_CHUNK = 4096

#: A field value: JSON scalars or a short list of strings and integers.
FieldValue: TypeAlias = str | int | float | bool | Sequence[str | int] | None

ProblemKind: TypeAlias = Literal[
    "changed", "missing", "reordered", "malformed", "truncated", "duplicate", "unanchored"
]


class AuditFormatError(TetherError, ValueError):
    """An audit line or entry is malformed; the message says what is wrong with it."""


def format_at(at: datetime) -> str:
    """Return ``at`` as the log writes it: UTC, to the second, ``Z`` suffix."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_event(event: object) -> None:
    if not (isinstance(event, str) and len(event) <= _NAME_MAX and _EVENT.fullmatch(event)):
        raise ValueError(f"event {event!r} is not a dotted lower-case name like 'access.opened'")


def _check_text(text: str, what: str) -> None:
    if len(text) > MAX_STRING:
        raise ValueError(f"{what} is longer than {MAX_STRING} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None


def _check_int(value: int, what: str) -> None:
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"{what} is out of range for a 64-bit integer")


def _normalise_value(name: str, value: object) -> FieldValue:
    """Validate one field value; lists become tuples so an entry is deeply immutable."""
    what = f"field {name!r}"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        _check_int(value, what)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} is not a finite number")
        return value
    if isinstance(value, str):
        _check_text(value, what)
        return value
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST:
            raise ValueError(f"{what} has more than {MAX_LIST} items")
        items: list[str | int] = []
        for item in value:
            if isinstance(item, str):
                _check_text(item, f"an item of {what}")
            elif isinstance(item, int) and not isinstance(item, bool):
                _check_int(item, f"an item of {what}")
            else:
                raise ValueError(f"{what} may only list strings and integers")
            items.append(item)
        return tuple(items)
    raise ValueError(
        f"{what} has type {type(value).__name__}; use a string, number, boolean, null "
        "or a list of strings and integers"
    )


def _normalise_fields(fields: object) -> Mapping[str, FieldValue]:
    if not isinstance(fields, Mapping):
        raise ValueError("fields must be a mapping of names to values")
    if len(fields) > MAX_FIELDS:
        raise ValueError(f"an entry may have at most {MAX_FIELDS} fields")
    out: dict[str, FieldValue] = {}
    for name, value in fields.items():
        if not (isinstance(name, str) and len(name) <= _NAME_MAX and _FIELD_NAME.fullmatch(name)):
            raise ValueError(
                f"field name {name!r} is not allowed: use lower-case letters, digits and "
                "'_' (not starting with a digit), at most 64 characters"
            )
        out[name] = _normalise_value(name, value)
    return MappingProxyType(out)


def check_no_secrets(fields: Mapping[str, object]) -> None:
    """Raise :class:`ValueError` if a field name or value looks like a secret.

    Names that are or end with ``password``, ``passphrase``, ``key``, ``token`` or
    ``secret`` (and plurals) are refused, as are values that contain a PEM private key
    or a PASETO token. Callers log identifiers (``key_id``, fingerprints), never keys.
    """
    for name, value in fields.items():
        if name.endswith(_SECRET_SUFFIXES):
            raise ValueError(
                f"field name {name!r} looks like a secret; audit entries never hold "
                "secrets: log an identifier instead (e.g. key_id or a fingerprint)"
            )
        texts = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(t, str) and _SECRET_VALUE.search(t) for t in texts):
            raise ValueError(
                f"field {name!r} holds what looks like a private key or a tether key; "
                "log its id or fingerprint instead"
            )


def check_event(event: str, fields: Mapping[str, object]) -> None:
    """Raise :class:`ValueError` unless ``event`` and ``fields`` make a valid, secret-free entry.

    Writers call it before they lock or touch their storage, so bad input changes nothing.
    """
    _check_event(event)
    check_no_secrets(_normalise_fields(fields))


def _content_hash(
    seq: int, at: str, event: str, fields: Mapping[str, FieldValue], prev: str
) -> str:
    body = {"seq": seq, "at": at, "event": event, "fields": dict(fields), "prev": prev}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One event of the log, linked to the entry before it.

    Constructing an entry validates its shape (and normalises ``at`` to UTC seconds and
    list values to tuples) but not its hash: a stored entry may have been tampered with,
    and :func:`verify` is what says so. Build new entries with :func:`chain_entry`.

    :ivar seq: position in the chain, 1 for the first entry, no gaps.
    :ivar at: when it happened, timezone-aware UTC, whole seconds.
    :ivar event: dotted lower-case name, e.g. ``access.opened``.
    :ivar fields: small JSON-able details (no nested objects, no secrets).
    :ivar prev: ``hash`` of the previous entry, :data:`GENESIS` for entry 1.
    :ivar hash: SHA-256 hex of the canonical JSON of the other five.
    """

    seq: int
    at: datetime
    event: str
    fields: Mapping[str, FieldValue] = field(hash=False)
    prev: str
    hash: str

    def __post_init__(self) -> None:
        """Validate the shape of the entry and normalise ``at`` and ``fields``."""
        if type(self.seq) is not int or not 1 <= self.seq < 2**63:
            raise ValueError(f"seq must be a positive integer, not {self.seq!r}")
        if not isinstance(self.at, datetime) or self.at.tzinfo is None:
            raise ValueError("at must be a timezone-aware datetime")
        at = self.at.astimezone(UTC).replace(microsecond=0)
        if not 1970 <= at.year <= 9999:
            raise ValueError(f"at is out of range: {at.isoformat()}")
        object.__setattr__(self, "at", at)
        _check_event(self.event)
        object.__setattr__(self, "fields", _normalise_fields(self.fields))
        for name in ("prev", "hash"):
            value = getattr(self, name)
            if not (isinstance(value, str) and _HEX64.fullmatch(value)):
                raise ValueError(f"{name} must be 64 lower-case hex digits")

    def content_hash(self) -> str:
        """Return the hash this entry's content has now (equals ``hash`` unless tampered)."""
        return _content_hash(self.seq, format_at(self.at), self.event, self.fields, self.prev)

    def describe(self) -> str:
        """Name the entry for a person: ``entry 5 (access.opened at 2026-11-25T00:31:05Z)``."""
        return f"entry {self.seq} ({self.event} at {format_at(self.at)})"

    def to_json_line(self) -> str:
        """Return the entry as one line of ASCII JSON, without the trailing newline."""
        body = {
            "seq": self.seq,
            "at": format_at(self.at),
            "event": self.event,
            "fields": dict(self.fields),
            "prev": self.prev,
            "hash": self.hash,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json_line(cls, line: str) -> AuditEntry:
        """Parse one line written by :meth:`to_json_line`.

        A single trailing newline is allowed. Anything else that is not exactly an entry
        (other or duplicate keys, wrong types, a second line, NaN) raises
        :class:`AuditFormatError`. The hash is *not* checked here; :func:`verify` does.
        """
        text = line[:-1] if line.endswith("\n") else line
        if "\n" in text or "\r" in text:
            raise AuditFormatError("an entry must be exactly one line")
        if not text.strip():
            raise AuditFormatError("the line is empty")
        try:
            raw = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise AuditFormatError(f"not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise AuditFormatError("not a JSON object")
        if set(raw) != _KEYS:
            raise AuditFormatError(f"expected exactly the keys {sorted(_KEYS)}, got {sorted(raw)}")
        at_text = raw["at"]
        if not (isinstance(at_text, str) and _AT.fullmatch(at_text)):
            raise AuditFormatError(f"'at' must look like 2026-01-31T12:00:00Z, not {at_text!r}")
        try:
            at = datetime.strptime(at_text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            return cls(raw["seq"], at, raw["event"], raw["fields"], raw["prev"], raw["hash"])
        except ValueError as exc:
            raise AuditFormatError(str(exc)) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def chain_entry(
    prev: AuditEntry | tuple[int, str] | None,
    event: str,
    fields: Mapping[str, FieldValue],
    at: datetime,
) -> AuditEntry:
    """Return the entry that follows ``prev`` (pure: nothing is written).

    :param prev: the current last entry, or ``None`` to start a chain, or the
        ``(seq, hash)`` of a head recorded elsewhere when the entries up to it were
        removed: the chain goes on after it, so no number is used twice and the gap
        shows as missing entries.
    :param event: dotted lower-case name, e.g. ``access.opened``.
    :param fields: small details; secret-looking names and values are refused.
    :param at: when it happened (timezone-aware; stored as UTC seconds).
    :raises ValueError: a bad event name, field, secret-looking field or an entry over
        :data:`MAX_LINE_BYTES`.
    """
    check_no_secrets(_normalise_fields(fields))
    head = (prev.seq, prev.hash) if isinstance(prev, AuditEntry) else prev
    seq = 1 if head is None else head[0] + 1
    link = GENESIS if head is None else head[1]
    draft = AuditEntry(seq, at, event, fields, link, GENESIS)
    entry = AuditEntry(seq, draft.at, draft.event, draft.fields, link, draft.content_hash())
    if len(entry.to_json_line()) > MAX_LINE_BYTES:
        raise ValueError(f"the entry is larger than {MAX_LINE_BYTES} bytes; log less detail")
    return entry


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a log.

    :ivar seq: the entry it is about (``None`` for an unreadable line).
    :ivar kind: ``changed``, ``missing``, ``reordered``, ``malformed``, ``truncated``,
        ``duplicate`` or ``unanchored`` (entries whose head was never recorded elsewhere:
        the record of them was removed; see :mod:`tether.store.anchors`).
    :ivar message: which entry or line, and what happened to it, in words.
    """

    seq: int | None
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class Verification:
    """The result of checking a log.

    :ivar ok: no problem was found.
    :ivar entries: how many readable entries the log has.
    :ivar head: ``hash`` of the log's last readable entry (:data:`GENESIS` if none).
    :ivar problems: what is wrong, in the order it appears in the log.
    :ivar head_seq: ``seq`` of that last entry (0 if none).
    """

    ok: bool
    entries: int
    head: str
    problems: tuple[Problem, ...]
    head_seq: int = 0


def verify(
    source: Iterable[AuditEntry | str], *, expected_head: tuple[int, str] | None = None
) -> Verification:
    """Check a chain of entries (or raw JSON lines) and say what is wrong with it (pure).

    Detects entries changed after they were written (content no longer matches the hash,
    or the next entry no longer links to it), missing entries (gaps, naming the missing
    numbers), entries out of order, repeated or forked entries, and unreadable lines (by
    line number). The removal of the *last* entries, or a chain rewritten with recomputed
    hashes, is only visible against ``expected_head`` — a ``(seq, hash)`` recorded
    elsewhere earlier (see the module docstring).

    :param source: entries or lines in file order (line numbers count from 1).
    :param expected_head: a head this log must still contain, e.g. the one the vendor has.
    :raises ValueError: ``expected_head`` itself is malformed.
    """
    found: list[tuple[float, Problem]] = []
    items: list[tuple[int, AuditEntry]] = []
    malformed = False
    for lineno, item in enumerate(source, start=1):
        if isinstance(item, AuditEntry):
            items.append((lineno, item))
            continue
        try:
            items.append((lineno, AuditEntry.from_json_line(item)))
        except AuditFormatError as exc:
            malformed = True
            text = f"line {lineno} is not a readable audit entry: {exc}"
            found.append((lineno, Problem(None, "malformed", text)))

    changed: set[int] = set()
    for lineno, entry in items:
        if entry.content_hash() != entry.hash:
            changed.add(entry.seq)
            text = f"{entry.describe()} on line {lineno} was changed after it was written: its content no longer matches its hash"
            found.append((lineno, Problem(entry.seq, "changed", text)))

    first: dict[int, tuple[int, AuditEntry]] = {}
    for lineno, entry in items:
        if entry.seq in first:
            seen_line, seen = first[entry.seq]
            if seen == entry:
                text = f"{entry.describe()} appears twice, on lines {seen_line} and {lineno}"
            else:
                text = f"two different entries are numbered {entry.seq}, on lines {seen_line} and {lineno}: the chain was forked (two writers) or an entry was inserted"
            found.append((lineno, Problem(entry.seq, "duplicate", text)))
        else:
            first[entry.seq] = (lineno, entry)
    found.extend(_order_problems(first))

    numbers = sorted(first)
    hint = (
        " (removed, or on a line that cannot be read)" if malformed else " (removed from the log)"
    )
    for low, high in itertools.pairwise([0, *numbers]):
        if high == low + 1:
            continue
        after_line, after = first[high]
        which = f"entry {low + 1} is" if high == low + 2 else f"entries {low + 1} to {high - 1} are"
        before = f"entry {low}" if low else "the start of the chain"
        text = f"{which} missing{hint}: entry {after.seq} on line {after_line} follows {before}"
        found.append((after_line, Problem(low + 1, "missing", text)))

    if 1 in first and first[1][1].prev != GENESIS:
        lineno, entry = first[1]
        text = f"{entry.describe()} on line {lineno} does not start a chain: its link is not the genesis value"
        found.append((lineno, Problem(1, "changed", text)))
    for seq in numbers:
        if seq + 1 not in first or seq in changed or seq + 1 in changed:
            continue
        (lineno, entry), (next_line, nxt) = first[seq], first[seq + 1]
        if nxt.prev != entry.hash:
            text = f"{entry.describe()} on line {lineno} was changed or replaced after it was written: entry {nxt.seq} (line {next_line}) no longer links to it"
            found.append((lineno, Problem(seq, "changed", text)))

    if expected_head is not None:
        found.extend(_check_head(expected_head, first, numbers[-1] if numbers else 0))

    last = items[-1][1] if items else None
    problems = tuple(p for _, p in sorted(found, key=lambda pair: pair[0]))
    return Verification(
        ok=not problems,
        entries=len(items),
        head=last.hash if last else GENESIS,
        problems=problems,
        head_seq=last.seq if last else 0,
    )


def _order_problems(first: Mapping[int, tuple[int, AuditEntry]]) -> list[tuple[float, Problem]]:
    """Report the fewest entries that, moved back into place, put the log in order.

    Those are the entries outside a longest run of increasing numbers in file order. The
    run is built from the end of the file, so of two swapped entries the later one is
    named.
    """
    in_file = sorted(first.values(), key=lambda item: item[0])
    backwards = [-entry.seq for _, entry in reversed(in_file)]
    tail_values: list[int] = []  # smallest last value of an increasing run of each length
    tail_index: list[int] = []
    parent: list[int | None] = []
    for i, value in enumerate(backwards):
        k = bisect.bisect_left(tail_values, value)
        parent.append(tail_index[k - 1] if k else None)
        if k == len(tail_values):
            tail_values.append(value)
            tail_index.append(i)
        else:
            tail_values[k], tail_index[k] = value, i
    keep: set[int] = set()
    at = tail_index[-1] if tail_index else None
    while at is not None:
        keep.add(len(in_file) - 1 - at)
        at = parent[at]
    numbers = sorted(first)
    out: list[tuple[float, Problem]] = []
    for i, (lineno, entry) in enumerate(in_file):
        if i in keep:
            continue
        rank = bisect.bisect_left(numbers, entry.seq)
        before = first[numbers[rank - 1]] if rank else None
        after = first[numbers[rank + 1]] if rank + 1 < len(numbers) else None
        if after is not None and after[0] < lineno:
            where = (
                f"it comes after entry {after[1].seq} (line {after[0]}), which it should precede"
            )
        elif before is not None and before[0] > lineno:
            where = (
                f"it comes before entry {before[1].seq} (line {before[0]}), which it should follow"
            )
        else:
            where = "it is not where its number puts it"
        text = f"{entry.describe()} on line {lineno} is out of order: {where}"
        out.append((lineno, Problem(entry.seq, "reordered", text)))
    return out


def _check_head(
    expected: tuple[int, str], first: Mapping[int, tuple[int, AuditEntry]], top: int
) -> list[tuple[float, Problem]]:
    seq, digest = expected
    if (
        type(seq) is not int
        or seq < 0
        or not (isinstance(digest, str) and _HEX64.fullmatch(digest))
    ):
        raise ValueError("expected_head must be (seq >= 0, 64 lower-case hex digits)")
    if seq == 0:
        if digest != GENESIS:
            raise ValueError("an expected head of entry 0 must be the genesis value")
        return []
    if top < seq:
        ends = f"ends at entry {top}" if top else "is empty"
        gone = f"entry {seq} was" if top + 1 == seq else f"entries {top + 1} to {seq} were"
        text = f"the log {ends}, but entry {seq} was recorded earlier as its head: {gone} removed from the end of the log"
        return [(math.inf, Problem(top + 1, "truncated", text))]
    if seq in first and first[seq][1].hash != digest:
        lineno, entry = first[seq]
        text = f"{entry.describe()} on line {lineno} is not the entry recorded earlier as the head: the log was rewritten up to this entry and its hashes recomputed"
        return [(lineno, Problem(seq, "changed", text))]
    return []


__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditFormatError",
    "Problem",
    "Verification",
    "chain_entry",
    "check_event",
    "check_no_secrets",
    "format_at",
    "verify",
]

"""The hash-chained audit format and its verification (pure: no files).

SPEC (Invariants): "The audit log is append-only and hash-chained: a changed or removed
entry is detected."
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tether.audit import (
    GENESIS,
    MAX_LINE_BYTES,
    AuditEntry,
    AuditFormatError,
    FieldValue,
    Problem,
    chain_entry,
    verify,
)

T0 = datetime(2026, 11, 25, 0, 31, 5, tzinfo=UTC)
EVENTS = ("access.opened", "tunnel.up", "session.started", "session.ended", "access.closed")


def make_chain(n: int = 20) -> list[AuditEntry]:
    """A valid chain of ``n`` entries, one minute apart."""
    chain: list[AuditEntry] = []
    for i in range(n):
        prev = chain[-1] if chain else None
        fields: dict[str, FieldValue] = {"n": i + 1, "key_id": f"k-{i + 1}", "ports": [22, 443]}
        chain.append(chain_entry(prev, EVENTS[i % len(EVENTS)], fields, T0 + timedelta(minutes=i)))
    return chain


def lines_of(chain: list[AuditEntry]) -> list[str]:
    return [entry.to_json_line() for entry in chain]


def edit_line(line: str, **changes: Any) -> str:
    """Rewrite one JSON line the way someone with a text editor would."""
    raw = json.loads(line)
    raw["fields"].update(changes)
    return json.dumps(raw)


def rehash(entry: AuditEntry, prev: str) -> AuditEntry:
    """What an attacker does: relink ``entry`` to ``prev`` and recompute its hash."""
    draft = AuditEntry(entry.seq, entry.at, entry.event, entry.fields, prev, GENESIS)
    return AuditEntry(entry.seq, entry.at, entry.event, entry.fields, prev, draft.content_hash())


def relink(entries: list[AuditEntry], prev: str) -> list[AuditEntry]:
    """Recompute every link and hash of ``entries``, starting from ``prev``."""
    out: list[AuditEntry] = []
    for entry in entries:
        out.append(rehash(entry, out[-1].hash if out else prev))
    return out


def only_problem(lines: list[str], **kw: Any) -> Problem:
    result = verify(lines, **kw)
    assert not result.ok
    assert len(result.problems) == 1, result.problems
    return result.problems[0]


# --- the invariant ------------------------------------------------------------------


def test_invariant_audit_log_is_append_only_and_hash_chained() -> None:
    chain = make_chain()
    lines = lines_of(chain)
    assert verify(lines).ok

    changed = [*lines[:6], edit_line(lines[6], key_id="k-forged"), *lines[7:]]
    removed = lines[:6] + lines[7:]

    assert [(p.seq, p.kind) for p in verify(changed).problems] == [(7, "changed")]
    assert [(p.seq, p.kind) for p in verify(removed).problems] == [(7, "missing")]


def test_a_chain_of_twenty_verifies() -> None:
    chain = make_chain()

    result = verify(lines_of(chain))

    assert result.ok
    assert result.problems == ()
    assert (result.entries, result.head_seq, result.head) == (20, 20, chain[-1].hash)
    assert chain[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in itertools.pairwise(chain))
    assert [e.seq for e in chain] == list(range(1, 21))


def test_verify_takes_entries_as_well_as_lines() -> None:
    chain = make_chain()

    assert verify(chain).ok
    assert verify(chain[:6] + chain[7:]).problems[0].kind == "missing"


def test_an_empty_log_verifies_with_the_genesis_head() -> None:
    result = verify([])

    assert (result.ok, result.entries, result.head, result.head_seq) == (True, 0, GENESIS, 0)


# --- what a chain alone detects -----------------------------------------------------


def test_an_edited_field_names_the_entry_that_was_changed() -> None:
    lines = lines_of(make_chain())
    lines[6] = edit_line(lines[6], key_id="k-forged")

    problem = only_problem(lines)

    assert (problem.seq, problem.kind) == (7, "changed")
    assert problem.message.startswith("entry 7 (tunnel.up at 2026-11-25T00:37:05Z) on line 7")
    assert "was changed after it was written" in problem.message


def test_an_edited_entry_with_its_own_hash_recomputed_breaks_the_next_link() -> None:
    chain = make_chain()
    edited = AuditEntry(7, chain[6].at, chain[6].event, {"n": 700}, chain[6].prev, GENESIS)
    chain[6] = rehash(edited, chain[5].hash)

    problem = only_problem(lines_of(chain))

    assert (problem.seq, problem.kind) == (7, "changed")
    assert "entry 8 (line 8) no longer links to it" in problem.message


def test_a_deleted_entry_is_named_as_missing() -> None:
    lines = lines_of(make_chain())
    del lines[6]

    problem = only_problem(lines)

    assert (problem.seq, problem.kind) == (7, "missing")
    assert problem.message.startswith("entry 7 is missing (removed from the log)")
    assert "entry 8 on line 7 follows entry 6" in problem.message


def test_several_deleted_entries_are_named_as_a_range() -> None:
    lines = lines_of(make_chain())
    del lines[6:9]

    problem = only_problem(lines)

    assert (problem.seq, problem.kind) == (7, "missing")
    assert problem.message.startswith("entries 7 to 9 are missing")


def test_deleting_the_first_entries_is_detected() -> None:
    lines = lines_of(make_chain())[2:]

    problem = only_problem(lines)

    assert (problem.seq, problem.kind) == (1, "missing")
    assert "entries 1 to 2 are missing" in problem.message
    assert "follows the start of the chain" in problem.message


def test_swapped_entries_are_reported_as_reordered() -> None:
    lines = lines_of(make_chain())
    lines[6], lines[7] = lines[7], lines[6]

    problem = only_problem(lines)

    assert (problem.seq, problem.kind) == (7, "reordered")
    assert "entry 7 (" in problem.message
    assert "on line 8 is out of order: it comes after entry 8 (line 7)" in problem.message


def test_an_entry_moved_earlier_is_the_only_one_reported() -> None:
    lines = lines_of(make_chain())
    lines.insert(2, lines.pop(9))  # entry 10 now sits between 2 and 3

    problem = only_problem(lines)

    assert (problem.seq, problem.kind) == (10, "reordered")
    assert "on line 3 is out of order: it comes before entry 9 (line 10)" in problem.message


def test_an_entry_moved_to_the_end_is_the_only_one_reported() -> None:
    lines = lines_of(make_chain())
    lines.append(lines.pop(2))

    problem = only_problem(lines)

    assert (problem.seq, problem.kind) == (3, "reordered")
    assert "on line 20 is out of order: it comes after entry 4 (line 3)" in problem.message


def test_a_garbage_line_is_reported_with_its_line_number() -> None:
    lines = lines_of(make_chain())
    lines.insert(4, "this is not json {")

    problem = only_problem(lines)

    assert (problem.seq, problem.kind) == (None, "malformed")
    assert problem.message.startswith("line 5 is not a readable audit entry")


def test_a_garbled_entry_is_both_unreadable_and_missing() -> None:
    lines = lines_of(make_chain())
    lines[6] = lines[6][:40]

    problems = verify(lines).problems

    assert [(p.seq, p.kind) for p in problems] == [(None, "malformed"), (7, "missing")]
    assert "line 7" in problems[0].message
    assert "or on a line that cannot be read" in problems[1].message


def test_a_repeated_line_is_a_duplicate() -> None:
    lines = lines_of(make_chain())
    lines.insert(10, lines[4])

    problem = only_problem(lines)

    assert (problem.seq, problem.kind) == (5, "duplicate")
    assert "appears twice, on lines 5 and 11" in problem.message


def test_two_writers_appending_at_once_show_as_a_fork() -> None:
    chain = make_chain()
    one = chain_entry(chain[-1], "access.closed", {"by": "cli"}, T0 + timedelta(hours=1))
    two = chain_entry(chain[-1], "access.closed", {"by": "daemon"}, T0 + timedelta(hours=1))

    problem = only_problem(lines_of([*chain, one, two]))

    assert (problem.seq, problem.kind) == (21, "duplicate")
    assert "the chain was forked" in problem.message


def test_a_first_entry_that_does_not_start_at_genesis_is_reported() -> None:
    chain = relink(make_chain(), "f" * 64)

    problem = only_problem(lines_of(chain))

    assert (problem.seq, problem.kind) == (1, "changed")
    assert "does not start a chain" in problem.message


def test_problems_are_listed_in_the_order_they_appear_in_the_log() -> None:
    lines = lines_of(make_chain())
    lines[15] = edit_line(lines[15], n=0)
    del lines[9]
    lines.insert(2, "{}")

    kinds = [(p.kind, p.seq) for p in verify(lines).problems]

    assert kinds == [("malformed", None), ("missing", 10), ("changed", 16)]


# --- what only a head kept elsewhere detects ------------------------------------------


def test_a_removed_last_entry_is_only_detected_against_the_expected_head() -> None:
    chain = make_chain()
    lines = lines_of(chain)[:-1]

    assert verify(lines).ok  # a shorter chain is still a valid chain
    problem = only_problem(lines, expected_head=(20, chain[-1].hash))

    assert (problem.seq, problem.kind) == (20, "truncated")
    assert "the log ends at entry 19, but entry 20 was recorded earlier" in problem.message
    assert "entry 20 was removed from the end of the log" in problem.message


def test_an_emptied_log_is_truncated_against_the_expected_head() -> None:
    chain = make_chain(3)

    problem = only_problem([], expected_head=(3, chain[-1].hash))

    assert problem.kind == "truncated"
    assert "the log is empty" in problem.message
    assert "entries 1 to 3 were removed" in problem.message


def test_a_forged_chain_verifies_locally_but_not_against_the_vendors_head() -> None:
    """This is why the agent sends its chain head to the vendor (issue 6)."""
    chain = make_chain()
    head = (20, chain[-1].hash)
    edited = AuditEntry(7, chain[6].at, chain[6].event, {"n": 7}, GENESIS, GENESIS)
    forged = chain[:6] + relink([edited, *chain[7:]], chain[5].hash)

    assert verify(lines_of(forged)).ok
    problem = only_problem(lines_of(forged), expected_head=head)

    assert (problem.seq, problem.kind) == (20, "changed")
    assert "is not the entry recorded earlier as the head" in problem.message


def test_a_log_that_grew_past_the_expected_head_verifies() -> None:
    chain = make_chain()

    assert verify(lines_of(chain), expected_head=(12, chain[11].hash)).ok
    assert verify(lines_of(chain), expected_head=(20, chain[19].hash)).ok
    assert verify(lines_of(chain), expected_head=(0, GENESIS)).ok


@pytest.mark.parametrize(
    "head", [(-1, GENESIS), (1, "xyz"), (1, "A" * 64), (0, "f" * 64), (True, GENESIS)]
)
def test_a_malformed_expected_head_is_refused(head: tuple[int, str]) -> None:
    with pytest.raises(ValueError, match=r"expected_head|head of entry 0"):
        verify(lines_of(make_chain(2)), expected_head=head)


# --- writing entries --------------------------------------------------------------------


def test_the_hash_is_deterministic_and_pinned() -> None:
    fields: dict[str, FieldValue] = {
        "key_id": "k-1",
        "ports": [22, 443],
        "note": "Zürich",
        "direct": False,
        "ttl": 1.5,
        "by": None,
    }
    at = datetime(2026, 11, 25, 0, 31, 5, 999, tzinfo=UTC)

    entry = chain_entry(None, "access.opened", fields, at)

    body = {
        "seq": 1,
        "at": "2026-11-25T00:31:05Z",
        "event": "access.opened",
        "fields": fields,
        "prev": GENESIS,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert entry.hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert entry.hash == "922fb824da0ff22c8e94aed0fec8cf359088254dd89ca37f3720576759598314"
    assert chain_entry(None, "access.opened", dict(reversed(fields.items())), at) == entry
    nxt = chain_entry(entry, "access.closed", {"reason": "expired"}, at + timedelta(days=1))
    assert (nxt.seq, nxt.prev) == (2, entry.hash)
    assert nxt.hash == "04ae00f631b33b475e2376d94564c10850a4f767c50316cf33fd197886fa936a"


def test_json_line_round_trip() -> None:
    at = datetime(2026, 11, 25, 1, 31, 5, 123456, tzinfo=timezone(timedelta(hours=1)))
    entry = chain_entry(None, "access.opened", {"note": "Zürich\u2028x", "ports": [22]}, at)

    line = entry.to_json_line()
    again = AuditEntry.from_json_line(line + "\n")

    assert again == entry
    assert line.isascii()
    assert "\n" not in line
    assert again.at == datetime(2026, 11, 25, 0, 31, 5, tzinfo=UTC)
    assert '"at":"2026-11-25T00:31:05Z"' in line
    assert again.fields["ports"] == (22,)
    assert hash(again) == hash(entry)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("password", "hunter2"),
        ("root_password", "x"),
        ("ssh_key", "AAAA"),
        ("privatekey", "x"),
        ("api_token", "x"),
        ("tokens", ["a"]),
        ("client_secret", "x"),
        ("passphrase", "x"),
        ("note", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn..."),
        ("pasted", "v4.public.eyJzZXJpYWwiOiJTMSJ9..."),
        ("items", ["ok", "v4.local.abc"]),
    ],
)
def test_secret_looking_fields_are_refused(name: str, value: FieldValue) -> None:
    with pytest.raises(ValueError, match=r"looks like a secret|private key or a tether key"):
        chain_entry(None, "access.opened", {name: value}, T0)


@pytest.mark.parametrize(
    "name", ["key_id", "key_fingerprint", "token_id", "host_key_fp", "keyring"]
)
def test_identifiers_of_secrets_are_fine(name: str) -> None:
    assert chain_entry(None, "access.opened", {name: "SHA256:abc"}, T0).fields[name] == "SHA256:abc"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"nested": {"a": 1}}, "type dict"),
        ({"Key_Id": "x"}, "field name"),
        ({"1st": "x"}, "field name"),
        ({"a-b": "x"}, "field name"),
        ({"": "x"}, "field name"),
        ({"x" * 65: 1}, "field name"),
        ({"ratio": math.nan}, "finite"),
        ({"ratio": math.inf}, "finite"),
        ({"flags": [True]}, "strings and integers"),
        ({"items": [{"a": 1}]}, "strings and integers"),
        ({"items": [1.5]}, "strings and integers"),
        ({"items": list(range(257))}, "more than 256"),
        ({"raw": b"bytes"}, "type bytes"),
        ({"tags": {"a", "b"}}, "type set"),
        ({"text": "x" * 4097}, "longer than"),
        ({"text": "\ud800"}, "not valid Unicode"),
        ({"big": 2**64}, "out of range"),
        ({f"f{i}": i for i in range(65)}, "at most 64 fields"),
    ],
)
def test_fields_are_validated(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chain_entry(None, "access.opened", fields, T0)


def test_an_entry_over_the_size_limit_is_refused() -> None:
    fields: dict[str, FieldValue] = {f"f{i}": "x" * 4000 for i in range(5)}
    with pytest.raises(ValueError, match=f"larger than {MAX_LINE_BYTES}"):
        chain_entry(None, "access.opened", fields, T0)


@pytest.mark.parametrize(
    "event", ["opened", "Access.Opened", "access..opened", "access.", ".x", "a.b-c", "a.1b"]
)
def test_event_names_are_dotted_lower_case(event: str) -> None:
    with pytest.raises(ValueError, match="dotted lower-case"):
        chain_entry(None, event, {}, T0)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        chain_entry(None, "access.opened", {}, datetime(2026, 1, 1))


def test_a_time_before_1970_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        chain_entry(None, "access.opened", {}, datetime(1969, 12, 31, tzinfo=UTC))


GOOD = chain_entry(None, "access.opened", {"key_id": "k"}, T0).to_json_line()


def _mutated(**changes: Any) -> str:
    raw = json.loads(GOOD)
    raw.update(changes)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("[1, 2]", "not a JSON object"),
        ("{not json", "not valid JSON"),
        (GOOD[:-5], "not valid JSON"),
        (GOOD + "\n" + GOOD, "exactly one line"),
        (GOOD.replace('"seq":1', '"seq":1,"seq":2'), "duplicate key"),
        (GOOD.replace('"seq":1', '"seq":NaN'), "NaN"),
        (_mutated(extra=1), "exactly the keys"),
        (
            json.dumps({k: v for k, v in json.loads(GOOD).items() if k != "prev"}),
            "exactly the keys",
        ),
        (_mutated(seq="1"), "seq"),
        (_mutated(seq=True), "seq"),
        (_mutated(seq=0), "seq"),
        (_mutated(at="2026-11-25T00:31:05+00:00"), "'at' must look like"),
        (_mutated(at="2026-13-25T00:31:05Z"), "does not match"),
        (_mutated(event="Bad Event"), "dotted lower-case"),
        (_mutated(fields=[]), "mapping"),
        (_mutated(fields={"k": {"x": 1}}), "type dict"),
        (_mutated(prev="0" * 63), "prev"),
        (_mutated(hash="G" * 64), "hash"),
    ],
)
def test_malformed_lines_raise_audit_format_error(line: str, match: str) -> None:
    with pytest.raises(AuditFormatError, match=match):
        AuditEntry.from_json_line(line)

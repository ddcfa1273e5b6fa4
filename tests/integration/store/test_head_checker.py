"""The relay's check of a machine's reported chain heads, against a real database.

The agent side is played by ``ask`` (the question the relay would send over the tether)
and :meth:`HeadChecker.answered`; everything else is the relay's own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tether.relay.audit import AuditWriter, HeadChecker
from tether.store import Store, relay_chain

from .helpers import T0

H = {n: f"{n:x}" * 64 for n in range(1, 10)}  # a distinct fake hash per entry number


@dataclass
class Machine:
    """What the relay asked, and the hashes its log holds (answered automatically)."""

    log: dict[int, str] = field(default_factory=dict)
    asked: list[int] = field(default_factory=list)
    silent: bool = False
    checker: HeadChecker | None = None

    def ask(self, seq: int) -> None:
        self.asked.append(seq)
        if not self.silent and self.checker is not None:
            asyncio.get_running_loop().call_soon(self.checker.answered, seq, self.log.get(seq))


Setup = tuple[Store, Machine, HeadChecker, AuditWriter]


@pytest.fixture
async def setup(store: Store) -> AsyncIterator[Setup]:
    machine = Machine()
    writer = AuditWriter(store, relay_chain("r1"), lambda: T0)
    writer.start()
    checker = HeadChecker(
        store,
        "S1",
        "SHA256:m",
        ask=machine.ask,
        audit=writer,
        now=lambda: T0,
        min_interval=0.05,
        answer_timeout=0.2,
    )
    machine.checker = checker
    task = asyncio.get_running_loop().create_task(checker.serve())
    yield store, machine, checker, writer
    checker.stop()
    await asyncio.wait_for(task, 5)
    await writer.aclose()


async def _settle() -> None:
    await asyncio.sleep(0.4)


async def test_reports_in_a_burst_cost_one_check_of_the_newest(setup: Setup) -> None:
    store, machine, checker, _ = setup
    checker.reported(1, H[1])
    await _settle()
    machine.log = {1: H[1]}
    for seq in range(2, 10):
        checker.reported(seq, H[seq])  # a burst: only the last one is checked
    await _settle()
    for _ in range(50):
        checker.reported(9, H[9])  # the head already accepted: nothing to do
    await _settle()

    head = await store.audit.head("S1", "SHA256:m")
    assert head is not None
    assert (head.seq, head.hash, head.mismatches) == (9, H[9], 0)
    assert machine.asked == [1]


async def test_no_answer_is_not_a_mismatch_and_changes_nothing(setup: Setup) -> None:
    store, machine, checker, _ = setup
    checker.reported(3, H[3])
    await _settle()
    machine.silent = True
    checker.reported(4, H[4])
    await _settle()
    checker.answered(3, "f" * 64)  # too late, and unasked by now: ignored
    await _settle()

    head = await store.audit.head("S1", "SHA256:m")
    assert head is not None
    assert (head.seq, head.mismatches) == (3, 0)
    assert not checker.flagged


async def test_after_a_mismatch_the_tether_is_no_longer_checked(setup: Setup) -> None:
    store, machine, checker, writer = setup
    checker.reported(3, H[3])
    await _settle()
    machine.log = {3: "e" * 64}  # rewritten
    checker.reported(4, H[4])
    await _settle()
    for seq in (1, 2, 5, 6):
        checker.reported(seq, H[seq])
    await _settle()
    await writer.aclose()

    head = await store.audit.head("S1", "SHA256:m")
    events = [e for e in (await store.audit.read(relay_chain("r1"))).entries]
    assert head is not None
    assert (head.seq, head.mismatches) == (4, 1)
    assert machine.asked == [3]
    assert [(e.event, e.fields["seq"]) for e in events] == [("audit.head_mismatch", 3)]

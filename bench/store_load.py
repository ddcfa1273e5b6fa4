"""What the fleet's shared store sustains: admissions, heartbeats and channel rows per second.

    python -m bench.store_load --database postgresql+asyncpg://user:pw@127.0.0.1:5432/db

Measures against the database it is given (a fresh, empty one: it writes thousands of
keys), with the batching the relays use: admissions in batches of ``--batch`` (the
relay's :class:`~tether.relay.batching.Batcher` collects what arrives while a write is in
flight), ``--writers`` relays writing at once, heartbeats one statement per relay, and
engineer channels one row each. Prints one JSON object; docs/scaling.md reads from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

from tether.store import KeyKind, Store
from tether.store.admission import Admission

NOW = datetime.now(UTC)


def _accept(_: object) -> None:
    """The relay's key and owner checks pass (their cost is Python, not the store's)."""


async def _issue(store: Store, count: int) -> None:
    for i in range(count):
        await store.keys.record_issued(
            key_id=f"k{i}", serial=f"S{i}", kind=KeyKind.MANUAL, issued_at=NOW,
            not_before=NOW, expires_at=NOW + timedelta(days=1), ports=(22,),
            relay="relay:2222", relay_host_key="SHA256:x", issued_by="bench",
        )  # fmt: skip


async def _admissions(store: Store, count: int, batch: int, writers: int) -> float:
    """Tethers admitted per second, ``writers`` relays each sending batches of ``batch``."""
    per_writer = count // writers

    async def writer(w: int) -> None:
        start = w * per_writer
        for offset in range(0, per_writer, batch):
            await store.tethers.admit_many(
                [
                    Admission(
                        key_id=f"k{i}",
                        serial=f"S{i}",
                        machine_key=f"SHA256:m{i}",
                        relay_id=f"relay-{w}",
                        relay_address=f"10.0.0.{w}:2223",
                        now=NOW,
                        check_key=_accept,
                        check_owner=_accept,
                    )
                    for i in range(start + offset, start + min(offset + batch, per_writer))
                ]
            )

    began = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return per_writer * writers / (time.perf_counter() - began)


async def _heartbeats(store: Store, relays: int, rounds: int) -> float:
    for r in range(relays):
        await store.relays.claim(f"relay-{r}", f"i{r}", f"10.0.0.{r}:2223", NOW, 15)
    began = time.perf_counter()
    for n in range(rounds):
        at = NOW + timedelta(seconds=n)
        await asyncio.gather(
            *(
                store.relays.heartbeat(f"relay-{r}", f"i{r}", f"10.0.0.{r}:2223", at, 1000)
                for r in range(relays)
            )
        )
    return relays * rounds / (time.perf_counter() - began)


async def _channels(store: Store, count: int, writers: int) -> float:
    async def writer(w: int) -> None:
        for i in range(count // writers):
            row = await store.channels.open(
                relay_id=f"relay-{w}", serial=f"S{i}", engineer="alice", port=22, now=NOW
            )
            await store.channels.close(row)

    began = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return count / (time.perf_counter() - began)


async def measure(url: str, *, tethers: int, batch: int, writers: int) -> dict[str, object]:
    """Every figure on the store at ``url`` (which must be fresh)."""
    store = await Store.open(url)
    try:
        await _issue(store, tethers)
        return {
            "backend": "postgresql" if "postgresql" in url else "sqlite",
            "tethers": tethers,
            "batch": batch,
            "writers": writers,
            "admissions_per_s": round(await _admissions(store, tethers, batch, writers)),
            "heartbeats_per_s": round(await _heartbeats(store, 50, 20)),
            "channel_open_close_per_s": round(await _channels(store, 2000, writers)),
        }
    finally:
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True, help="URL of a fresh, empty database")
    parser.add_argument("--tethers", type=int, default=10_000, help="admissions to make")
    parser.add_argument("--batch", type=int, default=100, help="admissions per transaction")
    parser.add_argument("--writers", type=int, default=3, help="relays writing at once")
    args = parser.parse_args()
    figures = asyncio.run(
        measure(args.database, tethers=args.tethers, batch=args.batch, writers=args.writers)
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

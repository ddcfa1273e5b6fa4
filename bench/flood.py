"""A pre-authentication flood against an SSH port, from many loopback addresses.

Loopback only: the 127.0.0.0/8 range gives as many source addresses as needed, and the
target must be a 127.x address. Bounded in time (``--seconds``) and count
(``--stalled`` + ``--slow`` connections open at once, refilled as they drop).

* a *stalled* connection connects and sends nothing, holding a login slot until the
  server drops it;
* a *slow* connection sends an SSH banner, then one byte of a key exchange every half
  second, never completing it.

Run as ``python -m bench.flood HOST:PORT --seconds 60 --stalled 500 --slow 200``; it
prints one JSON object with what it did (connections made, refused before the banner,
dropped later). The integration tests run it in a process of its own, so the flood does
not share the relay's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import sys
from dataclasses import asdict, dataclass

#: Pause after a connection ends before the worker dials again (a fast refill).
REFILL_PAUSE = 0.02
#: Most a worker may wait for a connect before it gives up and dials again.
CONNECT_TIMEOUT = 5.0


@dataclass
class FloodStats:
    connects: int = 0
    #: Connections closed by the server before its banner (refused at the door).
    refused: int = 0
    #: Connections that got the banner and were dropped later (evicted, timed out).
    dropped: int = 0
    errors: int = 0


def sources(count: int, per_block: int) -> list[str]:
    """``count`` loopback addresses, ``per_block`` in each /24 (none in 127.0.0.0/24)."""
    out = []
    for i in range(count):
        block, host = divmod(i, per_block)
        out.append(f"127.{1 + block // 256}.{block % 256}.{1 + host}")
    return out


async def _worker(
    host: str, port: int, addresses: list[str], slow: bool, stop: asyncio.Event, stats: FloodStats
) -> None:
    rng = random.Random()
    while not stop.is_set():
        source = rng.choice(addresses)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, local_addr=(source, 0)), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            stats.errors += 1
            await asyncio.sleep(REFILL_PAUSE)
            continue
        stats.connects += 1
        try:
            await _hold(reader, writer, slow, stop, stats)
        except (OSError, TimeoutError):
            stats.dropped += 1
        finally:
            writer.close()
        await asyncio.sleep(REFILL_PAUSE)


async def _hold(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    slow: bool,
    stop: asyncio.Event,
    stats: FloodStats,
) -> None:
    greeted = False
    if slow:
        writer.write(b"SSH-2.0-flood\r\n")
    trickle = iter(b"\x00\x00\x01\x0c\x0a\x14" + bytes(10_000))
    while not stop.is_set():
        try:
            data = await asyncio.wait_for(reader.read(4096), 0.5)
        except TimeoutError:
            if slow and greeted:
                writer.write(bytes([next(trickle, 0)]))
            continue
        if not data:
            break
        if data.startswith(b"SSH-") or greeted:
            greeted = True
        if b"too many connections" in data:
            greeted = False
            break
    if not stop.is_set():
        if greeted:
            stats.dropped += 1
        else:
            stats.refused += 1


async def flood(
    host: str,
    port: int,
    *,
    seconds: float,
    stalled: int,
    slow: int,
    addresses: int = 1000,
    per_block: int = 1,
) -> FloodStats:
    """Run the flood for ``seconds``; return what it did."""
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"flood: {host} is not a loopback address; this harness floods only 127.x")
    pool = sources(addresses, per_block)
    stop = asyncio.Event()
    stats = FloodStats()
    tasks = [
        asyncio.ensure_future(_worker(host, port, pool, i >= stalled, stop, stats))
        for i in range(stalled + slow)
    ]
    await asyncio.sleep(seconds)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n")[0])
    p.add_argument("target", help="HOST:PORT (a 127.x address)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--stalled", type=int, default=500)
    p.add_argument("--slow", type=int, default=200)
    p.add_argument("--addresses", type=int, default=1000)
    p.add_argument("--per-block", type=int, default=1, help="addresses in each /24")
    args = p.parse_args(argv)
    if not 0 < args.seconds <= 600 or args.stalled + args.slow > 5000:
        p.error("at most 600 s and 5000 connections at once")
    host, _, port = args.target.rpartition(":")
    stats = asyncio.run(
        flood(
            host,
            int(port),
            seconds=args.seconds,
            stalled=args.stalled,
            slow=args.slow,
            addresses=args.addresses,
            per_block=args.per_block,
        )
    )
    print(json.dumps(asdict(stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench``: every benchmark of bench/README.md in one run, on loopback.

Prints a table (with a progress bar while it runs) and writes JSON + markdown to
``bench/results/``. ``--smoke`` runs every row with tiny sizes, so the test suite can
keep the harness from rotting; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench import ending, fleet, live_echo, tethers, throughput, transports, underflood
from bench.parts import World, free_port, machine_description, raise_fd_limit
from bench.relay_metrics import HistogramReading
from bench.report import Row, median, percentile, print_table, write

GROUPS = (
    "throughput",
    "connect",
    "tethers",
    "restart",
    "ending",
    "agent",
    "live",
    "fleet",
    "flood",
    "transports",
)

#: The relay's limits on unauthenticated connections are per source address; the
#: swarm is one source, so a benchmark relay lets it dial as a fleet would.
BENCH_RELAY = {
    "max_unauthenticated": 5000,
    "early_drop_start": 5000,
    "max_unauthenticated_per_source": 5000,
    "max_unauthenticated_per_netblock": 5000,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Tether's performance budgets, measured beside stock OpenSSH on loopback.",
        epilog="Example: python -m bench --only throughput,connect --runs 5",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness only")
    p.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups to run (default: all of {', '.join(GROUPS)})",
    )
    p.add_argument(
        "--runs", type=int, default=3, help="runs of each throughput/connect figure (median)"
    )
    p.add_argument("--size-mib", type=int, default=1024, help="bytes per throughput run, in MiB")
    p.add_argument("--tethers", default="1000,5000,20000", help="idle tether counts to measure at")
    p.add_argument(
        "--restart", type=int, default=10000, help="tethers held through a relay restart"
    )
    p.add_argument(
        "--failover",
        type=int,
        default=1000,
        help="tethers on three relays behind HAProxy when one is SIGKILLed (fleet group)",
    )
    p.add_argument(
        "--fleet-dead-after",
        type=float,
        default=15.0,
        help="dead_after of fleet relays a, b, c (the failover relays keep the default 15 s)",
    )
    p.add_argument(
        "--flood-seconds",
        type=float,
        default=60.0,
        help="seconds of pre-auth flood against the relay, then against stock sshd (flood group)",
    )
    p.add_argument(
        "--flood-conns",
        type=int,
        default=500,
        help="stalled connections, and as many slow-handshake ones, the flood holds open",
    )
    p.add_argument("--tries", type=int, default=50, help="tries of each disable / revoke timing")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results",
        help="where JSON and markdown results go (default: bench/results)",
    )
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(GROUPS)
    if unknown:
        p.error(f"unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    if args.smoke:
        args.runs, args.size_mib, args.tethers, args.restart, args.tries = 1, 8, "5,10", 10, 2
        args.failover = 10
        args.flood_seconds, args.flood_conns = 3.0, 50
    return args


class Steps:
    """The progress bar: one step per measurement."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=total)
        self.started = time.monotonic()
        #: Without a terminal (CI logs) the bar cannot redraw: print each step instead.
        self.plain = not progress.console.is_terminal

    def say(self, text: str) -> None:
        self.progress.update(self.task, description=text)
        if self.plain:
            self.progress.console.print(f"[{time.monotonic() - self.started:6.1f} s] {text}")

    def done(self, text: str | None = None) -> None:
        self.progress.advance(self.task)
        if text:
            self.say(text)


async def loopback_rows(
    args: argparse.Namespace, groups: set[str], steps: Steps, work: Path, fd_limit: int
) -> list[Row]:
    rows: list[Row] = []
    world = World(work / "loopback")
    world.dir.mkdir()
    try:
        steps.say("starting relay, agent, sshds")
        await world.start_vendor(relay_options=BENCH_RELAY)
        await world.engineer()
        paths = await throughput.build(world)
        restart_keys = world.dir / "restart.keys"
        if "restart" in groups:  # issued now: the store is quiet before the swarms come
            await tethers.issue_many(world, args.restart, restart_keys)
        if "throughput" in groups:
            size = args.size_mib << 20
            for name, measure in (
                ("relay-bound (ssh -L to a web server)", throughput.relay_bound),
                ("full path (ssh through relay, cat > /dev/null)", throughput.full_path),
            ):
                ours, theirs = [], []
                for run in range(args.runs):
                    steps.say(f"throughput {name.split()[0]}, run {run + 1}/{args.runs}")
                    a, b = await measure(world, paths, size)
                    ours.append(a)
                    theirs.append(b)
                    steps.done()
                ratio = median(ours) / median(theirs)
                rows.append(
                    Row(
                        f"throughput, {name}",
                        ratio,
                        "x OpenSSH",
                        "≥ 1.0x",
                        ratio >= 1.0,
                        detail=f"{median(ours):.0f} vs {median(theirs):.0f} MB/s, {args.size_mib} MiB",
                        samples=ours,
                    )
                )
        if "connect" in groups:
            tether, openssh, direct = [], [], []
            for run in range(max(args.runs, 5)):
                steps.say(f"engineer connect, run {run + 1}")
                a, b, c = await throughput.connect_times(world, paths)
                tether.append(a)
                openssh.append(b)
                direct.append(c)
            steps.done()
            extra = (median(tether) - median(direct)) * 1000
            rows.append(
                Row(
                    "engineer connect through relay vs direct ssh",
                    extra,
                    "ms extra",
                    "≤ +50 ms",
                    extra <= 50,
                    detail=f"{median(tether) * 1000:.0f} ms via Tether, "
                    f"{median(openssh) * 1000:.0f} ms via an OpenSSH relay, "
                    f"{median(direct) * 1000:.0f} ms direct",
                    samples=tether,
                )
            )
        if "tethers" in groups:
            steps.say("idle tethers: ramping up the swarm")
            # One relay process holds one socket per tether: this machine's limit on open
            # files per process (it may not be raisable) caps the largest step.
            room = fd_limit - 300
            steps_at = sorted({min(int(n), room) for n in args.tethers.split(",")})
            idle = await tethers.idle_tethers(world, steps_at)
            steps.done()
            for count, kib in idle.kib_per_tether.items():
                rows.append(
                    Row(
                        f"relay RSS per idle tether, {count:,} tethers",
                        kib,
                        "KiB",
                        "≤ 64 KiB",
                        kib <= 64,
                    )
                )
            rows.append(
                Row(
                    "tether handshakes per relay CPU-second",
                    idle.handshakes_per_cpu_second,
                    "/s",
                    "≥ 200",
                    idle.handshakes_per_cpu_second >= 200,
                    detail=f"{idle.handshakes_per_second:.0f}/s wall-clock, the swarm "
                    "(same 2 cores) dialling 64 at once",
                )
            )
        if "restart" in groups:
            steps.say(f"relay restart with {args.restart:,} tethers")
            back = await tethers.restart(world, args.restart, restart_keys)
            steps.done()
            spread = back.peak_dials_per_second <= back.tethers / 5 or back.tethers < 50
            rows.append(
                Row(
                    f"{back.tethers:,} tethers back after a relay restart",
                    back.all_back,
                    "s",
                    "spread: ≤ 1/5 dial in any second",
                    spread,
                    detail=f"at most {back.peak_dials_per_second:,} agents dialled in one second "
                    f"(a relay admits in batches: at most {back.peak_per_second:,} came back in "
                    "one); the relay took "
                    f"{back.stop_seconds:.1f} s to stop",
                )
            )
    finally:
        world.close()
        if world.store is not None:
            await world.store.aclose()
    return rows


async def system_rows(
    args: argparse.Namespace, groups: set[str], steps: Steps, work: Path
) -> list[Row]:
    rows: list[Row] = []
    system = DemoSystemQuiet(work / "system")
    try:
        steps.say("starting the whole system (sandboxed machine, real sshd)")
        await system.start()
        await ending.access(system, "disable")
        if "ending" in groups:
            for name, end in (("revoke", ending.revoke), ("disable", ending.disable)):
                steps.say(f"{name} → live session gone, {args.tries} tries")
                before = await ending.relay_revocations(system)
                samples = await ending.time_ending(
                    system, lambda end=end: end(system), args.tries, steps.done
                )
                p99 = percentile(samples, 99)
                detail = f"p50 {percentile(samples, 50):.2f} s over {len(samples)} tries"
                if name == "revoke":
                    relay = (await ending.relay_revocations(system)).since(before)
                    detail += "; " + relay_side(relay, samples)
                rows.append(
                    Row(
                        f"{name} → live session and tether gone (p99)",
                        p99,
                        "s",
                        "≤ 1 s",
                        p99 <= 1.0,
                        detail=detail,
                        samples=samples,
                    )
                )
                if name == "revoke":
                    rows.append(agreement_row(relay, samples))
            steps.say("expiry with the agent up")
            up = [await ending.expiry_with_agent(system) for _ in range(3 if not args.smoke else 1)]
            steps.done()
            rows.append(
                Row(
                    "expiry → access closed, agent up",
                    max(up),
                    "s",
                    "≤ 2 s",
                    max(up) <= 2.0,
                    detail="worst of the tries; live session gone",
                    samples=up,
                )
            )
            minute = 2.0 if args.smoke else 60.0
            steps.say("expiry with the agent dead (waits for the cron job, up to a minute)")
            dead = await ending.expiry_agent_dead(system, minute=minute)
            steps.done()
            rows.append(
                Row(
                    "expiry → access closed, agent dead",
                    dead,
                    "s",
                    "≤ 60 s",
                    dead <= 60.0 if not args.smoke else None,
                    detail=f"closed by the installed cron entry (two lines: each minute of {minute:g} s, and half a minute later)",
                )
            )
        if "agent" in groups:
            steps.say("agent start-up and idle memory")
            cost = await ending.agent_cost(system)
            steps.done()
            rows.append(
                Row(
                    "agent idle memory (tether up)",
                    cost.idle_rss_mib,
                    "MiB RSS",
                    "≤ 80 MiB",
                    cost.idle_rss_mib <= 80,
                )
            )
            rows.append(
                Row(
                    "agent start-up",
                    cost.ready_seconds,
                    "s",
                    "≤ 2 s",
                    cost.ready_seconds <= 2,
                    detail=f"answering; tether up again after {cost.tether_seconds:.2f} s",
                )
            )
        if "live" in groups:
            rows.append(await live_row(system, args, steps))
    finally:
        await system.aclose()
    return rows


async def fleet_rows(
    args: argparse.Namespace, steps: Steps, work: Path, fd_limit: int
) -> list[Row]:
    """The relay fleet's rows (bench/fleet.py): peer relay vs own relay, revoke, idle, failover."""
    rows: list[Row] = []
    world = World(work / "fleet")
    world.dir.mkdir()
    relays = fleet.Fleet(world, BENCH_RELAY)
    try:
        steps.say("fleet: PostgreSQL and relays a, b, c")
        home = free_port()
        await relays.start(home)
        # Relays a, b, c also carry the idle swarms: on 2 shared cores, thousands of
        # handshakes at once delayed their heartbeats past the default 15 s, and they
        # declared each other dead mid ramp-up. The idle row measures memory, not that.
        await relays.add_relays(
            ["a", "b", "c"],
            behind_proxy=False,
            ports={"a": home},
            options={"dead_after": args.fleet_dead_after},
        )
        await world.engineer()
        m = await fleet.machine(world)
        own, peer = relays.relays["a"].port, relays.relays["b"].port
        # The first channel through b opens its link to a; the figures are of a link in use.
        await fleet.connect_once(world, own, m)
        await fleet.connect_once(world, peer, m)
        via_own, via_peer = [], []
        for run in range(max(args.runs, 5)):
            steps.say(f"fleet: engineer connect, run {run + 1}")
            via_own.append(await fleet.connect_once(world, own, m))
            via_peer.append(await fleet.connect_once(world, peer, m))
        steps.done()
        extra = (median(via_peer) - median(via_own)) * 1000
        rows.append(
            Row(
                "fleet: engineer connect through a peer relay vs the machine's own relay",
                extra,
                "ms extra",
                "≤ +20 ms",
                extra <= 20,
                detail=f"{median(via_peer) * 1000:.0f} ms via relay b (peer link to a), "
                f"{median(via_own) * 1000:.0f} ms via relay a; median of {len(via_own)}",
                samples=via_peer,
            )
        )
        size = args.size_mib << 20
        pids = {name: relays.relays[name].proc.pid for name in ("a", "b")}
        runs_own, runs_peer = [], []
        for run in range(args.runs):
            steps.say(f"fleet: throughput through a peer relay, run {run + 1}/{args.runs}")
            runs_own.append(await fleet.download(world, own, m, size, pids))
            runs_peer.append(await fleet.download(world, peer, m, size, pids))
            steps.done()
        mb_own = [r.mb_per_s for r in runs_own]
        mb_peer = [r.mb_per_s for r in runs_peer]
        ratio = median(mb_peer) / median(mb_own)
        cost_own = fleet.cpu_per_gib(runs_own, size)
        cost_peer = fleet.cpu_per_gib(runs_peer, size)
        rows.append(
            Row(
                "fleet: throughput through a peer relay vs the machine's own relay (ssh -L)",
                ratio,
                "x own relay",
                "≥ 0.8x",
                ratio >= 0.8,
                detail=f"{median(mb_peer):.0f} vs {median(mb_own):.0f} MB/s, {args.size_mib} MiB; "
                f"{fleet.cost_summary(cost_own, cost_peer, runs_own, runs_peer)}",
                samples=mb_peer,
            )
        )
        revokes = []
        for attempt in range(args.tries):
            steps.say(f"fleet: revoke → sessions through a and b gone, try {attempt + 1}")
            revokes.append(await fleet.revoke_once(relays, m))
            steps.done()
        p99 = percentile(revokes, 99)
        rows.append(
            Row(
                "fleet: revoke → live sessions through both relays gone (p99)",
                p99,
                "s",
                "≤ 1 s",
                p99 <= 1.0,
                detail=f"p50 {percentile(revokes, 50):.2f} s over {len(revokes)} tries; "
                "one session through the machine's relay, one through a peer",
                samples=revokes,
            )
        )
        largest = max(int(n) for n in args.tethers.split(","))
        per_relay, capped = fleet.idle_size(largest, fd_limit)
        steps.say(f"fleet: 3 x {per_relay:,} idle tethers")
        idle = await fleet.idle_across(relays, ["a", "b", "c"], per_relay)
        steps.done()
        worst = max(idle.kib_per_tether.values())
        each = ", ".join(f"{k} {v:.1f}" for k, v in idle.kib_per_tether.items())
        rows.append(
            Row(
                f"fleet: relay RSS per idle tether, 3 relays x {per_relay:,} tethers",
                worst,
                "KiB",
                "≤ 64 KiB",
                worst <= 64,
                detail=f"worst relay; KiB per tether: {each}; all up after {idle.seconds:.0f} s"
                + (f" (capped from {largest:,}: open-file limit {fd_limit:,})" if capped else ""),
            )
        )
        for name in ("a", "b", "c"):
            relays.stop(name)
        steps.say(f"fleet: SIGKILL of one of three relays holding {args.failover:,} tethers")
        result = await fleet.failover(relays, args.failover)
        steps.done()
        rows.append(
            Row(
                f"fleet: {result.tethers:,} tethers back after SIGKILL of one of three relays",
                result.all_back,
                "s",
                "≤ 60 s, spread",
                result.all_back <= 60 and fleet.spread_ok(result),
                detail=f"{result.lost:,} on the killed relay; at most "
                f"{result.peak_per_second:,} came back in one second, "
                f"{result.peak_dials_per_second:,} agents dialled in one; the store listed "
                f"them all on the others after {result.placed:.1f} s "
                f"({', '.join(f'{k} {v:,}' for k, v in result.spread.items())})",
            )
        )
    finally:
        await relays.aclose()
    return rows


async def live_row(system: ending.DemoSystem, args: argparse.Namespace, steps: Steps) -> Row:
    """Keystroke echo for the engineer with and without a watcher (bench/live_echo.py)."""
    keys = max(50, args.tries * 10)
    steps.say(f"live view: {keys} keystroke echoes alone, {keys} watched")
    state = (await ending.status(system)).get("access")
    if not isinstance(state, dict) or state.get("status") == "closed":
        await system.open_access()
    echo = await live_echo.echo_with_and_without_watcher(system, keys)
    await ending.access(system, "disable")
    steps.done()
    return Row(
        "live view added to the engineer's keystroke echo (p99)",
        echo.added_p99_ms,
        "ms extra",
        "≤ 10 ms",
        echo.added_p99_ms <= 10,
        detail=f"watched p50 {echo.p(echo.watched, 50):.1f} / p99 {echo.p(echo.watched, 99):.1f} ms, "
        f"alone p50 {echo.p(echo.alone, 50):.1f} / p99 {echo.p(echo.alone, 99):.1f} ms; "
        f"{len(echo.alone)} + {len(echo.watched)} keys through the relay, alternating blocks "
        f"of {live_echo.BLOCK}, tether access watch attached",
        samples=echo.watched,
    )


#: How far the relay's own revocation timing may be from the bench's (issue 15).
AGREEMENT_MS = 50.0


def relay_side(relay: HistogramReading, samples: list[float]) -> str:
    """The relay histogram's view of the revoke tries, for the row's detail."""
    return (
        f"relay histogram: {relay.count:g} cuts, mean {relay.mean * 1000:.0f} ms "
        f"(client {statistics.fmean(samples) * 1000:.0f} ms), "
        f"p99 ≈ {relay.quantile(0.99) * 1000:.0f} ms (client {percentile(samples, 99) * 1000:.0f} ms)"
    )


def agreement_row(relay: HistogramReading, samples: list[float]) -> Row:
    """The relay's mean revocation time against the client-side mean, over the same tries.

    The means are exact on both sides (the histogram's sum and count); its quantiles are
    estimates within a bucket, shown in the revoke row for reading only. The relay must
    have seen every try, or the figures are not about the same revocations.
    """
    difference = abs(statistics.fmean(samples) - relay.mean) * 1000  # nan: no cuts seen
    seen = relay.count == len(samples)
    return Row(
        "revoke: relay histogram vs client side (mean)",
        difference,
        "ms apart",
        f"≤ {AGREEMENT_MS:g} ms",
        seen and difference <= AGREEMENT_MS,
        detail=("" if seen else f"the relay saw {relay.count:g} cuts for {len(samples)} tries; ")
        + f"relay {relay.mean * 1000:.1f} ms over {relay.count:g} cuts, client "
        f"{statistics.fmean(samples) * 1000:.1f} ms over {len(samples)} tries (the client "
        "also counts the revoke call and the ssh exiting)",
    )


class DemoSystemQuiet(ending.DemoSystem):
    """The demo system without its progress lines (the progress bar speaks instead)."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True)
        quiet = logging.getLogger("bench.system")
        quiet.setLevel(logging.WARNING)
        super().__init__(workdir, progress=quiet)


def count_steps(args: argparse.Namespace, groups: set[str]) -> int:
    counts: dict[str, Callable[[], int]] = {
        "throughput": lambda: 2 * args.runs,
        "connect": lambda: 1,
        "tethers": lambda: 1,
        "restart": lambda: 1,
        "ending": lambda: 2 * args.tries + 2,
        "agent": lambda: 1,
        "live": lambda: 1,
        "fleet": lambda: 2 + args.runs + args.tries + 1,
        "flood": lambda: 1,
        "transports": lambda: 1,
    }
    return sum(counts[g]() for g in groups)


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    groups = set(args.only.split(","))
    fd_limit = raise_fd_limit()  # 20,000 tethers need more descriptors than a shell's default
    console = Console(stderr=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    rows: list[Row] = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress, tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        steps = Steps(progress, count_steps(args, groups))
        work = Path(tmp)
        if groups & {"throughput", "connect", "tethers", "restart"}:
            rows += await loopback_rows(args, groups, steps, work, fd_limit)
        if groups & {"ending", "agent", "live"}:
            rows += await system_rows(args, groups, steps, work)
        if "fleet" in groups:
            reason = fleet.fleet_unavailable_reason()
            if reason is None:
                rows += await fleet_rows(args, steps, work, fd_limit)
            else:
                console.print(f"fleet group skipped: {reason}")
        if "flood" in groups:
            steps.say(f"flood: {args.flood_seconds:g} s against the relay, then stock sshd")
            tether, stock = await underflood.run(
                work,
                seconds=args.flood_seconds,
                conns=args.flood_conns,
                idle_runs=1 if args.smoke else 5,
            )
            rows += underflood.rows(tether, stock, args.flood_conns)
            steps.done()
        if "transports" in groups:
            rows += await transports.run(
                work,
                BENCH_RELAY,
                size_mib=args.size_mib,
                runs=args.runs,
                connects=max(args.runs, 10) if not args.smoke else 2,
                say=steps.say,
            )
            steps.done()
    machine = machine_description()
    print_table(rows, machine, Console())
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-smoke" if args.smoke else "")
    json_path, md_path = write(args.out, stamp, rows, machine, settings)
    console.print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main(sys.argv[1:])))

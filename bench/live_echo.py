"""What watching a session costs the engineer: keystroke echo with and without a watcher.

The engineer holds an interactive ``ssh -tt`` through the relay to the sandboxed
machine's sshd, where the recorder runs the session on its pty; the remote side runs
``cat`` on a raw terminal (ssh passes on the engineer's raw modes), so ``cat`` echoes
each key as a shell's line editor would. One key at a time is written to the
engineer's terminal and timed until its echo comes back: relay, tether, sshd,
recorder, the machine's pty, ``cat`` and back. Blocks of
keys alternate between no watcher and the customer's ``tether access watch`` attached
(reading the recorder's live stream), so both see the same load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import sys
import threading
import time
import tty
from dataclasses import dataclass

from bench.report import percentile
from tether.demo import AGENT_CONFIG, DemoSystem

#: Keys per block; blocks alternate between the two conditions.
BLOCK = 25


@dataclass
class EchoResult:
    """Echo round trips (seconds) without and with a watcher attached."""

    alone: list[float]
    watched: list[float]

    def p(self, which: list[float], q: float) -> float:
        return percentile(which, q) * 1000

    @property
    def added_p99_ms(self) -> float:
        return self.p(self.watched, 99) - self.p(self.alone, 99)


class _Terminal:
    """The engineer's terminal: stock ssh on a pty this process reads."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = os.openpty()
        # No echo here: before ssh takes the terminal over, the local pty would echo the
        # keys itself and the first samples would never leave this machine.
        tty.setraw(slave)
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.seen = bytearray()

    def read_until(self, text: bytes, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"{text!r} not echoed; terminal shows {bytes(self.seen[-300:])!r}"
                )
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                self.seen += os.read(self.master, 65536)

    def echo_time(self, key: bytes) -> float:
        """Write one key and time until its echo is back."""
        self.seen.clear()
        started = time.perf_counter()
        os.write(self.master, key)
        self.read_until(key)
        return time.perf_counter() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


class _Watcher:
    """``tether access watch`` on the machine, its output drained as the customer's terminal would."""

    def __init__(self, system: DemoSystem) -> None:
        assert system.machine is not None
        self.proc = system.machine.popen(
            [sys.executable, "-m", "tether", "access", "watch", "--config", AGENT_CONFIG],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.bytes = 0
        self.attached = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            self.bytes += len(chunk)
            self.attached.set()

    def close(self) -> bytes:
        """Stop watching; return what the watcher said on stderr (why it failed, if it did)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._thread.join(5)
        said = self.proc.stderr.read() if self.proc.stderr is not None else b""
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return said


def _measure(system: DemoSystem, keys: int) -> EchoResult:
    assert system.engineer is not None
    term = _Terminal(system.engineer.ssh("-tt", system.serial, "cat"))
    result = EchoResult([], [])
    typed = 0
    try:
        term.echo_time(b"zq")  # in: the first echo also waits for the login
        for _ in range(BLOCK):  # unmeasured: the agent notices and audits the login now
            term.echo_time(b"w")
        watcher: _Watcher | None = None
        try:
            for block in range(2 * max(1, keys // BLOCK)):
                watching = block % 2 == 1
                if watching:
                    watcher = _Watcher(system)
                    if not watcher.attached.wait(20):
                        said = watcher.close()
                        watcher = None
                        raise RuntimeError(f"tether access watch did not attach: {said!r}")
                for _ in range(BLOCK):
                    key = b"abcdefghijklmnopqrstuvwxyz"[typed % 26 : typed % 26 + 1]
                    (result.watched if watching else result.alone).append(term.echo_time(key))
                    typed += 1
                if watcher is not None:
                    watcher.close()
                    watcher = None
        finally:
            if watcher is not None:
                watcher.close()
    finally:
        with contextlib.suppress(OSError):
            os.write(term.master, b"\x04")
        term.close()
    return result


async def echo_with_and_without_watcher(system: DemoSystem, keys: int) -> EchoResult:
    """Time ``keys`` echoes alone and as many with a watcher, in alternating blocks."""
    return await asyncio.to_thread(_measure, system, keys)

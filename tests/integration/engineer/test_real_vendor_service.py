"""The engineer CLI against the real vendor service (:mod:`tether.vendor_service.api`), end to end.

Same flow as the stub-backed tests: login, ls, ssh-config with stock ssh, web. Until
the service exists this skips with the reason "vendor service not built yet"; once it
does, ``real_service()`` in world.py builds its app (adapt it there if its factory
differs from the guess).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

from tests.integration.engineer.world import SERIAL, engineer_world
from tests.integration.harness import run_ssh


async def test_engineer_flow_against_real_vendor_service(tmp_path: Path) -> None:
    async with engineer_world(tmp_path, backend="real") as world:
        login = await world.login()
        assert login.stdout.startswith("Logged in as alice; certificate valid until ")

        listed = json.loads((await world.tether("ls", "--json")).stdout)
        assert SERIAL in [t["serial"] for t in listed]

        assert (await world.tether("ssh-config", "--write")).returncode == 0
        config = tmp_path / "ssh_config"  # -F cannot name a path with a space (ProxyJump)
        config.write_text(world.ssh_config.read_text())
        echoed = await run_ssh(
            [
                "ssh",
                "-F",
                str(config),
                "-o",
                "BatchMode=yes",
                "-W",
                f"{SERIAL}:{world.echo.port}",
                "tether-relay",
            ],
            input=b"ping\n",
        )
        assert echoed.stdout == b"hello from the machine\nping\n", echoed.stderr
        result = await run_ssh(
            [
                "ssh",
                "-F",
                str(config),
                "-o",
                "BatchMode=yes",
                "-p",
                str(world.machine.port),
                SERIAL,
                "hello",
            ]
        )
        assert result.stdout == b"machine says hello to tether-support\n", result.stderr

        proc = await world.spawn("web", SERIAL, "--port", str(world.echo.port))
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/\n", line)
            assert match, line
            reader, writer = await asyncio.open_connection("127.0.0.1", int(match.group(1)))
            assert await asyncio.wait_for(reader.readline(), 10) == b"hello from the machine\n"
            # While that connection is open, `tether ls` names alice as connected.
            for _ in range(50):
                listed = json.loads((await world.tether("ls", "--json")).stdout)
                if listed[0]["engineers"] == ["alice"]:
                    break
                await asyncio.sleep(0.1)
            assert listed[0]["engineers"] == ["alice"]
            table = (await world.tether("ls")).stdout
            assert re.search(rf"^{SERIAL}\s.*\salice\s", table, re.M), table
            writer.close()
        finally:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 10)

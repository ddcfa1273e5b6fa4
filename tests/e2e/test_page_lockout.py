"""The demo's carried admin page: a stranger cannot lock out the machine's own console.

Security review, defect 19: behind the demo's carrier every client was 127.0.0.1, so five
wrong passwords from anyone on the host locked the admin out. The carrier now connects
from 127.0.0.2, which the demo's agent.toml names in ``[web] trusted_proxies``.
"""

from __future__ import annotations

import asyncio
import re
import sys
from urllib.parse import urlsplit

import httpx

from tether.agent.web.auth import FAILURE_LIMIT
from tether.demo import DemoSystem

#: A login from inside the machine with only the standard library (no redirects followed).
CONSOLE_LOGIN = """
import http.client, re, sys, urllib.parse
connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
connection.request("GET", "/login")
form = connection.getresponse()
page = form.read().decode()
cookie = "; ".join(v.split(";")[0] for k, v in form.getheaders() if k.lower() == "set-cookie")
token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)[1]
body = urllib.parse.urlencode({"csrf": token, "password": sys.stdin.read()})
headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
connection.request("POST", "/login", body, headers)
print(connection.getresponse().status)
"""


async def _guess(http: httpx.AsyncClient, password: str) -> int:
    page = (await http.get("/login")).text
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)
    assert token, page
    answer = await http.post("/login", data={"csrf": token[1], "password": password})
    return answer.status_code


async def test_through_the_carrier_a_stranger_cannot_lock_out_the_machine_console(
    system: DemoSystem,
) -> None:
    assert system.page_url is not None
    async with httpx.AsyncClient(base_url=system.page_url, timeout=10) as stranger:
        for _ in range(FAILURE_LIMIT):
            assert await _guess(stranger, "not the password") == 401
        assert await _guess(stranger, system.page_password) == 429  # the stranger is locked

    port = urlsplit(system.page_url).port
    assert port is not None
    machine = system.machine
    assert machine is not None
    console = await asyncio.to_thread(
        machine.run,
        [sys.executable, "-c", CONSOLE_LOGIN, str(port)],
        input=system.page_password,
    )
    assert console.returncode == 0, console.stderr
    assert console.stdout.strip() == "303"  # logged in: the console is a client of its own

"""The relay's internal endpoint: Prometheus metrics of what users did, and health.

A scenario a vendor would see (a tether comes up, an engineer works through it, a
channel and a tether are refused, the key is revoked) is read back from ``/metrics``
over HTTP, parsed by ``prometheus_client``'s own parser.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Agent, EchoServer, open_session, run_ssh, vendor_setup
from tether.agent.tunnel import TunnelState
from tether.relay.server import Relay
from tether.sshlib import asyncssh
from tether.vendor_service.authority import init_data_dir

INTERNAL = {"metrics_listen": ("127.0.0.1", 0)}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def scrape(relay: Relay) -> Samples:
    assert relay.metrics_server is not None
    status, headers, body = await http_get(relay.metrics_server.port, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def eventually(relay: Relay, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds (the relay updates some figures as connections end)."""
    for _ in range(200):
        samples = await scrape(relay)
        if check(samples):
            return samples
        await asyncio.sleep(0.025)
    shown = {k: v for k, v in samples.items() if not k[0].endswith("_created")}
    raise AssertionError(f"metrics never matched: {shown}")


async def test_relay_metrics_count_tethers_sessions_refusals_and_revocation(
    tmp_path: Path,
) -> None:
    async with vendor_setup(tmp_path, **INTERNAL) as vendor, EchoServer() as service:
        relay = vendor.relay
        before = await scrape(relay)
        assert value(before, "tether_relay_tethers_connected") == 0
        assert value(before, "tether_relay_tether_admissions_total", result="admitted") == 0
        assert value(before, "tether_relay_ready") == 1
        assert value(before, "tether_relay_database_up") == 1

        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            up = await scrape(relay)
            assert value(up, "tether_relay_tethers_connected") == 1
            assert value(up, "tether_relay_tether_admissions_total", result="admitted") == 1

            # An engineer session that works, then a channel to a closed port.
            done = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-W", f"M-1:{service.port}", "alice@127.0.0.1"),
                input=b"ping\n",
            )
            assert done.stdout.endswith(b"ping\n"), done.stderr
            refused = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-W", "M-1:1", "alice@127.0.0.1")
            )
            assert refused.returncode != 0
            worked = await eventually(
                relay,
                lambda s: value(s, "tether_relay_engineer_session_duration_seconds_count") == 2,
            )
            assert value(worked, "tether_relay_engineer_sessions") == 0
            assert value(worked, "tether_relay_engineer_channels_opened_total") == 1
            assert (
                value(worked, "tether_relay_engineer_channels_refused_total", reason="port-closed")
                == 1
            )
            assert (
                value(worked, "tether_relay_engineer_channel_bytes_total", direction="to_machine")
                == 5
            )
            assert value(
                worked, "tether_relay_engineer_channel_bytes_total", direction="to_engineer"
            ) == len(b"hello from the machine\nping\n")

            # A live session, then the vendor revokes the key.
            proc = await open_session(alice, vendor.relay_port, f"M-1:{service.port}")
            live = await scrape(relay)
            assert value(live, "tether_relay_engineer_sessions") == 1
            await vendor.authority.revoke_key(claims.key_id, reason="test")
            await asyncio.wait_for(proc.wait(), 1.0)
            await agent.wait_for(TunnelState.REFUSED, timeout=1.0)

        after = await eventually(relay, lambda s: value(s, "tether_relay_tethers_connected") == 0)
        assert value(after, "tether_relay_tether_drops_total", reason="revoked") == 1
        cut = "tether_relay_revocation_cut_seconds"
        assert value(after, f"{cut}_count", kind="key") == 1
        assert value(after, f"{cut}_bucket", kind="key", le="1.0") == 1  # the ≤ 1 s invariant
        assert value(after, f"{cut}_count", kind="engineer") == 0

        # The revoked key again: refused at admission, counted by reason.
        async with Agent(key, claims, [service.port]) as again:
            await again.wait_for(TunnelState.REFUSED)
        refusals = await scrape(relay)
        assert value(refusals, "tether_relay_tether_admissions_total", result="revoked") == 1
        assert value(refusals, "tether_relay_tether_admissions_total", result="admitted") == 1
        # No serial, engineer or address ever becomes a label.
        labels = {v for (_, pairs) in refusals for (_, v) in pairs}
        assert not labels & {"M-1", "m-1", "alice", "127.0.0.1"}


async def test_an_engineer_revocation_is_timed_when_it_cuts_a_live_connection(
    tmp_path: Path,
) -> None:
    async with vendor_setup(tmp_path, **INTERNAL) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            proc = await open_session(alice, vendor.relay_port, f"M-1:{service.port}")
            await vendor.store.engineers.disable(
                "alice", reason="left the company", now=vendor.authority.clock.now()
            )
            await asyncio.wait_for(proc.wait(), 1.0)
        cut = await eventually(
            vendor.relay,
            lambda s: value(s, "tether_relay_engineer_sessions") == 0,
        )
        name = "tether_relay_revocation_cut_seconds"
        assert value(cut, f"{name}_count", kind="engineer") == 1
        assert value(cut, f"{name}_bucket", kind="engineer", le="1.0") == 1


async def test_the_metrics_endpoint_answers_only_its_three_paths(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path, **INTERNAL) as vendor:
        server = vendor.relay.metrics_server
        assert server is not None
        assert (await http_get(server.port, "/healthz"))[0::2] == (200, "ok\n")
        assert (await http_get(server.port, "/readyz"))[0::2] == (200, "ready\n")
        assert (await http_get(server.port, "/metrics?x=1"))[0] == 200
        assert (await http_get(server.port, "/"))[0] == 404
        assert (await http_get(server.port, "/../metrics"))[0] == 404


async def test_two_relays_in_one_process_keep_their_own_figures(tmp_path: Path) -> None:
    async with (
        vendor_setup(tmp_path / "a", **INTERNAL) as a,
        vendor_setup(tmp_path / "b", **INTERNAL) as b,
        EchoServer() as service,
    ):
        key, claims = await a.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            assert value(await scrape(a.relay), "tether_relay_tethers_connected") == 1
            assert value(await scrape(b.relay), "tether_relay_tethers_connected") == 0


async def test_relay_serve_logs_json_lines_and_serves_metrics_from_relay_toml(
    tmp_path: Path,
) -> None:
    data = tmp_path / "vendor"
    await init_data_dir(data, vendor="ACME", relay="127.0.0.1:2222")
    config = data / "relay.toml"
    config.write_text(config.read_text() + '\n[metrics]\nlisten = "127.0.0.1:0"\n')
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "relay", "serve", "--config", str(config),
        "--listen", "127.0.0.1:0", "--log-format", "json",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert relay.stderr is not None
    lines: list[dict[str, object]] = []
    try:
        while not any(line.get("event") == "relay.listen" for line in lines):
            raw = await asyncio.wait_for(relay.stderr.readline(), 30)
            assert raw, f"relay exited ({await relay.wait()}) after {lines}"
            lines.append(json.loads(raw))  # every line is one JSON object
        listen = next(line for line in lines if line.get("event") == "relay.listen")
        assert listen["level"] == "INFO"
        assert listen["relay"] == "relay-1"
        port = str(listen["metrics"]).rsplit(":", 1)[1]
        status, _, body = await http_get(int(port), "/metrics")
        assert status == 200
        assert "tether_relay_tethers_connected 0.0" in body
    finally:
        relay.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(relay.stderr.read(), 30)
        assert await relay.wait() == 0
    for raw in rest.splitlines():
        assert "event" in json.loads(raw) or "message" in json.loads(raw)


async def test_handshakes_reconnects_and_store_writes_are_measured(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path, **INTERNAL) as vendor, EchoServer() as service:
        relay = vendor.relay
        handshake = "tether_relay_tether_handshake_duration_seconds"
        store = "tether_relay_store_latency_seconds"
        before = await scrape(relay)
        assert value(before, f"{handshake}_count") == 0
        assert value(before, "tether_relay_tether_reconnects_total") == 0
        for operation in ("admit", "unregister", "audit-append"):
            assert value(before, f"{store}_count", operation=operation) == 0
        assert value(before, "tether_relay_audit_backlog") == 0

        key, claims = await vendor.issue("M-1", ports=[service.port])
        machine = asyncssh.generate_private_key("ssh-ed25519")
        async with Agent(key, claims, [service.port], machine_key=machine) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
        first = await eventually(
            relay, lambda s: value(s, f"{store}_count", operation="unregister") == 1
        )
        # A first tether: one handshake, timed from TCP accept (key exchange, login and a
        # store transaction take some time; a test relay needs well under 10 s).
        assert value(first, f"{handshake}_count") == 1
        assert 0 < value(first, f"{handshake}_sum") < 10
        assert value(first, f"{handshake}_bucket", le="10.0") == 1
        assert value(first, "tether_relay_tether_reconnects_total") == 0
        assert value(first, f"{store}_count", operation="admit") == 1
        assert value(first, f"{store}_sum", operation="admit") > 0

        # The same machine comes back with its key: a reconnect, not a new access.
        async with Agent(key, claims, [service.port], machine_key=machine) as again:
            await again.wait_for(TunnelState.CONNECTED)
            back = await scrape(relay)
            assert value(back, "tether_relay_tether_admissions_total", result="admitted") == 2
            assert value(back, "tether_relay_tether_reconnects_total") == 1
            assert value(back, f"{handshake}_count") == 2

        # A second machine with a key of its own is new, not a reconnect.
        other_key, other_claims = await vendor.issue("M-2", ports=[service.port])
        async with Agent(other_key, other_claims, [service.port]) as other:
            await other.wait_for(TunnelState.CONNECTED)
            new = await scrape(relay)
            assert value(new, "tether_relay_tether_admissions_total", result="admitted") == 3
            assert value(new, "tether_relay_tether_reconnects_total") == 1

        # tether.up / key.used / tether.down went to the relay's audit chain, all written.
        written = await eventually(
            relay,
            lambda s: (
                value(s, f"{store}_count", operation="audit-append") >= 1
                and value(s, "tether_relay_audit_backlog") == 0
                and value(s, f"{store}_count", operation="unregister") == 3
            ),
        )
        assert value(written, f"{store}_count", operation="admit") == 3
        # Bounded labels: operations are a fixed set, never a serial.
        operations = {dict(pairs).get("operation") for (name, pairs) in written if store in name}
        assert operations == {"admit", "unregister", "audit-append"}

"""``tether access check`` and ``tether access log``: prerequisites and the record."""

from __future__ import annotations

import asyncio
import shutil
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from tether.agent.access import AccessManager
from tether.agent.logins import LoginSources, merge_timeline, read_logins
from tether.cli.common import (
    agent_config_option,
    handle_errors,
    json_option,
    out,
    print_json,
    print_verification,
)
from tether.clock import SYSTEM_CLOCK
from tether.config import AgentConfig
from tether.keys import TetherKeyError, parse_key

if TYPE_CHECKING:
    from tether.agent.probe import TransportProbe

#: Larger clock differences make keys look expired or not yet valid.
MAX_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(config: AgentConfig, key_text: str | None) -> list[Check]:
    """Every prerequisite of support access, each with how to fix it."""
    manager = AccessManager(config)
    checks = [Check("serial", True, f"this machine is {config.serial}")]
    checks.append(
        Check(
            "vendor trust",
            config.vendor_ca is not None,
            "vendor keys and CA configured" if config.vendor_ca else "vendor_ca is missing",
            f"copy the vendor's agent-trust.toml into {config.path}",
        )
    )
    facts = manager.machine.facts(config.support_account)
    checks.append(
        Check(
            "sshd installed",
            facts.sshd_present,
            str(config.paths.sshd),
            "install OpenSSH: apt-get install openssh-server",
        )
    )
    checks.append(
        Check(
            "sshd configuration valid",
            facts.sshd_config_valid,
            facts.sshd_error or f"sshd -t accepts {config.paths.sshd_config}",
            "fix the error sshd -t reports; Tether will not change an invalid configuration",
        )
    )
    checks.append(
        Check(
            "sshd drop-in directory",
            facts.drop_in_included or facts.can_add_block,
            "included by sshd_config"
            if facts.drop_in_included
            else (
                "not included: a managed block will be added to sshd_config"
                if facts.can_add_block
                else "not included, and sshd_config is not writable"
            ),
            f"add `Include {config.paths.sshd_config_d}/*.conf` at the top of {config.paths.sshd_config}",
        )
    )
    checks.append(
        Check(
            "support account name",
            facts.account_conflict is None,
            facts.account_conflict or f"{config.support_account} is free or Tether's own",
            f"set support_account in {config.path} to an unused name",
        )
    )
    checks.append(
        Check(
            "expiry timer",
            facts.systemd or facts.cron,
            "systemd can run it"
            if facts.systemd
            else ("a cron daemon can run it" if facts.cron else "neither systemd nor cron"),
            "install cron (apt-get install cron) so access closes even if the agent is down",
        )
    )
    checks.append(_layers_check(config, manager))
    checks.append(_recording_check(config))
    relay_key = key_text or manager.state().key
    if relay_key:
        checks.extend(_relay_checks(config, relay_key))
    return checks


def _layers_check(config: AgentConfig, manager: AccessManager) -> Check:
    """Which layers close access on time here (agent, timer, account date, certificate, relay)."""
    from tether.agent.control import ask_daemon
    from tether.agent.layers import armed_layers, summary

    running = ask_daemon(config.run_dir / "agent.sock", "status") is not None
    state = manager.state()
    found = armed_layers(config, state, daemon_running=running)
    return Check("closing layers", True, summary(found))


def _recording_check(config: AgentConfig) -> Check:
    """Can sessions be recorded (the recorder's Python; the directory's disk space)?"""
    from tether.agent.access import recorder_for
    from tether.errors import TetherError

    fix = f"see [recording] in {config.path}"
    if not config.recording.enabled:
        return Check("session recording", True, "off: support sessions are NOT recorded", fix)
    try:
        spec = recorder_for(config)
    except TetherError as exc:
        return Check("session recording", False, str(exc), fix)
    if spec is None:
        return Check("session recording", True, "no recorder: sessions run unrecorded", fix)
    probe = spec.directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    ok = free >= 64 << 20 or config.recording.fail.value == "open"
    detail = f"{spec.directory} ({free >> 20} MiB free; if recording fails: {config.recording.fail.value})"
    return Check("session recording", ok, detail, "free disk space for the recordings; " + fix)


def _relay_checks(config: AgentConfig, key_text: str) -> list[Check]:
    # asyncssh is imported only here: `tether access disable` must start fast (sessions
    # end within a second of the customer pressing Enter).
    from tether.agent.identity import load_or_create_machine_key
    from tether.agent.probe import probe_transports

    try:
        claims = parse_key(
            key_text, config.vendor_keys, now=SYSTEM_CLOCK.now(), serial=config.serial
        )
    except TetherKeyError as exc:
        return [Check("tether key", False, str(exc), "ask the vendor for a new key")]
    machine_key = load_or_create_machine_key(config.machine_key_path)
    network = config.tether.network
    probes = asyncio.run(
        probe_transports(claims.relay, claims.relay_host_key, machine_key, network)
    )
    working = [p for p in probes if p.error is None]
    checks = [
        Check(
            "relay reachable",
            bool(working),
            f"{claims.relay} answers over {', '.join(p.transport for p in working)}"
            if working
            else f"no way to {claims.relay} works (each is explained below)",
            f"allow outbound TCP to {claims.relay} in the firewall, or set [network] proxy "
            f"in {config.path}",
        ),
    ]
    checks.extend(transport_checks(probes))
    mismatched = [p for p in probes if p.reachable and not p.host_key_ok]
    if any(p.reachable for p in probes):
        checks.append(
            Check(
                "relay host key",
                not mismatched,
                "matches the key's pin"
                if not mismatched
                else f"{mismatched[0].seen_host_key} is not {claims.relay_host_key} "
                f"(over {', '.join(p.transport for p in mismatched)})",
                "something intercepts the connection, or the key is for another relay",
            )
        )
    relay_time = next((p.relay_time for p in probes if p.relay_time is not None), None)
    if relay_time is not None:
        skew = abs(relay_time - SYSTEM_CLOCK.now())
        checks.append(
            Check(
                "clock",
                skew <= MAX_CLOCK_SKEW,
                f"{skew.total_seconds():.0f} s from the relay's",
                "set the clock (timedatectl set-ntp true)",
            )
        )
    return checks


def transport_checks(probes: list[TransportProbe]) -> list[Check]:
    """One line per way to the relay: works (and through what TLS), or why not.

    A way that fails is not a failed check while another works (the tether uses that
    one); it is still explained, for the day the working one closes.
    """
    working = [p for p in probes if p.error is None]
    direct_issuer = next(
        (p.tls_issuer for p in probes if p.kind.value == "tls" and p.tls_issuer), ""
    )
    checks = []
    for p in probes:
        name = f"relay over {p.kind.value}"
        if p.error is None:
            detail = f"works ({p.transport})"
            if p.tls_issuer:
                detail += f"; TLS certificate issued by {p.tls_issuer}"
                # The relay names its own certificate inside the pinned login; without
                # that (an older relay), compare with what direct TLS showed.
                relay_issuer = p.relay_tls[1] if p.relay_tls is not None else direct_issuer
                inspected = p.tls_inspected or (
                    p.relay_tls is None
                    and p.kind.via_proxy
                    and bool(direct_issuer)
                    and p.tls_issuer != direct_issuer
                )
                if inspected:
                    who = "The proxy" if p.kind.via_proxy else "Something on the way"
                    detail += (
                        f". {who} inspects TLS: it presents a certificate of its own, issued "
                        f"by {p.tls_issuer}, where the relay's is issued by "
                        f"{relay_issuer or 'another issuer'}. The tether still works: "
                        "the SSH inside is pinned to the relay's host key, which the "
                        "inspection can neither read nor fake"
                    )
            checks.append(Check(name, True, detail))
            continue
        spare = f" (not needed now: the tether uses {working[0].transport})" if working else ""
        checks.append(Check(name, bool(working), f"{p.error}{spare}"))
    return checks


@click.command("check")
@agent_config_option
@click.option("--key", "key_text", help="Also check the relay this key names ('-' reads stdin).")
@json_option
@handle_errors
def check(config_path: Path, key_text: str | None, as_json: bool) -> None:
    """Check the prerequisites of support access and say how to fix what is missing."""
    if key_text == "-":
        key_text = sys.stdin.read()
    config = AgentConfig.load(config_path)
    checks = run_checks(config, key_text)
    failed = [c for c in checks if not c.ok]
    if as_json:
        print_json({"ok": not failed, "checks": [c.__dict__ for c in checks]})
    else:
        for c in checks:
            mark = "[green]ok[/]  " if c.ok else "[red]FAIL[/]"
            out.print(f"{mark} {c.name}: {escape(c.detail)}")
            if not c.ok and c.fix:
                out.print(f"      fix: {escape(c.fix)}")
    if failed:
        sys.exit(1)


@click.command("log")
@agent_config_option
@click.option(
    "--verify", is_flag=True, help="Check the log's hash chain; exit 1 if anything was changed."
)
@json_option
@handle_errors
def log_command(config_path: Path, verify: bool, as_json: bool) -> None:
    """The agent's audit log merged with support logins from sshd's own log."""
    config = AgentConfig.load(config_path)
    audit = AccessManager(config).audit
    verification = audit.verify()
    logins = read_logins(config.support_account, sources=LoginSources(sshd_log=config.sshd_log))
    rows = merge_timeline(audit.entries(skip_damaged=True), logins)
    if as_json:
        print_json(
            {
                "verified": verification.ok,
                "problems": [p.message for p in verification.problems],
                "entries": verification.entries,
                "rows": [
                    {"at": r.at.isoformat() if r.at else None, "source": r.source, "text": r.text}
                    for r in rows
                ],
            }
        )
    else:
        for row in rows:
            when = f"{row.at:%Y-%m-%d %H:%M:%S}" if row.at else " " * 19
            out.print(f"{when}  {row.source:<5}  {escape(row.text)}")
        if verify:
            print_verification(verification)
    if verify and not verification.ok:
        sys.exit(1)

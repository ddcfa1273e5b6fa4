"""``tether vendor audit``: the hash-chained audit logs in the shared database.

The vendor service writes the ``vendor`` chain, each relay its ``relay:<relay id>``
chain, and every append anchors the chain's head in the chain ``anchors``, so entries
removed from the end of any chain are found and named (:mod:`tether.store.anchors`);
machines' chain heads, reported over their tethers, are checked by the relays against
what each machine reported before (``--heads``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from tether.audit import AuditEntry, format_at
from tether.cli.common import (
    data_dir_option,
    handle_errors,
    json_option,
    out,
    print_json,
    print_verification,
    run,
)
from tether.errors import BadInput
from tether.store import AuditHead, ChainReport, Store
from tether.vendor_service.authority import VENDOR_CHAIN, load_vendor_config


def _describe(entry: AuditEntry) -> str:
    details = " ".join(
        f"{name}={','.join(map(str, value)) if isinstance(value, tuple) else value}"
        for name, value in entry.fields.items()
        if value is not None
    )
    return f"{format_at(entry.at)}  #{entry.seq:<5} {entry.event}  {details}".rstrip()


def _entry_json(entry: AuditEntry) -> dict[str, object]:
    return {
        "seq": entry.seq,
        "at": format_at(entry.at),
        "event": entry.event,
        "fields": {k: list(v) if isinstance(v, tuple) else v for k, v in entry.fields.items()},
        "prev": entry.prev,
        "hash": entry.hash,
    }


def _chain_json(report: ChainReport, last: int) -> dict[str, object]:
    v = report.verification
    shown = report.entries[-last:] if last else report.entries
    return {
        "chain": report.chain,
        "verified": v.ok,
        "entries": v.entries,
        "head_seq": v.head_seq,
        "head": v.head,
        "problems": [{"seq": p.seq, "kind": p.kind, "message": p.message} for p in v.problems],
        "rows": [_entry_json(e) for e in shown],
    }


def _print_heads(heads: list[AuditHead]) -> None:
    if not heads:
        out.print("No machine has reported its audit chain head yet.")
    for head in heads:
        where = f"{escape(head.serial)}  machine {escape(head.machine_key)}"
        seen = f"head #{head.seq} {head.hash[:16]}… at {head.received_at:%Y-%m-%d %H:%M:%S}"
        if head.mismatches:
            when = f"{head.mismatch_at:%Y-%m-%d %H:%M:%S}" if head.mismatch_at else "?"
            out.print(
                f"[red]MISMATCH[/] {where}: {escape(head.mismatch or '')} "
                f"({head.mismatches} times, last at {when}); now {seen}"
            )
        else:
            out.print(f"[green]ok[/]       {where}: {seen}")


@click.command("audit")
@data_dir_option
@click.option(
    "--chain",
    help="Only this chain: 'vendor' (the vendor service), 'relay:RELAY_ID' (a relay) or "
    "'anchors' (every chain's head). Default: every chain in the database.",
)
@click.option(
    "--verify", is_flag=True, help="Check the hash chains; exit 1 if anything was changed."
)
@click.option(
    "--heads",
    is_flag=True,
    help="Show the chain heads machines reported over their tethers instead, with any "
    "mismatch (a machine's log rewritten since); with --verify, exit 1 on a mismatch.",
)
@click.option(
    "--last",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Show this many newest entries per chain (0: all). Verification covers every entry.",
)
@json_option
@handle_errors
def audit(
    data_dir: Path, chain: str | None, verify: bool, heads: bool, last: int, as_json: bool
) -> None:
    """The audit logs of the vendor service and the relays, and their chain check.

    \b
    Examples:
      tether vendor audit --verify                  every chain, checked
      tether vendor audit --chain relay:relay-1     one relay's tethers and channels
      tether vendor audit --heads --verify          machines whose log was rewritten
    """
    config = load_vendor_config(data_dir)

    async def read() -> tuple[list[ChainReport], list[AuditHead]]:
        async with await Store.open(config.database, migrate=False) as store:
            await store.require_current_schema()
            if heads:
                return [], await store.audit.heads()
            known = await store.audit.chains()
            names = [chain] if chain else known
            try:
                reports = [await store.audit.read(name) for name in names]
            except ValueError as exc:
                raise BadInput(str(exc)) from None
            if chain is not None and chain not in known and chain != VENDOR_CHAIN:
                raise BadInput(
                    f"no audit chain {chain!r} in the database; its chains: "
                    f"{', '.join(known) or 'none yet'} (see `tether vendor audit`)"
                )
            return reports, []

    reports, head_rows = run(read())
    if heads:
        flagged = any(h.mismatches for h in head_rows)
        if as_json:
            print_json({"heads": [h.to_json() for h in head_rows], "mismatch": flagged})
        else:
            _print_heads(head_rows)
        if verify and flagged:
            sys.exit(1)
        return
    if as_json:
        print_json({"chains": [_chain_json(r, last) for r in reports]})
    else:
        if not reports:
            out.print("No audit entries in the database yet.")
        for report in reports:
            out.print(f"[bold]{escape(report.chain)}[/]")
            shown = report.entries[-last:] if last else report.entries
            for entry in shown:
                out.print("  " + escape(_describe(entry)))
            if verify:
                print_verification(report.verification, f"Audit chain {report.chain}")
    if verify and not all(r.verification.ok for r in reports):
        sys.exit(1)

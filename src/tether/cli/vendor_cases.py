"""``tether vendor cases …`` and ``machine rebind``: one-click requests and the machines
that sent them.

``cases`` lists the one-click support requests; ``cases approve ID`` and ``cases deny
ID`` decide one, through the same :class:`~tether.vendor_service.authority.Authority`
calls as the API and the console (a key is issued, the waiting machine receives it,
the vendor audit chain records who decided).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from tether.cli.common import data_dir_option, handle_errors, json_option, out, print_json, run
from tether.cli.vendor_common import CLI_ACTOR, with_authority
from tether.errors import BadInput
from tether.keys import check_serial
from tether.store import CaseRecord, CaseStatus, MachineRecord
from tether.vendor_service.api_errors import check_text
from tether.vendor_service.authority import case_machine

#: The reason a denial gives the customer when none is given (as the API's).
DEFAULT_DENY_REASON = "denied by vendor"
#: The longest reason the store keeps.
MAX_REASON = 500


@click.group()
def machine() -> None:
    """Machines bound to a serial (by a key's first use or an approved one-click case)."""


@machine.command("rebind")
@data_dir_option
@click.argument("serial")
@click.option("--reason", required=True, help="Why (kept in the vendor audit log).")
@json_option
@handle_errors
def machine_rebind(data_dir: Path, serial: str, reason: str, as_json: bool) -> None:
    """Forget the machine key bound to SERIAL (e.g. its mainboard was replaced).

    The next key used for SERIAL, or the next one-click case an engineer approves for
    it, binds it anew.
    """
    serial = check_serial(serial)
    if not reason.strip():
        raise BadInput("give a reason: --reason 'mainboard replaced'")

    async def go() -> None:
        async with with_authority(data_dir) as authority:
            await authority.rebind_machine(serial, by=CLI_ACTOR, reason=reason)

    run(go())
    if as_json:
        print_json({"serial": serial, "rebound": True, "by": CLI_ACTOR, "reason": reason})
        return
    out.print(
        f"Machine {escape(serial)} re-bound: the next key used for it, or the next case an "
        "engineer approves for it, binds it to that machine."
    )


def case_json(case: CaseRecord, bound: MachineRecord | None) -> dict[str, object]:
    """A case as scripts read it: the asking machine key's fingerprint (not secret: it
    is what a person checks before approving) and whether it is the serial's bound
    machine; never the key text."""
    return {
        "id": case.id,
        "serial": case.serial,
        "machine_key": case.machine_key,
        "machine": case_machine(case.machine_key, bound),
        "status": case.status.value,
        "created_at": case.created_at.isoformat(),
        "decided_by": case.decided_by,
        "decided_at": case.decided_at.isoformat() if case.decided_at else None,
        "key_id": case.key_id,
        "deny_reason": case.deny_reason,
        "description": case.description,
    }


@click.group(invoke_without_command=True)
@data_dir_option
@click.option(
    "--status",
    type=click.Choice([s.value for s in CaseStatus]),
    help="Only cases in this state.",
)
@json_option
@click.pass_context
@handle_errors
def cases(ctx: click.Context, data_dir: Path, status: str | None, as_json: bool) -> None:
    """List one-click support requests (cases), newest first; approve or deny one.

    \b
    Examples:
      tether vendor cases --status pending      what waits for a decision
      tether vendor cases approve 12            issue the key; the machine tethers
      tether vendor cases deny 12 --reason "no support contract for this unit"
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = data_dir  # the subcommand's default, if it is given no --data-dir
        return

    async def go() -> list[dict[str, object]]:
        async with with_authority(data_dir) as authority:
            found = await authority.store.cases.list(status=CaseStatus(status) if status else None)
            bound = await authority.store.machines.get_many(c.serial for c in found)
            return [case_json(c, bound.get(c.serial)) for c in found]

    rows = run(go())
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No cases.")
    for row in rows:
        by = f" by {row['decided_by']}" if row["decided_by"] else ""
        first_line = str(row["description"]).splitlines()[0] if row["description"] else ""
        out.print(
            f"#{row['id']}  {row['status']}{by}  {escape(str(row['serial']))}  "
            f"machine {row['machine_key']} ({_MACHINE_WORDS[str(row['machine'])]})  "
            f"{row['created_at']}  {escape(first_line[:80])}"
        )


_MACHINE_WORDS = {
    "known": "the machine this serial is bound to",
    "new": "not bound yet: approving binds the serial to it",
    "other": "NOT the bound machine: re-bind a replaced machine first",
}

#: ``--data-dir`` after ``approve`` / ``deny``; before it, the group's option applies.
_sub_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The vendor data directory (default: as for `tether vendor cases`).",
)


def _data_dir(ctx: click.Context, given: Path | None) -> Path:
    if given is not None:
        return given
    inherited = ctx.obj
    if not isinstance(inherited, Path):  # pragma: no cover - the group always sets it
        raise BadInput("give --data-dir")
    return inherited


def _say_decided(decided: tuple[CaseRecord, MachineRecord | None], as_json: bool) -> None:
    case, bound = decided
    if as_json:
        print_json(case_json(case, bound))
    elif case.status is CaseStatus.ISSUED:
        out.print(
            f"Case #{case.id} approved: key {case.key_id} issued for "
            f"{escape(case.serial)}; the waiting machine receives it now."
        )
    else:
        out.print(
            f"Case #{case.id} denied; {escape(case.serial)} is told: "
            f"{escape(case.deny_reason or '')}"
        )


@cases.command("approve")
@click.argument("case_id", metavar="ID", type=int)
@_sub_data_dir
@json_option
@click.pass_context
@handle_errors
def approve(ctx: click.Context, case_id: int, data_dir: Path | None, as_json: bool) -> None:
    """Approve a pending case: a key is issued and handed to the waiting machine.

    Exit 2 for a case that does not exist, 1 for one already decided.
    """

    async def go() -> tuple[CaseRecord, MachineRecord | None]:
        async with with_authority(_data_dir(ctx, data_dir)) as authority:
            case = await authority.approve_case(case_id, by=CLI_ACTOR)
            return case, await authority.store.machines.get(case.serial)

    _say_decided(run(go()), as_json)


@cases.command("deny")
@click.argument("case_id", metavar="ID", type=int)
@click.option(
    "--reason",
    default=DEFAULT_DENY_REASON,
    show_default=True,
    help="What the customer is told.",
)
@_sub_data_dir
@json_option
@click.pass_context
@handle_errors
def deny(
    ctx: click.Context, case_id: int, reason: str, data_dir: Path | None, as_json: bool
) -> None:
    """Deny a pending case; the customer's machine is told the reason.

    Exit 2 for a case that does not exist or a bad reason, 1 for one already decided.
    """
    reason = check_text(reason.strip(), "the reason")
    if not reason or len(reason) > MAX_REASON:
        raise BadInput(f"the reason must be 1 to {MAX_REASON} characters")

    async def go() -> tuple[CaseRecord, MachineRecord | None]:
        async with with_authority(_data_dir(ctx, data_dir)) as authority:
            case = await authority.deny_case(case_id, by=CLI_ACTOR, reason=reason)
            return case, await authority.store.machines.get(case.serial)

    _say_decided(run(go()), as_json)

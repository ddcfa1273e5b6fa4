"""`tether vendor migrate`: what the Debian package runs on upgrade, before services restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from tether.cli import main
from tether.store import Store
from tether.vendor_service.authority import load_vendor_config


def migrate(data: Path) -> dict[str, object]:
    result = CliRunner().invoke(main, ["vendor", "migrate", "--data-dir", str(data), "--json"])
    assert result.exit_code == 0, result.output
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


def test_migrate_brings_an_older_schema_to_head_and_is_idempotent(tmp_path: Path) -> None:
    data = tmp_path / "vendor"
    made = CliRunner().invoke(
        main, ["vendor", "init", "--data-dir", str(data), "--vendor", "ACME", "--relay", "r:2222"]
    )
    assert made.exit_code == 0, made.output
    head = migrate(data)["to"]

    async def downgrade() -> None:
        async with await Store.open(load_vendor_config(data).database, migrate=False) as store:
            await store.downgrade("0007")

    asyncio.run(downgrade())
    upgraded = migrate(data)
    assert (upgraded["from"], upgraded["to"]) == ("0007", head)
    again = migrate(data)
    assert (again["from"], again["to"]) == (head, head)


def test_migrate_without_a_vendor_setup_says_what_to_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["vendor", "migrate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "tether vendor init" in result.output

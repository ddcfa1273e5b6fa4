"""What the ``tether vendor …`` modules share: the actor the audit names, the authority."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tether.store import Store
from tether.vendor_service.authority import Authority, load_vendor_config

#: Who the audit log names for acts done with the CLI on the vendor host.
CLI_ACTOR = "vendor-cli"


@asynccontextmanager
async def with_authority(data_dir: Path) -> AsyncIterator[Authority]:
    """The vendor's authority over its database, for one command."""
    config = load_vendor_config(data_dir)
    store = await Store.open(config.database)
    try:
        yield Authority(config, store)
    finally:
        await store.aclose()

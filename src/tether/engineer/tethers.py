"""``tether ls`` and the machine list of ``tether ssh-config``: live tethers from the service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from tether.clock import utc
from tether.durations import format_duration
from tether.engineer.client import VendorClient, clean_detail
from tether.engineer.state import Session
from tether.vendor_service.api_models import Tether


async def fetch_tethers(
    session: Session, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[Tether]:
    """``GET /api/tethers`` with the stored token, sorted by serial."""
    async with VendorClient(
        session.settings.vendor, token=session.token(), transport=transport
    ) as client:
        tethers = await client.tethers()
    return sorted(tethers, key=lambda t: t.serial.lower())


@dataclass(frozen=True)
class TetherRow:
    """One line of ``tether ls``, already in words."""

    serial: str
    since: str
    expires_in: str
    ports: str
    engineers: str
    description: str


def _when(moment: datetime, now: datetime) -> str:
    """``HH:MM UTC`` today, with the date on other days."""
    moment = utc(moment)
    if moment.date() == now.date():
        return f"{moment:%H:%M} UTC"
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def tether_row(tether: Tether, now: datetime) -> TetherRow:
    """Words for one tether: since when, how long left, ports, who is connected."""
    now = utc(now)
    left = utc(tether.expires_at) - now
    return TetherRow(
        serial=clean_detail(tether.serial),
        since=_when(tether.since, now),
        expires_in=format_duration(left) if left.total_seconds() > 0 else "expired",
        ports=",".join(str(p) for p in sorted(tether.ports)),
        engineers=", ".join(clean_detail(e) for e in tether.engineers) or "-",
        description=clean_detail(tether.description or "") or "-",
    )


def tether_json(tether: Tether, now: datetime) -> dict[str, object]:
    """A tether as JSON for scripts: the service's fields plus ``expires_in_seconds``."""
    data: dict[str, object] = tether.model_dump(mode="json")
    data["expires_in_seconds"] = max(
        0, int((utc(tether.expires_at) - utc(now).astimezone(UTC)).total_seconds())
    )
    return data

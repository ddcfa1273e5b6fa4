"""Human durations on the command line: ``90s``, ``15m``, ``8h``, ``14d``, ``2w``."""

from __future__ import annotations

import re
from datetime import timedelta

from tether.errors import BadInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)([smhdw])")
_LONGEST = 10 * 366 * 86400


def parse_duration(text: str) -> timedelta:
    """Parse ``"14d"``, ``"8h"``, ``"1h30m"`` into a :class:`timedelta`.

    Raises :class:`BadInput` with an example of the accepted form otherwise.
    """
    compact = text.strip().lower().replace(" ", "")
    if not compact or _PART.sub("", compact):
        raise BadInput(
            f"cannot read duration {text!r}: use a number and a unit s/m/h/d/w, e.g. 8h, 14d, 1h30m"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(compact))
    if seconds > _LONGEST:
        raise BadInput(f"duration {text!r} is longer than anything Tether accepts (10 years)")
    if seconds <= 0:
        raise BadInput(f"duration {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a duration the way people read it: ``6d 23h``, ``4m 10s``, ``0s``."""
    total = max(0, int(delta.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{u}" for n, u in parts if n][:2]
    return " ".join(shown) if shown else "0s"

"""Benchmark rows, the table printed at the end, and the JSON + markdown written to disk."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass
class Row:
    """One measured figure beside its budget (and, where there is one, its baseline)."""

    figure: str
    value: float
    unit: str
    budget: str
    #: True / False: met or missed; None: no budget applies (informational)
    ok: bool | None
    baseline: float | None = None
    baseline_name: str = ""
    detail: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def shown(self) -> str:
        text = (
            f"{self.value:,.3g} {self.unit}"
            if self.value < 1000
            else f"{self.value:,.0f} {self.unit}"
        )
        if self.baseline is not None:
            text += f" (vs {self.baseline:,.3g} {self.baseline_name})"
        return text


def median(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def verdict(ok: bool | None) -> str:
    return {True: "[green]met[/]", False: "[red]MISSED[/]", None: "[dim]info[/]"}[ok]


def print_table(rows: list[Row], machine: dict[str, object], console: Console) -> None:
    table = Table(title="Tether benchmarks (medians; ratios are the headline)")
    for name in ("figure", "measured", "budget", ""):
        table.add_column(name)
    for row in rows:
        table.add_row(
            row.figure,
            row.shown + (f"\n[dim]{row.detail}[/]" if row.detail else ""),
            row.budget,
            verdict(row.ok),
        )
    console.print(table)
    console.print(f"[dim]machine: {machine}[/]")


def markdown(rows: list[Row], machine: dict[str, object], settings: dict[str, object]) -> str:
    lines = [
        "| figure | measured | budget | |",
        "|---|---|---|---|",
    ]
    for row in rows:
        mark = {True: "met", False: "**missed**", None: "info"}[row.ok]
        shown = row.shown + (f" — {row.detail}" if row.detail else "")
        lines.append(f"| {row.figure} | {shown} | {row.budget} | {mark} |")
    lines += [
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()),
        "",
    ]
    return "\n".join(lines)


def write(
    out: Path, stamp: str, rows: list[Row], machine: dict[str, object], settings: dict[str, object]
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine, "settings": settings, "rows": [asdict(r) for r in rows]}
    json_path = out / f"{stamp}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path = out / f"{stamp}.md"
    md_path.write_text(markdown(rows, machine, settings))
    return json_path, md_path

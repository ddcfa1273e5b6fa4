"""Reading a relay's own histogram over HTTP, to set beside what the bench measured.

The bench times revocations from the outside (the engineer's ``ssh`` exiting); the relay
times them from the inside (``tether_relay_revocation_cut_seconds``: the revocation's
write to the store, to the relay cutting the tether). Scraping ``/metrics`` before and
after a series of tries gives the relay's observations of those tries alone: their
count, their exact mean (from ``_sum`` and ``_count``) and a quantile estimated from the
buckets as Prometheus' ``histogram_quantile`` does (linear within a bucket).
"""

from __future__ import annotations

import asyncio
import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class HistogramReading:
    """One histogram series: cumulative ``(le, count)`` buckets (``+Inf`` last), sum, count."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    def since(self, before: HistogramReading) -> HistogramReading:
        """The observations made between ``before`` and this reading."""
        earlier = dict(before.buckets)
        return HistogramReading(
            tuple((le, n - earlier.get(le, 0.0)) for le, n in self.buckets),
            self.sum - before.sum,
            self.count - before.count,
        )

    @property
    def mean(self) -> float:
        """The exact mean of the observations (``nan`` without any)."""
        return self.sum / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) estimated from the buckets, as ``histogram_quantile``.

        An estimate within the bucket holding it; the highest finite bound if it falls
        in ``+Inf``; ``nan`` without observations.
        """
        if not self.count:
            return math.nan
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, cumulative
        return lower


def parse_histogram(text: str, name: str, **labels: str) -> HistogramReading:
    """The series of histogram ``name`` with ``labels`` in a ``/metrics`` page.

    :raises LookupError: the page has no such series.
    """
    buckets: list[tuple[float, float]] = []
    total = count = None
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            extra = {k: v for k, v in sample.labels.items() if k != "le"}
            if extra != labels:
                continue
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), float(sample.value)))
            elif sample.name == f"{name}_sum":
                total = float(sample.value)
            elif sample.name == f"{name}_count":
                count = float(sample.value)
    if not buckets or total is None or count is None:
        raise LookupError(f"no histogram {name}{labels or ''} in the page")
    return HistogramReading(tuple(sorted(buckets)), total, count)


async def scrape_histogram(url: str, name: str, **labels: str) -> HistogramReading:
    """GET ``url`` (a relay's ``/metrics``) and read one histogram series from it."""
    if not url.startswith("http://"):
        raise ValueError(f"not a relay's metrics address: {url!r}")

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - http only
            return str(response.read().decode())

    return parse_histogram(await asyncio.to_thread(get), name, **labels)

"""The bench reads a relay's histogram as Prometheus would: a real relay registry's page."""

from __future__ import annotations

import math

import pytest
from bench.relay_metrics import parse_histogram
from prometheus_client import generate_latest

from tether.relay.metrics import RelayMetrics

NAME = "tether_relay_revocation_cut_seconds"


def page(metrics: RelayMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_observations_between_two_scrapes_give_their_exact_mean_and_a_bucket_quantile() -> None:
    metrics = RelayMetrics(tethers=lambda: 0, unauthenticated=lambda: 0, peer_links=lambda: 0)
    cut = metrics.revocation_cut
    cut.labels("key").observe(3.0)  # before the tries: not theirs
    cut.labels("engineer").observe(0.2)  # another kind: not theirs
    before = parse_histogram(page(metrics), NAME, kind="key")
    for seconds in (0.03, 0.04, 0.06, 0.3):
        cut.labels("key").observe(seconds)
    tries = parse_histogram(page(metrics), NAME, kind="key").since(before)
    assert tries.count == 4
    assert tries.mean == pytest.approx(0.1075)
    # Two of four at or under 0.05 s: the median is the 0.05 bucket's upper bound.
    assert tries.quantile(0.5) == pytest.approx(0.05)
    # The slowest (0.3 s) is in the (0.25, 0.5] bucket: the p99 is estimated inside it.
    assert 0.25 < tries.quantile(0.99) <= 0.5


def test_no_observations_and_missing_series_are_not_read_as_zero() -> None:
    metrics = RelayMetrics(tethers=lambda: 0, unauthenticated=lambda: 0, peer_links=lambda: 0)
    empty = parse_histogram(page(metrics), NAME, kind="key")
    assert empty.count == 0
    assert math.isnan(empty.mean)
    assert math.isnan(empty.quantile(0.99))
    with pytest.raises(LookupError):
        parse_histogram(page(metrics), NAME, kind="no-such-kind")

"""deploy/prometheus and deploy/grafana name only metrics the relay and vendor service export."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tether.relay.metrics import RelayMetrics
from tether.vendor_service.metrics import VendorMetrics

ROOT = Path(__file__).resolve().parents[2]
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def _series_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def exported() -> set[str]:
    relay = RelayMetrics(tethers=lambda: 0, unauthenticated=lambda: 0, peer_links=lambda: 0)
    return _series_names(relay.registry) | _series_names(VendorMetrics().registry)


@pytest.mark.parametrize(
    "shipped",
    [
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts_test.yml",
        "deploy/grafana/tether.json",
    ],
)
def test_shipped_queries_name_only_exported_metrics(shipped: str) -> None:
    text = (ROOT / shipped).read_text()
    named = set(re.findall(r"\btether_(?:relay|vendor)_[a-z_]+", text))
    assert named, f"{shipped} names no Tether metric"
    assert named <= exported(), f"{shipped} names unknown metrics: {sorted(named - exported())}"


def test_the_dashboard_shows_every_relay_and_vendor_metric() -> None:
    text = (ROOT / "deploy/grafana/tether.json").read_text()
    shown = {
        re.sub(r"_(total|bucket|sum|count)$", "", n) for n in re.findall(r"\btether_[a-z_]+", text)
    }
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported()}
    assert families <= shown, f"not on the dashboard: {sorted(families - shown)}"

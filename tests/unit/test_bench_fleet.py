"""The fleet bench's throughput explanation: CPU per GiB of each process on each path."""

from __future__ import annotations

from bench.fleet import Download, cores_busy, cost_summary, cpu_per_gib

GIB = 1 << 30


def test_cpu_per_gib_sums_each_process_over_the_runs() -> None:
    runs = [
        Download(300.0, {"relay a": 1.0, "agent": 0.5}, seconds=2.0),
        Download(300.0, {"relay a": 2.0, "agent": 0.5}, seconds=2.0),
    ]
    assert cpu_per_gib(runs, GIB // 2) == {"relay a": 3.0, "agent": 1.0}
    assert cores_busy(runs) == 1.0


def test_summary_gives_both_ratios_the_cpu_figures_predict() -> None:
    own_runs = [Download(300.0, {"relay a": 1.5, "relay b": 0.0, "agent": 1.5}, seconds=1.5)]
    peer_runs = [Download(200.0, {"relay a": 1.5, "relay b": 1.5, "agent": 1.5}, seconds=2.25)]
    own, peer = cpu_per_gib(own_runs, GIB), cpu_per_gib(peer_runs, GIB)
    text = cost_summary(own, peer, own_runs, peer_runs)
    assert "via own relay: relay a 1.50, agent 1.50 (total 3.00, 2.00 cores busy)" in text
    assert "relay b 1.50" in text.split("via peer:")[1]
    # All cores busy: speed follows total CPU (3.0 / 4.5); a core each: the busiest (1.5 / 1.5).
    assert text.endswith("with all cores busy 0.67x, with a core per process 1.00x")

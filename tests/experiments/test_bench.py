"""``detloss bench``'s timing plan: slow calls are timed fewer times, and the report says so."""

from __future__ import annotations

import pytest

from detloss.experiments import bench


def test_runs_for_caps_only_calls_slower_than_the_limit() -> None:
    assert bench._runs_for(bench.SLOW_CALL_S / 2, 7) == 7
    assert bench._runs_for(bench.SLOW_CALL_S * 2, 7) == bench.SLOW_REPEAT == 3
    assert bench._runs_for(bench.SLOW_CALL_S * 2, 2) == 2  # never more runs than asked


@pytest.mark.parametrize("loss", ["iou", "pairwise-iou"])
def test_slow_rows_are_timed_slow_repeat_times_and_starred(monkeypatch: pytest.MonkeyPatch, loss: str) -> None:
    monkeypatch.setattr(bench, "SLOW_CALL_S", -1.0)  # every call counts as slow
    rows = bench.run_bench([loss], [2000], backends=["reference"], repeat=6, with_peers=False)
    ours = [r for r in rows if r["impl"] == "reference"]
    assert [r["runs"] for r in ours] == [bench.SLOW_REPEAT]
    report = bench.report_markdown(rows, {"repeat": 6, "threads": 1, "device": "cpu"})
    line = next(x for x in report.splitlines() if x.startswith(f"| {loss} | reference |"))
    assert f"{ours[0]['fwd_bwd_ms']:.3f}*" in line


def test_fast_rows_keep_the_asked_repeat() -> None:
    rows = bench.run_bench(["iou"], [20_000], backends=["reference"], repeat=4, with_peers=False)
    (ours,) = [r for r in rows if r["impl"] == "reference"]
    assert ours["runs"] == 4
    report = bench.report_markdown(rows, {"repeat": 4, "threads": 1, "device": "cpu"})
    line = next(x for x in report.splitlines() if x.startswith("| iou | reference |"))
    assert "*" not in line

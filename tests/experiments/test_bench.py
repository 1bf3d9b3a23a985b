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


def test_fast_path_tables_divide_within_the_run() -> None:
    """benchmarks/fast_path_tables.py on hand-made rows: 2 ms native over a 0.5 ms floor is 4x;
    a 10 ms peer is 5x the native and 2x the 5 ms reference."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fast_path_tables.py"
    spec = importlib.util.spec_from_file_location("fast_path_tables", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def row(impl: str, ms: float, tight: float | None = None) -> dict[str, object]:
        return {"loss": "ciou", "n": 1000, "impl": impl, "fwd_bwd_ms": ms, "floor_ms": 0.5, "fwd_bwd_tight_ms": tight}

    rows = [row("native", 2.0, 1.5), row("reference", 5.0), row("call-floor", 1.0, 0.5), row("ultralytics", 10.0)]
    text = module.tables({"rows": rows, "torch_version": "x", "threads": 2, "args": {"repeat": 7}})
    (line,) = [x for x in text.splitlines() if x.startswith("| ciou |")]
    assert [c.strip() for c in line.strip("|").split("|")] == [
        "ciou", "1,000", "2 ms", "4.00x", "2.00x / 3.00x", "5 ms", "ultralytics 10 ms", "5.00x", "2.00x"
    ]  # fmt: skip


def test_the_default_bench_run_times_every_loss_of_the_bench() -> None:
    """``detloss bench`` without ``--losses`` covers :data:`BENCH_LOSSES`: the pairwise rows too."""
    import inspect

    from detloss import cli

    default = inspect.signature(cli.bench).parameters["losses"].default
    assert sorted(default.split(",")) == sorted(bench.BENCH_LOSSES)

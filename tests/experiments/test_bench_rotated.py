"""``detloss bench`` rows of the rotated losses: the reference path against the floor (and
ultralytics' ``probiou`` where it is installed: tests/integration/test_ultralytics_obb.py)."""

from __future__ import annotations

import importlib.util

import torch

from detloss.experiments.bench import (
    BENCH_LOSSES,
    ROTATED_LOSSES,
    available_backends,
    bench_inputs,
    report_markdown,
    run_bench,
)


def test_rotated_losses_are_benched_on_the_reference_and_native_paths() -> None:
    assert set(ROTATED_LOSSES) <= set(BENCH_LOSSES)
    rows = run_bench(["probiou", "rotated_iou"], [64], repeat=1)  # every backend available here
    has_native = "native" in available_backends(torch.device("cpu"))
    peer = ["ultralytics"] if importlib.util.find_spec("ultralytics") is not None else []
    for loss in ("probiou", "rotated_iou"):
        group = [r for r in rows if r["loss"] == loss]
        native = ["native"] if has_native else []  # no fused path for rotated boxes
        expected = ["floor", "call-floor", "reference", *native, *(peer if loss == "probiou" else [])]
        assert [r["impl"] for r in group] == expected
        assert all(r["n"] == 64 and r["fwd_bwd_ms"] > 0 and r["ratio_vs_floor"] > 0 for r in group)
    assert "| probiou | reference | 64 |" in report_markdown(rows, {"repeat": 1})


def test_rotated_bench_inputs_are_valid_nearby_pairs() -> None:
    pred, target = bench_inputs("kld", 1000, torch.device("cpu"))
    assert pred.shape == target.shape == (1000, 5) and pred.dtype == torch.float32
    assert bool((target[:, 2:4] > 0).all()) and bool((pred[:, 2:4] > 0).all())
    offset = (pred[:, :2] - target[:, :2]).abs() / target[:, 2:4]
    assert float(offset.max()) <= 0.2 + 1e-6 and float((pred[:, 4] - target[:, 4]).abs().max()) <= 0.2 + 1e-6

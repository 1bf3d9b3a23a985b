"""The native simulation kernel (``torch.ops.detloss.regress_boxes``, ``simulate.cpp``) against
the torch loop of :func:`detloss.experiments.simulation.regress_at` that it replaces.

The oracle is that loop with the same directions: ``exact`` (autograd through the loss module,
whose backward is the native loss operator on CPU), ``paper`` (``paper_direction``'s tensor
operations). Float64: the same bits, boxes and curve. Float32: float32 rounding. The loop
itself is checked against independent computations in ``tests/experiments/test_simulate.py``.
No timing assertions.
"""

from __future__ import annotations

import pytest
import torch

import detloss
from detloss._backend import torch_threads
from detloss._fused import ops
from detloss.experiments.simulation import (
    NATIVE_LOSSES,
    anchor_points,
    case_boxes,
    learning_rate,
    make_direction,
    regress_at,
    regress_cases,
    runs_native,
)

OP = torch.ops.detloss.regress_boxes.default
STEPS = 30  # eta drops after steps 24 and 27
RUNS = [(loss, gradient) for gradient, losses in NATIVE_LOSSES.items() for loss in losses]


def need_native() -> None:
    with detloss.use_backend("native"):
        info = detloss.backend_info()
    if info.native_library is None:
        pytest.skip(f"native kernel unavailable: {info.native_failure}")


def cases(points: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return case_boxes(anchor_points(points, seed=seed, dtype=dtype))


def rates(steps: int = STEPS) -> list[float]:
    return [learning_rate(t, steps) for t in range(1, steps + 1)]


def oracle(anchors: torch.Tensor, targets: torch.Tensor, loss: str, gradient: str) -> tuple[torch.Tensor, torch.Tensor]:
    with detloss.use_backend("native"):
        return regress_at(anchors, targets, make_direction(loss, gradient), rates())


def native(anchors: torch.Tensor, targets: torch.Tensor, loss: str, gradient: str) -> tuple[torch.Tensor, torch.Tensor]:
    return OP(anchors, targets, torch.tensor(rates(), dtype=torch.float64), loss, gradient)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("loss", "gradient"), RUNS)
def test_native_equals_the_torch_loop_bit_for_bit_in_float64(loss: str, gradient: str) -> None:
    """20 centres: 6,860 cases, a partial last block (6,860 = 26 x 256 + 204) and a tail of 4
    for the vector loops of ATen (8 doubles a step)."""
    need_native()
    anchors, targets = cases(20, torch.float64)
    with torch_threads(1):
        expected_boxes, expected_curve = oracle(anchors, targets, loss, gradient)
        boxes, curve = native(anchors, targets, loss, gradient)
    assert curve.dtype == torch.float64 and curve.shape == (STEPS + 1,)
    assert torch.equal(boxes, expected_boxes), (boxes - expected_boxes).abs().max()
    assert torch.equal(curve, expected_curve), ((curve - expected_curve).abs() / expected_curve).max()
    assert curve[-1] < curve[0]  # the run regresses, it is not a copy of the anchors
    assert not torch.equal(anchors, boxes)


@pytest.mark.parametrize(
    ("loss", "gradient"), [("ciou", "paper"), ("ciou", "exact"), ("giou", "paper"), ("siou", "exact")]
)
def test_native_equals_the_torch_loop_on_two_threads(loss: str, gradient: str) -> None:
    """Threads split the blocks; every case's numbers and the curve's sums stay the torch loop's."""
    need_native()
    anchors, targets = cases(9, torch.float64, seed=3)
    with torch_threads(2):
        expected = oracle(anchors, targets, loss, gradient)
        actual = native(anchors, targets, loss, gradient)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])


@pytest.mark.parametrize(("loss", "gradient"), RUNS)
def test_native_float32_within_float32_rounding(loss: str, gradient: str) -> None:
    need_native()
    anchors, targets = cases(6, torch.float32, seed=1)
    with torch_threads(1):
        expected_boxes, expected_curve = oracle(anchors, targets, loss, gradient)
        boxes, curve = native(anchors, targets, loss, gradient)
    assert boxes.dtype == torch.float32
    torch.testing.assert_close(boxes, expected_boxes, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(curve, expected_curve, rtol=1e-4, atol=1e-2)


def test_regress_cases_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel under the native backend on CPU; the torch loop under ``reference``, for losses
    the kernel does not run, and (same numbers) where the kernel runs."""
    need_native()
    calls: list[str] = []
    real = torch.ops.detloss.regress_boxes

    class Spy:
        def __call__(self, *args: object) -> object:
            calls.append(str(args[3]))
            return real(*args)

    monkeypatch.setattr(torch.ops.detloss, "regress_boxes", Spy())
    anchors, targets = cases(2, torch.float64)
    with detloss.use_backend("native"):
        fast = regress_cases(anchors, targets, "diou", "paper", 12)
        assert runs_native("ciou", "exact", anchors) and not runs_native("mpdiou", "exact", anchors)
        assert not runs_native("eiou", "paper", anchors) and not runs_native("ciou", "exact", anchors.half())
        regress_cases(anchors, targets, "mpdiou", "exact", 3)
    assert calls == ["diou"]
    with detloss.use_backend("reference"):
        assert not runs_native("diou", "paper", anchors)
        slow = regress_cases(anchors, targets, "diou", "paper", 12)
    assert calls == ["diou"]
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])  # paper mode: no loss module


def test_bad_arguments_name_themselves() -> None:
    need_native()
    anchors, targets = cases(1, torch.float64)
    r = torch.tensor(rates(3), dtype=torch.float64)
    with pytest.raises(RuntimeError, match="gradient must be exact or paper"):
        OP(anchors, targets, r, "ciou", "steepest")
    with pytest.raises(RuntimeError, match="loss must be one of iou, giou, diou, ciou with gradient paper"):
        OP(anchors, targets, r, "eiou", "paper")
    with pytest.raises(RuntimeError, match="anchors and targets of shape"):
        OP(anchors, targets[:5], r, "iou", "exact")


def test_opcheck_and_the_pure_torch_kernel() -> None:
    """The schema, the fake kernel and the pure-torch kernel (the torch loop, what other devices
    run) by torch.library.opcheck; no autograd (the inputs need no gradient)."""
    need_native()
    anchors, targets = cases(1, torch.float64)
    r = torch.tensor(rates(4), dtype=torch.float64)
    torch.library.opcheck(OP, (anchors, targets, r, "ciou", "paper"))
    fake = OP(anchors.to("meta"), targets.to("meta"), r.to("meta"), "giou", "paper")
    assert fake[0].shape == (343, 4) and fake[1].shape == (5,) and fake[1].dtype == torch.float64
    with torch_threads(1):  # the same operator by its two kernels
        pure = ops._regress_boxes(anchors, targets, r, "giou", "paper")
        assert all(torch.equal(a, b) for a, b in zip(pure, OP(anchors, targets, r, "giou", "paper")))

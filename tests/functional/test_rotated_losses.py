"""Rotated-box losses against their formulas, written here from the papers (float64, explicit
2 x 2 matrix algebra and shapely areas); options, modules, autocast, degenerate inputs, and
the example of the guide docs/guides/rotated.md."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import detloss
from detloss import functional as F
from tests.boxes.test_rotated import random_pairs, ref_gaussian, ref_kfiou, shapely_iou

LOSS_KEYS = ("rotated_iou", "probiou", "kld", "gwd", "kfiou")


def as_lists(*boxes: torch.Tensor) -> list[list[list[float]]]:
    return [b.tolist() for b in boxes]


def smooth_l1(x: float, beta: float) -> float:
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def ref_loss(key: str, p: list[float], t: list[float], **options: object) -> float:
    """The loss of one pair, from the definitions (eps of the library at 1e-300: negligible)."""
    if key == "rotated_iou":
        kind, mode = options.get("kind", "iou"), options.get("mode", "linear")
        iou = shapely_iou(p, t, "iou")
        penalty = iou - shapely_iou(p, t, "giou") if kind == "giou" else 0.0
        if mode == "log" and iou == 0:
            return math.inf  # the loss floors the IoU at eps: not compared
        return (1 - iou if mode == "linear" else -math.log(iou)) + penalty
    if key == "probiou":
        b = ref_gaussian(p, t, "bhattacharyya")
        return b if options.get("mode") == "l2" else math.sqrt(1 - math.exp(-b))
    if key in ("kld", "gwd"):
        d = ref_gaussian(p, t, key)
        fun = options.get("fun", "log1p" if key == "kld" else "sqrt")
        tau = float(options.get("tau", 1.0 if key == "kld" else 2.0))  # type: ignore[arg-type]
        return 1 - 1 / (tau + (math.log1p(d) if fun == "log1p" else math.sqrt(d)))
    # kfiou: smooth L1 of the centre offset in the target's frame over its sides, plus f(KFIoU)
    cx, cy = p[0] - t[0], p[1] - t[1]
    c, s = math.cos(t[4]), math.sin(t[4])
    beta = float(options.get("beta", 1 / 9))  # type: ignore[arg-type]
    centre = smooth_l1((cx * c + cy * s) / t[2], beta) + smooth_l1((cy * c - cx * s) / t[3], beta)
    overlap = ref_kfiou(p, t)
    mode = options.get("mode", "ln")
    shape = -math.log(overlap) if mode == "ln" else 1 - overlap if mode == "linear" else math.exp(1 - overlap) - 1
    return centre + shape


OPTIONS = {
    "rotated_iou": [{}, {"mode": "log"}, {"kind": "giou"}, {"kind": "giou", "mode": "log"}],
    "probiou": [{}, {"mode": "l2"}],
    "kld": [{}, {"fun": "sqrt", "tau": 2.0}],
    "gwd": [{}, {"fun": "log1p", "tau": 1.0}],
    "kfiou": [{}, {"mode": "linear"}, {"mode": "exp", "beta": 0.0}],
}
CASES = [(key, i) for key, opts in OPTIONS.items() for i in range(len(opts))]


@pytest.mark.parametrize(("key", "option_index"), CASES)
def test_values_against_the_formulas(key: str, option_index: int) -> None:
    options = OPTIONS[key][option_index]
    pred, target = random_pairs(200, seed=20, spread=0.5 if key == "rotated_iou" else 2.0)
    fn = detloss.LOSSES[key].function
    got = fn(pred, target, **options, eps=1e-300, reduction="none")
    ref = torch.tensor([ref_loss(key, p, t, **options) for p, t in zip(*as_lists(pred, target))], dtype=torch.float64)
    finite = torch.isfinite(ref)  # -ln IoU of a disjoint pair: the loss floors IoU at eps
    assert finite.double().mean() > 0.7
    torch.testing.assert_close(got[finite], ref[finite], rtol=1e-9, atol=1e-10)


def test_hand_values() -> None:
    """The examples of the docstrings, worked by hand there."""
    a = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
    moved = torch.tensor([[1.0, 0.0, 4.0, 2.0, 0.0]])
    assert F.probiou_loss(moved, a, mode="l2").item() == pytest.approx(0.09375, rel=1e-5)
    assert F.probiou_loss(moved, a).item() == pytest.approx(math.sqrt(1 - math.exp(-0.09375)), rel=1e-5)
    assert F.kld_loss(moved, a).item() == pytest.approx(1 - 1 / (1 + math.log(1.125)), rel=1e-5)
    assert F.gwd_loss(moved + torch.tensor([2.0, 0, 0, 0, 0]), a).item() == pytest.approx(0.8, rel=1e-6)
    swapped = torch.tensor([[0.0, 0.0, 2.0, 4.0, 0.0]])  # d^2 = ((4 - 2)^2 + (2 - 4)^2) / 4 = 2
    assert F.gwd_loss(swapped, a, fun="log1p", tau=1.0).item() == pytest.approx(1 - 1 / (1 + math.log(3)), rel=1e-6)
    assert F.kfiou_loss(a, a.clone(), mode="linear").item() == pytest.approx(2 / 3, rel=1e-6)
    shifted = torch.tensor([[2.0, 0.0, 4.0, 2.0, 0.0]])  # delta_x = 2 / 4
    assert F.kfiou_loss(shifted, a, mode="linear").item() == pytest.approx(0.5 - 1 / 18 + 2 / 3, rel=1e-6)
    square, turned = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0, 45.0]])
    assert F.rotated_iou_loss(square, turned, angle_unit="deg").item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    assert F.rotated_iou_loss(square, turned, mode="log", angle_unit="deg").item() == pytest.approx(
        0.5 * math.log(2), rel=1e-6
    )
    far = torch.tensor([[3.0, 0.0, 2.0, 2.0, 0.0]])
    assert F.rotated_iou_loss(square, far, kind="giou").item() == pytest.approx(1.2, rel=1e-6)
    assert F.rotated_iou_loss(square, far, mode="log").item() == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_identical_boxes_give_the_minimum_with_zero_gradient() -> None:
    boxes = torch.tensor([[3.0, 4.0, 5.0, 2.0, 0.3], [0.0, 0.0, 3.0, 3.0, 1.0]], dtype=torch.float64)
    minimum = {"rotated_iou": 0.0, "probiou": 0.0, "kld": 0.0, "gwd": 0.5, "kfiou": math.log(3)}
    for key, value in minimum.items():
        pred = boxes.clone().requires_grad_(True)
        loss = detloss.LOSSES[key].function(pred, boxes, reduction="none")
        torch.testing.assert_close(loss, torch.full((2,), value, dtype=torch.float64), rtol=0, atol=1e-6)
        loss.sum().backward()
        assert torch.isfinite(pred.grad).all()
        if key in ("probiou", "kld", "gwd", "kfiou"):  # smooth minima (roots cut below eps)
            assert pred.grad.abs().max() < 1e-6, key


def test_kld_direction_and_asymmetry() -> None:
    """KL(N_t || N_p): the predicted covariance is inverted, so a small prediction pays
    more for the same offset than a large one; swapping the arguments changes the value."""
    target = torch.tensor([[0.0, 0.0, 4.0, 4.0, 0.0]], dtype=torch.float64)
    small = torch.tensor([[1.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    large = torch.tensor([[1.0, 0.0, 8.0, 8.0, 0.0]], dtype=torch.float64)
    d_small = detloss.boxes.gaussian_distance(small, target, "kld", eps=1e-300)
    # by hand: Sigma_p = I (k = 4, sides 2), Sigma_t = 4 I: 1/2 (tr 4I + 1 - 2 + ln(1/16)) = 1/2 (8 + 1 - 2 - 2 ln 4)
    assert d_small.item() == pytest.approx(0.5 * (8 + 1 - 2 - 2 * math.log(4)), rel=1e-12)
    d_other_way = detloss.boxes.gaussian_distance(target, small, "kld", eps=1e-300)
    assert d_other_way.item() == pytest.approx(0.5 * (0.5 + 0.25 - 2 + 2 * math.log(4)), rel=1e-12)
    d_large = detloss.boxes.gaussian_distance(large, target, "kld", eps=1e-300)  # Sigma_p = 16 I
    assert d_large.item() == pytest.approx(0.5 * (0.5 + 1 / 16 - 2 + 2 * math.log(4)), rel=1e-12)
    assert d_small > d_large


def test_modules_and_build_loss() -> None:
    pred, target = random_pairs(10, seed=21)
    for key, options in (("rotated_iou", {"kind": "giou", "mode": "log"}), ("probiou", {"mode": "l2"}),
                         ("kld", {"fun": "sqrt"}), ("gwd", {"tau": 3.0}), ("kfiou", {"mode": "exp"})):  # fmt: skip
        module = detloss.build_loss(key, **options, reduction="sum", loss_weight=2.0)
        assert type(module) is getattr(detloss, type(module).__name__)
        expected = 2.0 * detloss.LOSSES[key].function(pred, target, **options, reduction="sum")
        torch.testing.assert_close(module(pred, target), expected)
    names = {detloss.LOSSES[k].module.__name__ for k in LOSS_KEYS}
    assert names == {"RotatedIoULoss", "ProbIoULoss", "KLDLoss", "GWDLoss", "KFIoULoss"}


@pytest.mark.parametrize("key", LOSS_KEYS)
def test_autocast_and_half_compute_in_float32(key: str) -> None:
    pred, target = random_pairs(32, seed=22, spread=1.0)
    fn = detloss.LOSSES[key].function
    bf16 = pred.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(bf16, target.float(), reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(bf16.detach().float(), target.float(), reduction="none"), rtol=0, atol=0)
    out.sum().backward()
    assert bf16.grad.dtype == torch.bfloat16 and torch.isfinite(bf16.grad.float()).all()
    half = fn(pred.half(), target.half(), reduction="none")
    assert half.dtype == torch.float32


@pytest.mark.parametrize("key", LOSS_KEYS)
def test_formats_give_the_same_loss(key: str) -> None:
    pred, target = random_pairs(20, seed=23, spread=1.0)
    fn = detloss.LOSSES[key].function
    base = fn(pred, target, reduction="none")
    deg = [torch.cat((b[:, :4], torch.rad2deg(b[:, 4:])), -1) for b in (pred, target)]
    torch.testing.assert_close(fn(*deg, angle_unit="deg", reduction="none"), base, rtol=1e-10, atol=1e-12)
    quads = [detloss.boxes.convert_rotated(b, "cxcywha", "xyxyxyxy") for b in (pred, target)]
    torch.testing.assert_close(fn(*quads, box_format="xyxyxyxy", reduction="none"), base, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(("key", "option_index"), CASES)
def test_gradcheck_float64_with_options(key: str, option_index: int) -> None:
    options = OPTIONS[key][option_index]
    pred, target = random_pairs(4, seed=24, spread=0.4)
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    fn = detloss.LOSSES[key].function

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b, **options, reduction="sum")

    assert torch.autograd.gradcheck(f, (p, t), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_degenerate_inputs_finite_in_every_loss() -> None:
    pred = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # a point
            [0.0, 0.0, 0.0, 3.0, 0.2],  # zero width
            [3e4, -3e4, 1e-6, 6e4, 700.0],  # far, thin, huge (for float16 too), a big angle
            [2.0, 0.0, 2.0, 2.0, 0.0],  # shares an edge with the target
            [0.0, 0.0, 2.0, 2.0, math.pi / 2],  # the target turned by pi/2
        ]
    )
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]]).expand(5, 5)
    for key in LOSS_KEYS:
        for options in OPTIONS[key]:
            for dtype in (torch.float32, torch.float64, torch.float16):
                p = pred.to(dtype).detach().clone().requires_grad_(True)
                loss = detloss.LOSSES[key].function(p, target.to(dtype), **options, reduction="none")
                assert torch.isfinite(loss).all(), (key, options, dtype)
                loss.sum().backward()
                grad = p.grad.float() if dtype != torch.float16 else p.grad.float().clamp(-65504, 65504)
                assert not torch.isnan(grad).any(), (key, options, dtype)
                if dtype != torch.float16:
                    assert torch.isfinite(grad).all(), (key, options, dtype)


def test_rotated_guide_example_runs() -> None:
    """The "Rotated boxes" guide's example, as a doctest: each printed number is checked."""
    page = Path(__file__).resolve().parents[2] / "docs" / "guides" / "rotated.md"
    section = page.read_text()
    section = "\n".join("" if line.startswith("```") else line for line in section.splitlines())
    parser = doctest.DocTestParser()
    test = parser.get_doctest(section, {"torch": torch, "np": np}, "Rotated boxes guide", str(page), 0)
    assert test.examples, "the section has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0

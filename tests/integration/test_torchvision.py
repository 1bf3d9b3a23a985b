"""detloss.integrations.torchvision against the real torchvision.ops: random pairs and torchvision's own cases.

The cases and their expected values are those of torchvision's test suite (test/test_ops.py:
TestBoxIou, TestGeneralizedBoxIou, TestDistanceBoxIoU, TestCompleteBoxIou, the IoU-loss tests
on four unit boxes, TestFocalLoss), with its tolerances.
"""

from __future__ import annotations

import inspect
import math

import pytest

from tests.integration.conftest import INSTALL_HINT

pytest.importorskip("torchvision", reason=f"torchvision {INSTALL_HINT}")

import torch
from torchvision import ops

from detloss import functional as F
from detloss.boxes import pairwise_iou
from detloss.integrations import torchvision as dltv
from detloss.testing import random_boxes

PAIRWISE = ("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou")
LOSSES = ("generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss")
DTYPES = (torch.float32, torch.float64)
#: Relative tolerance per dtype: detloss's extra eps in unions (< 1e-7 relative here) and float rounding.
RTOL = {torch.float32: 2e-5, torch.float64: 1e-6}


def _pairs(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid boxes (sides 1 to 50 pixels) and, for every other pair, a box near it (most overlap)."""
    g = torch.Generator().manual_seed(seed)
    a, b = random_boxes(n, generator=g), random_boxes(n, generator=g)
    near = a + (torch.rand(n, 4, generator=g, dtype=torch.float64) - 0.5) * 4
    near = torch.cat([torch.minimum(near[:, :2], near[:, 2:] - 0.5), torch.maximum(near[:, 2:], near[:, :2] + 0.5)], 1)
    b[::2] = near[::2]
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("name", [*PAIRWISE, *LOSSES, "sigmoid_focal_loss"])
def test_same_signature_as_torchvision(name: str) -> None:
    ours, theirs = inspect.signature(getattr(dltv, name)), inspect.signature(getattr(ops, name))
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        (p.name, p.default) for p in theirs.parameters.values()
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_equals_torchvision_on_2000_random_pairs(name: str, dtype: torch.dtype) -> None:
    a, b = _pairs(50, dtype)
    b = b[:40]  # 50 x 40 = 2,000 pairs
    expected = getattr(ops, name)(a, b)
    got = getattr(dltv, name)(a, b)
    assert got.dtype == expected.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    kind = {"box_iou": "iou", "generalized_box_iou": "giou", "distance_box_iou": "diou", "complete_box_iou": "ciou"}
    torch.testing.assert_close(pairwise_iou(a, b, kind[name]), expected, rtol=RTOL[dtype], atol=RTOL[dtype])


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_iou_formats_equal_torchvision(fmt: str) -> None:
    a, b = _pairs(50, torch.float64)
    a, b = ops.box_convert(a, "xyxy", fmt), ops.box_convert(b, "xyxy", fmt)
    torch.testing.assert_close(dltv.box_iou(a, b, fmt=fmt), ops.box_iou(a, b, fmt=fmt), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", LOSSES)
def test_losses_equal_torchvision_on_2000_random_pairs(name: str, reduction: str, dtype: torch.dtype) -> None:
    a, b = _pairs(2000, dtype)
    pred, pred_ref = a.clone().requires_grad_(), a.clone().requires_grad_()
    got = getattr(dltv, name)(pred, b, reduction=reduction)
    expected = getattr(ops, name)(pred_ref, b, reduction=reduction)
    torch.testing.assert_close(got, expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    got.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(pred.grad, pred_ref.grad, rtol=1e-4, atol=RTOL[dtype])
    direct = {"generalized_box_iou_loss": F.giou_loss, "distance_box_iou_loss": F.diou_loss}.get(name, F.ciou_loss)
    torch.testing.assert_close(direct(a, b, reduction=reduction), expected.detach(), rtol=RTOL[dtype], atol=RTOL[dtype])


def _focal_inputs(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's focal-loss inputs: logits of probabilities small, large and anywhere, targets 0, 1, mixed."""
    g = torch.Generator().manual_seed(seed)
    ranges = {"small": (0.0, 0.2), "big": (0.8, 1.0), "random": (0.0, 1.0)}
    inputs, targets = [], []
    for p_range in ranges.values():
        for target in ("zeros", "ones", "binary"):
            p = p_range[0] + (p_range[1] - p_range[0]) * torch.rand(5, 2, generator=g, dtype=torch.float64)
            p = p.clamp(1e-6, 1 - 1e-6)
            inputs.append(torch.log(p / (1 - p)))
            t = {"zeros": torch.zeros(5, 2), "ones": torch.ones(5, 2)}.get(target)
            targets.append(torch.randint(0, 2, (5, 2), generator=g).double() if t is None else t.double())
    return torch.cat(inputs).to(dtype), torch.cat(targets).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("gamma", [0, 2])
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.58, 1.0])  # torchvision's test values; -1: no alpha
def test_sigmoid_focal_loss_equals_torchvision(alpha: float, gamma: float, reduction: str, dtype: torch.dtype) -> None:
    inputs, targets = _focal_inputs(dtype, seed=int(100 * abs(alpha)) + gamma)
    random = torch.randn(2000, dtype=dtype)  # and 2,000 random logits against soft targets
    soft = torch.rand(2000, dtype=dtype)
    for x, t in ((inputs, targets), (random, soft)):
        expected = ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
        torch.testing.assert_close(
            dltv.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction), expected, rtol=1e-5, atol=1e-6
        )


# ---------------------------------------------------------------- torchvision's own cases

INT_BOXES = [[0, 0, 100, 100], [0, 0, 50, 50], [200, 200, 300, 300], [0, 0, 25, 25]]
INT_BOXES2 = [[0, 0, 100, 100], [0, 0, 50, 50], [200, 200, 300, 300]]
FLOAT_BOXES = [
    [285.3538, 185.5758, 1193.5110, 851.4551],
    [285.1472, 188.7374, 1192.4984, 851.0669],
    [279.2440, 197.9812, 1189.4746, 849.2019],
]
FLOAT_EXPECTED = [[1.0, 0.9933, 0.9673], [0.9933, 1.0, 0.9737], [0.9673, 0.9737, 1.0]]
DISTANCE_EXPECTED = [
    [1.0, 0.1875, -0.4444],
    [0.1875, 1.0, -0.5625],
    [-0.4444, -0.5625, 1.0],
    [-0.0781, 0.1875, -0.6267],
]
INT_EXPECTED = {
    "box_iou": [[1.0, 0.25, 0.0], [0.25, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0625, 0.25, 0.0]],
    "generalized_box_iou": [
        [1.0, 0.25, -0.7778],
        [0.25, 1.0, -0.8611],
        [-0.7778, -0.8611, 1.0],
        [0.0625, 0.25, -0.8819],
    ],
    "distance_box_iou": DISTANCE_EXPECTED,
    "complete_box_iou": DISTANCE_EXPECTED,  # torchvision's boxes are squares: no aspect term
}


@pytest.mark.parametrize("name", PAIRWISE)
def test_torchvision_pairwise_cases(name: str) -> None:
    for dtype in (torch.int16, torch.int32, torch.int64):
        a, b = torch.tensor(INT_BOXES, dtype=dtype), torch.tensor(INT_BOXES2, dtype=dtype)
        expected = torch.tensor(INT_EXPECTED[name])
        torch.testing.assert_close(getattr(dltv, name)(a, b), expected, rtol=0.0, atol=1e-4, check_dtype=False)
    for dtype in DTYPES:
        boxes = torch.tensor(FLOAT_BOXES, dtype=dtype)
        got = getattr(dltv, name)(boxes, boxes)
        torch.testing.assert_close(got, torch.tensor(FLOAT_EXPECTED), rtol=0.0, atol=1e-3, check_dtype=False)
        torch.testing.assert_close(got, getattr(ops, name)(boxes, boxes), rtol=1e-5, atol=1e-6)


def _unit_boxes(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    box1 = torch.tensor([-1, -1, 1, 1], dtype=dtype)
    box2 = torch.tensor([0, 0, 1, 1], dtype=dtype)
    box3 = torch.tensor([0, 1, 1, 2], dtype=dtype)
    box4 = torch.tensor([1, 1, 2, 2], dtype=dtype)
    return box1, box2, box3, box4, torch.stack([box2, box2]), torch.stack([box3, box4])


#: (first, second, expected loss) on torchvision's unit boxes; batched: (sum, mean).
LOSS_CASES = {
    "generalized_box_iou_loss": ([(0, 0, 0.0), (0, 1, 0.75), (1, 2, 1.0), (1, 3, 1.5)], (2.5, 1.25)),
    "distance_box_iou_loss": ([(0, 0, 0.0), (0, 1, 0.8125), (0, 2, 1.1923), (0, 3, 1.25)], (2.45, 1.225)),
    "complete_box_iou_loss": ([(0, 0, 0.0), (0, 1, 0.8125), (0, 2, 1.1923), (0, 3, 1.25)], (2.45, 1.225)),
}


#: torchvision compares these with assert_close's float32 tolerance; half inputs are computed in float32 here.
TV_TOLERANCE = dict(rtol=1.3e-6, atol=1e-4, check_dtype=False)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.half])
@pytest.mark.parametrize("name", LOSSES)
def test_torchvision_loss_cases(name: str, dtype: torch.dtype) -> None:
    boxes = _unit_boxes(dtype)
    fn = getattr(dltv, name)
    pairs, (total, mean) = LOSS_CASES[name]
    for i, j, expected in pairs:
        torch.testing.assert_close(fn(boxes[i], boxes[j]), torch.tensor(expected), **TV_TOLERANCE)
    torch.testing.assert_close(fn(boxes[4], boxes[5], reduction="sum"), torch.tensor(total), **TV_TOLERANCE)
    torch.testing.assert_close(fn(boxes[4], boxes[5], reduction="mean"), torch.tensor(mean), **TV_TOLERANCE)
    with pytest.raises(ValueError):  # torchvision: ValueError for an unknown reduction; ours is a DetLossError
        fn(boxes[4], boxes[5], reduction="xyz")


@pytest.mark.parametrize("dtype", [*DTYPES, torch.half])
@pytest.mark.parametrize("name", LOSSES)
def test_torchvision_empty_input_case(name: str, dtype: torch.dtype) -> None:
    box1 = torch.randn(0, 4, dtype=dtype).requires_grad_()
    box2 = torch.randn(0, 4, dtype=dtype).requires_grad_()
    loss = getattr(dltv, name)(box1, box2, reduction="mean")
    loss.backward()
    assert float(loss.detach()) == 0.0 and box1.grad is not None and box2.grad is not None
    assert getattr(dltv, name)(box1, box2, reduction="none").numel() == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_torchvision_focal_equals_bce_without_alpha_and_gamma(dtype: torch.dtype) -> None:
    inputs, targets = _focal_inputs(dtype, seed=2)
    x1, x2 = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    focal = dltv.sigmoid_focal_loss(x1, targets, alpha=-1, gamma=0, reduction="mean")
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x2, targets, reduction="mean")
    torch.testing.assert_close(focal, bce)
    focal.backward()
    bce.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


# ---------------------------------------------------------------- where the values differ, and why


def test_zero_height_box_nan_in_torchvision_finite_here() -> None:
    point = torch.tensor([[2.0, 2.0, 2.0, 2.0]])  # w = h = 0: atan(0 / 0)
    flat = torch.tensor([[0.0, 1.0, 3.0, 1.0]], requires_grad=True)  # h = 0: atan(3 / 0), gradient 0 * inf
    target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    assert math.isnan(float(ops.complete_box_iou_loss(point, target)))
    ours = dltv.complete_box_iou_loss(point, target)
    assert math.isfinite(float(ours))
    ops.complete_box_iou_loss(flat, target).sum().backward()
    assert bool(torch.isnan(flat.grad).any())
    flat.grad = None
    dltv.complete_box_iou_loss(flat, target).sum().backward()
    assert bool(torch.isfinite(flat.grad).all())


def test_two_zero_area_boxes_nan_in_torchvision_finite_here() -> None:
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert math.isnan(float(ops.box_iou(point, point))) and math.isnan(float(ops.generalized_box_iou(point, point)))
    assert float(dltv.box_iou(point, point)) == 0.0 and float(dltv.generalized_box_iou(point, point)) == 0.0


def test_complete_box_iou_loss_eps_reaches_the_distance_term() -> None:
    """torchvision passes eps to the aspect term only; detloss uses it everywhere (the enclosing diagonal)."""
    a = torch.tensor([[0.0, 0.0, 1e-3, 1e-3]], dtype=torch.float64)
    b = torch.tensor([[2e-3, 0.0, 3e-3, 1e-3]], dtype=torch.float64)
    eps = 1e-6
    diou_part = ops.distance_box_iou_loss(a, b, eps=eps)  # the DIoU term with the caller's eps
    assert float(dltv.complete_box_iou_loss(a, b, eps=eps)) == pytest.approx(float(diou_part), rel=1e-9)
    assert float(ops.complete_box_iou_loss(a, b, eps=eps)) != pytest.approx(float(diou_part), rel=1e-3)


def test_empty_focal_mean_nan_in_torchvision_zero_here() -> None:
    empty = torch.zeros(0, 3)
    assert math.isnan(float(ops.sigmoid_focal_loss(empty, empty, reduction="mean")))
    assert float(dltv.sigmoid_focal_loss(empty, empty, reduction="mean")) == 0.0

"""The IoU kernel: hand-derived goldens, an independent float64 reference, properties."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detloss.boxes import IOU_KINDS, aligned_iou, pairwise_iou
from detloss.boxes import iou as kernel
from detloss.errors import DetLossError
from tests.reference import ref_similarity

# Goldens, xyxy, (pred, target). Arithmetic by hand; atan 2 = 1.1071487, atan(2/3) = 0.5880026.
# A  partly overlapping: pred 4x2 at (0,0), target 3x3 at (2,1).
#    inter 2 x 1 = 2, union 8 + 9 - 2 = 15: IoU 2/15 = 0.133333
#    enclosing 5 x 4 = 20: GIoU = 2/15 - 5/20 = -0.116667
#    centres (2,1), (3.5,2.5): rho^2 = 4.5, c^2 = 25 + 16 = 41: DIoU = 2/15 - 4.5/41 = 0.023577
#    v = 4/pi^2 (atan 1 - atan 2)^2 = 0.041956, alpha = v / (13/15 + v) = 0.046176: CIoU 0.021640
#    EIoU = DIoU - (4-3)^2/25 - (2-3)^2/16 = -0.078923
#    SIoU: dx = dy = 1.5, Lambda = 2*1.5*1.5/4.5 = 1, gamma 1; rho_x = (1.5/5)^2 = 0.09,
#      rho_y = (1.5/4)^2 = 0.140625: Delta = (1 - e^-0.09) + (1 - e^-0.140625) = 0.217255;
#      omega_w = 1/4, omega_h = 1/3: Omega = (1 - e^-0.25)^4 + (1 - e^-1/3)^4 = 0.008851
#      SIoU = 2/15 - (0.217255 + 0.008851)/2 = 0.020280
# B  disjoint: pred 2x1 at (0,0), target 2x3 at (4,0). IoU 0; enclosing 6x3 = 18, union 8:
#    GIoU -10/18 = -0.555556; rho^2 = 4^2 + 1^2 = 17, c^2 = 45: DIoU -0.377778;
#    v = 4/pi^2 (atan(2/3) - atan 2)^2 = 0.109229, alpha = v/(1+v): CIoU -0.388534;
#    EIoU = DIoU - 0/36 - (1-3)^2/9 = -0.822222
# C  nested: pred 2x1 at (1,1) inside target 4x4 at (0,0). IoU 2/16 = GIoU = 0.125;
#    rho^2 = 0.25, c^2 = 32: DIoU 0.117188; v = 0.041956, alpha = v/(0.875+v): CIoU 0.115268;
#    EIoU = DIoU - 4/16 - 9/16 = -0.695313; SIoU: dx 0, dy 0.5, Lambda 0, gamma 2,
#    Delta = 1 - e^(-2 (0.5/4)^2) = 0.030767, Omega = (1-e^-0.5)^4 + (1-e^-0.75)^4 = 0.101472
#    SIoU = 0.125 - 0.066119 = 0.058881
# D  touching edges: pred 2x1 at (0,0), target 3x1 at (2,0). IoU 0; enclosing 5x1 = union 5:
#    GIoU 0; rho^2 = 2.5^2 = 6.25, c^2 = 26: DIoU -0.240385
# E  identical 3x1 boxes: every kind 1.
GOLDEN = {
    "A": (
        (0, 0, 4, 2),
        (2, 1, 5, 4),
        {"iou": 0.133333, "giou": -0.116667, "diou": 0.023577, "ciou": 0.021640, "eiou": -0.078923, "siou": 0.020280},
    ),
    "B": (
        (0, 0, 2, 1),
        (4, 0, 6, 3),
        {"iou": 0.0, "giou": -0.555556, "diou": -0.377778, "ciou": -0.388534, "eiou": -0.822222},
    ),
    "C": (
        (1, 1, 3, 2),
        (0, 0, 4, 4),
        {"iou": 0.125, "giou": 0.125, "diou": 0.117188, "ciou": 0.115268, "eiou": -0.695313, "siou": 0.058881},
    ),
    "D": ((0, 0, 2, 1), (2, 0, 5, 1), {"iou": 0.0, "giou": 0.0, "diou": -0.240385}),
    "E": ((0, 0, 3, 1), (0, 0, 3, 1), dict.fromkeys(IOU_KINDS, 1.0)),
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_values(case: str) -> None:
    pred, target, expected = GOLDEN[case]
    for kind, value in expected.items():
        got = aligned_iou(torch.tensor(pred, dtype=torch.float64), torch.tensor(target, dtype=torch.float64), kind)
        assert got.item() == pytest.approx(value, abs=2e-6), kind


def test_goldens_tell_the_kinds_apart() -> None:
    _, _, values = GOLDEN["A"]
    assert len({round(v, 4) for v in values.values()}) == len(values)


def random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, 2, generator=g, dtype=torch.float64) * 20
    size = 0.2 + torch.rand(n, 2, 2, generator=g, dtype=torch.float64) * 10
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=-1)
    return boxes[:, 0], boxes[:, 1]


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_matches_independent_reference_on_random_pairs(kind: str) -> None:
    pred, target = random_pairs(2000, seed=7)
    got = aligned_iou(pred, target, kind)
    pairs = zip(pred.tolist(), target.tolist())
    ref = torch.tensor([ref_similarity(tuple(p), tuple(t), kind) for p, t in pairs], dtype=torch.float64)
    # SIoU's angle cost is 2|dx dy| / (rho^2 + eps) in the kernel and the paper's arcsin form
    # (no eps) in the reference: they differ by ~eps / rho^2 for nearly concentric pairs.
    tol = 1e-7 if kind == "siou" else 1e-9
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_pairwise_equals_loop_over_aligned(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = random_pairs(23, seed=1)
    _, b = random_pairs(17, seed=2)
    monkeypatch.setattr(kernel, "PAIRWISE_BLOCK", 40)  # several blocks of 2 rows
    matrix = pairwise_iou(a, b, kind)
    assert matrix.shape == (23, 17)
    loop = torch.stack([aligned_iou(a[i].expand(17, 4), b, kind) for i in range(23)])
    torch.testing.assert_close(matrix, loop, atol=1e-14, rtol=1e-14)


def test_pairwise_keeps_gradients_and_handles_empty() -> None:
    a, b = random_pairs(5, seed=3)
    a.requires_grad_(True)
    pairwise_iou(a, b, "giou").sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    assert pairwise_iou(a.detach()[:0], b).shape == (0, 5)
    assert pairwise_iou(a.detach(), b[:0]).shape == (5, 0)


@pytest.mark.parametrize("kind", [k for k in IOU_KINDS if k != "ciou"])
def test_gradcheck_float64(kind: str) -> None:
    pred, target = random_pairs(6, seed=11)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: aligned_iou(p, target, kind), (pred,), eps=1e-6, atol=1e-6)


def test_ciou_gradient_holds_alpha_constant() -> None:
    """CIoU's alpha is a constant in the gradient (AAAI 2020): compare with finite differences
    of the reference formula in which alpha is frozen at the base point."""
    pred, target = random_pairs(1, seed=5)
    p = pred[0].tolist()
    t = tuple(target[0].tolist())
    eps = 1e-7

    def frozen(q: list[float], alpha: float) -> float:
        pw, ph, tw, th = q[2] - q[0], q[3] - q[1], t[2] - t[0], t[3] - t[1]
        v = 4 / math.pi**2 * (math.atan((tw + eps) / (th + eps)) - math.atan((pw + eps) / (ph + eps))) ** 2
        return ref_similarity(tuple(q), t, "diou") - alpha * v

    iou = ref_similarity(tuple(p), t, "iou")
    pw, ph, tw, th = p[2] - p[0], p[3] - p[1], t[2] - t[0], t[3] - t[1]
    v = 4 / math.pi**2 * (math.atan((tw + eps) / (th + eps)) - math.atan((pw + eps) / (ph + eps))) ** 2
    alpha = v / (1 - iou + v + eps)
    expected = []
    for i in range(4):
        hi, lo = list(p), list(p)
        hi[i] += 1e-6
        lo[i] -= 1e-6
        expected.append((frozen(hi, alpha) - frozen(lo, alpha)) / 2e-6)
    leaf = pred.clone().requires_grad_(True)
    aligned_iou(leaf, target, "ciou").sum().backward()
    assert leaf.grad is not None
    torch.testing.assert_close(leaf.grad[0], torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- properties (hypothesis)

coord = st.floats(min_value=-50, max_value=50, allow_nan=False)
side = st.floats(min_value=0.05, max_value=40, allow_nan=False)


@st.composite
def box(draw: st.DrawFn) -> torch.Tensor:
    x, y, w, h = draw(coord), draw(coord), draw(side), draw(side)
    return torch.tensor([x, y, x + w, y + h], dtype=torch.float64)


@given(box(), box())
def test_bounds_and_symmetry(a: torch.Tensor, b: torch.Tensor) -> None:
    iou = aligned_iou(a, b, "iou").item()
    assert 0.0 <= iou <= 1.0
    giou = aligned_iou(a, b, "giou").item()
    assert -1.0 < giou <= 1.0 and giou <= iou + 1e-12
    for kind in IOU_KINDS:
        assert aligned_iou(a, b, kind).item() == pytest.approx(aligned_iou(b, a, kind).item(), abs=1e-12)


@given(box(), box(), coord, coord, st.floats(min_value=0.1, max_value=10))
def test_translation_and_scale_invariance(a: torch.Tensor, b: torch.Tensor, dx: float, dy: float, s: float) -> None:
    shift = torch.tensor([dx, dy, dx, dy], dtype=torch.float64)
    for kind in IOU_KINDS:
        base = aligned_iou(a, b, kind, eps=1e-12).item()
        assert aligned_iou(a + shift, b + shift, kind, eps=1e-12).item() == pytest.approx(base, abs=1e-7)
        assert aligned_iou(a * s, b * s, kind, eps=1e-12).item() == pytest.approx(base, abs=1e-7)


@given(box(), coord, coord, st.floats(min_value=0.1, max_value=10))
def test_ciou_equals_diou_at_equal_aspect_ratio(a: torch.Tensor, dx: float, dy: float, s: float) -> None:
    x1, y1, x2, y2 = a.tolist()
    b = torch.tensor([x1 + dx, y1 + dy, x1 + dx + s * (x2 - x1), y1 + dy + s * (y2 - y1)], dtype=torch.float64)
    assert aligned_iou(a, b, "ciou").item() == pytest.approx(aligned_iou(a, b, "diou").item(), abs=1e-9)


@given(box(), st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1), st.floats(0.01, 1))
def test_giou_equals_iou_when_nested(outer: torch.Tensor, fx: float, fy: float, fw: float, fh: float) -> None:
    x1, y1, x2, y2 = outer.tolist()
    w, h = (x2 - x1) * fw, (y2 - y1) * fh
    left, top = x1 + fx * (x2 - x1 - w), y1 + fy * (y2 - y1 - h)
    inner = torch.tensor([left, top, left + w, top + h], dtype=torch.float64)
    assert aligned_iou(inner, outer, "giou").item() == pytest.approx(aligned_iou(inner, outer, "iou").item(), abs=1e-9)


# ---------------------------------------------------------------- degenerate input


DEGENERATE = torch.tensor(
    [
        [[1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 4.0, 4.0]],  # zero width
        [[1.0, 1.0, 5.0, 1.0], [0.0, 0.0, 4.0, 4.0]],  # zero height
        [[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]],  # identical points
        [[3.0, 3.0, 1.0, 1.0], [0.0, 0.0, 4.0, 4.0]],  # inverted
        [[0.0, 0.0, 1e-6, 2e-6], [0.0, 0.0, 2e-6, 1e-6]],  # tiny
        [[0.0, 0.0, 1e5, 3e5], [5e4, 0.0, 2e5, 1e5]],  # huge
        [[0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 4.0, 2.0]],  # identical
    ]
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", IOU_KINDS)
def test_degenerate_boxes_give_finite_values_and_gradients(kind: str, dtype: torch.dtype) -> None:
    boxes = DEGENERATE if dtype in (torch.float64, torch.float32) else DEGENERATE[:4]
    pred = boxes[:, 0].to(dtype).requires_grad_(True)
    out = aligned_iou(pred, boxes[:, 1].to(dtype), kind)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_300_pixel_boxes_do_not_overflow(dtype: torch.dtype) -> None:
    pred = torch.tensor([[10.0, 20.0, 310.0, 330.0]])
    target = torch.tensor([[40.0, 10.0, 350.0, 300.0]])
    ref = aligned_iou(pred.to(dtype).double(), target.to(dtype).double(), "ciou")
    got = aligned_iou(pred.to(dtype), target.to(dtype), "ciou")
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-6)


def test_empty_input() -> None:
    pred = torch.zeros(0, 4, requires_grad=True)
    out = aligned_iou(pred, torch.zeros(0, 4), "ciou")
    assert out.shape == (0,)
    out.sum().backward()


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: aligned_iou(torch.zeros(3, 5), torch.zeros(3, 5)), "pred"),
        (lambda: aligned_iou(torch.zeros(3, 4), torch.zeros(2, 4)), "target"),
        (lambda: aligned_iou(torch.zeros(3, 4), torch.zeros(3, 4), "kiou"), "kind"),
        (lambda: aligned_iou(torch.zeros(3, 4), torch.zeros(3, 4), box_format="yxyx"), "box_format"),
        (lambda: aligned_iou(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4)), "pred"),
        (lambda: aligned_iou(torch.zeros(3, 4), torch.zeros(3, 4), eps=0.0), "eps"),
        (lambda: pairwise_iou(torch.zeros(2, 3, 4), torch.zeros(3, 4)), "boxes1"),
    ],
)
def test_bad_input_names_the_argument(call: object, argument: str) -> None:
    with pytest.raises(DetLossError, match=f"`{argument}`"):
        call()  # type: ignore[operator]


def test_pairwise_memory_is_bounded() -> None:
    """3,000 x 20,000 DIoU: the result is 240 MB; without blocks the intermediates would be
    several GB. Peak RSS growth must stay under 1.2 GB (measured in a fresh process)."""
    code = textwrap.dedent(
        """
        import resource, torch
        from detloss.boxes import pairwise_iou
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(0)
        a = torch.rand(3000, 4, generator=g).sort(dim=-1).values.index_select(1, torch.tensor([0, 1, 2, 3]))
        b = torch.rand(20000, 4, generator=g).sort(dim=-1).values
        a = torch.cat((a[:, :2], a[:, :2] + a[:, 2:]), dim=-1)
        b = torch.cat((b[:, :2], b[:, :2] + b[:, 2:]), dim=-1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = pairwise_iou(a, b, "diou")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert out.shape == (3000, 20000) and bool(torch.isfinite(out).all())
        print((after - before) * 1024)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    growth = int(result.stdout.strip().splitlines()[-1])
    assert growth < 1.2e9, growth


def test_the_kernel_raises_for_an_unknown_kind() -> None:
    """No silent fallthrough to CIoU: a misspelt kind is an error naming it."""
    from detloss.boxes.iou import box_similarity

    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    with pytest.raises(DetLossError, match=r"box_similarity\(\).*`kind`.*'cio'"):
        box_similarity(boxes, boxes, "cio", 1e-7)


def test_iou_kinds_have_one_source() -> None:
    from typing import get_args

    from detloss._typing import IoUKind

    assert IOU_KINDS == get_args(IoUKind) == ("iou", "giou", "diou", "ciou", "eiou", "siou")

"""Rotated boxes: exact IoU / GIoU against shapely's polygon areas, the degenerate cases,
pairwise == aligned, invariances, the axis-aligned limit, formats, NMS, Gaussian distances
against explicit 2 x 2 matrix algebra, KFIoU against its paper's definition, gradients.

The references here never call detloss: corners come from the definition
``c + R(a) (+-w/2, +-h/2)``, areas from shapely (float64 GEOS), matrices from plain algebra.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from detloss import functional as F
from detloss.boxes import (
    aligned_iou,
    convert_rotated,
    gaussian_distance,
    kfiou,
    pairwise_rotated_iou,
    rotated_iou,
    rotated_nms,
    rotated_outline,
)
from detloss.boxes import rotated as kernel
from detloss.errors import DetLossError

# ---------------------------------------------------------------- references


def corners(box: list[float], degrees: bool = False) -> list[tuple[float, float]]:
    """``c + R(a) (sx w/2, sy h/2)``, R(a) = [[cos a, -sin a], [sin a, cos a]]; sides clamped at 0."""
    cx, cy, w, h, a = box
    a = math.radians(a) if degrees else a
    w, h = max(w, 0.0), max(h, 0.0)
    out = []
    for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
        x, y = sx * w / 2, sy * h / 2
        out.append((cx + math.cos(a) * x - math.sin(a) * y, cy + math.sin(a) * x + math.cos(a) * y))
    return out


def shapely_iou(p: list[float], t: list[float], kind: str = "iou", degrees: bool = False) -> float:
    """IoU or GIoU (hull of the eight corners) from shapely's exact polygon areas."""
    a, b = Polygon(corners(p, degrees)), Polygon(corners(t, degrees))
    inter = a.intersection(b).area
    union = a.area + b.area - inter
    iou = inter / union if union > 0 else 0.0
    if kind == "iou":
        return iou
    hull = Polygon(corners(p, degrees) + corners(t, degrees)).convex_hull.area
    return iou - (hull - union) / hull if hull > 0 else iou


def random_pairs(n: int, seed: int, spread: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated pairs: sides log-uniform in [0.1, 10], any angles, centres that mostly overlap."""
    g = torch.Generator().manual_seed(seed)
    sides = torch.exp(torch.rand(n, 2, 2, generator=g, dtype=torch.float64) * math.log(100.0)) * 0.1
    angle = (torch.rand(n, 2, 1, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    centre = torch.rand(n, 1, 2, generator=g, dtype=torch.float64) * 20 - 10
    reach = spread * sides.max(dim=1, keepdim=True).values
    shift = (torch.rand(n, 2, 2, generator=g, dtype=torch.float64) - 0.5) * reach
    boxes = torch.cat((centre + shift, sides, angle), dim=-1)
    return boxes[:, 0], boxes[:, 1]


def in_degrees(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat((boxes[:, :4], torch.rad2deg(boxes[:, 4:])), dim=-1)


def sigma(box: list[float], k: float) -> np.ndarray:
    """``R diag(w^2, h^2) R^T / k``."""
    _, _, w, h, a = box
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return r @ np.diag([w * w, h * h]) @ r.T / k


def ref_gaussian(p: list[float], t: list[float], kind: str) -> float:
    delta = np.array(p[:2]) - np.array(t[:2])
    if kind == "bhattacharyya":
        sp, st = sigma(p, 12), sigma(t, 12)
        s = (sp + st) / 2
        return float(
            delta @ np.linalg.inv(s) @ delta / 8
            + 0.5 * math.log(np.linalg.det(s) / math.sqrt(np.linalg.det(sp) * np.linalg.det(st)))
        )
    sp, st = sigma(p, 4), sigma(t, 4)
    if kind == "kld":  # KL(N_t || N_p)
        inv = np.linalg.inv(sp)
        return float(
            0.5 * (np.trace(inv @ st) + delta @ inv @ delta - 2 + math.log(np.linalg.det(sp) / np.linalg.det(st)))
        )
    root = psd_sqrt(sp)
    return float(delta @ delta + np.trace(sp) + np.trace(st) - 2 * np.trace(psd_sqrt(root @ st @ root)))


def psd_sqrt(m: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix, from its eigenvectors."""
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    return vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T


def ref_kfiou(p: list[float], t: list[float]) -> float:
    """The paper's definition: Kalman gain, overlap covariance, volumes 4 sqrt(det)."""
    sp, st = sigma(p, 4), sigma(t, 4)
    gain = sp @ np.linalg.inv(sp + st)
    overlap = sp - gain @ sp
    vp, vt, vo = (4 * math.sqrt(np.linalg.det(m)) for m in (sp, st, overlap))
    return vo / (vp + vt - vo)


# ---------------------------------------------------------------- against shapely

EPS = {torch.float64: 1e-300, torch.float32: 1e-30}  # far below every area here


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_5000_random_pairs_against_shapely(kind: str) -> None:
    """Max abs error in float64 is at rounding level (~1e-15), in float32 a few 1e-7."""
    pred, target = random_pairs(5000, seed=17)
    ref = torch.tensor([shapely_iou(p, t, kind) for p, t in zip(pred.tolist(), target.tolist())], dtype=torch.float64)
    if kind == "iou":
        assert 0.7 < (ref > 0).double().mean() < 1.0  # mostly overlapping, some disjoint
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 5e-6)):
        got = rotated_iou(pred.to(dtype), target.to(dtype), kind, eps=EPS[dtype])
        # float32: compare with shapely on the rounded inputs
        exact = ref if dtype == torch.float64 else torch.tensor(
            [shapely_iou(p, t, kind) for p, t in zip(pred.float().double().tolist(), target.float().double().tolist())],
            dtype=torch.float64,
        )
        assert (got.double() - exact).abs().max().item() < tol


def test_disjoint_far_and_thin_pairs_against_shapely() -> None:
    g = torch.Generator().manual_seed(5)
    n = 300
    long = torch.exp(torch.rand(n, 1, generator=g, dtype=torch.float64) * 4)
    thin = long / torch.exp(torch.rand(n, 1, generator=g, dtype=torch.float64) * 9)  # ratios up to 8000
    angle = (torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    turn = torch.exp(-torch.rand(n, 1, generator=g, dtype=torch.float64) * 25) * torch.where(angle > 0, 1.0, -1.0)
    centre = 1e5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 10  # far from the origin
    target = torch.cat((centre, long, thin, angle), dim=-1)
    shift = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * long * 0.5
    pred = torch.cat((centre + shift, long * 0.9, thin * 1.3, angle + turn), dim=-1)  # nearly parallel
    ref = torch.tensor([shapely_iou(p, t) for p, t in zip(pred.tolist(), target.tolist())], dtype=torch.float64)
    got = rotated_iou(pred, target, eps=1e-300)
    # shapely works at the absolute coordinates (1e5), so its own rounding is ~1e-11 here
    assert (got - ref).abs().max().item() < 1e-8


# ---------------------------------------------------------------- the degenerate cases

SQ = [0.0, 0.0, 2.0, 2.0, 0.0]
DEGENERATE = {
    # name: (pred, target, iou, giou) -- values by hand
    "identical": ([3.0, 4.0, 5.0, 2.0, 0.3], [3.0, 4.0, 5.0, 2.0, 0.3], 1.0, 1.0),
    "identical upright": ([3.0, 4.0, 5.0, 2.0, 0.0], [3.0, 4.0, 5.0, 2.0, 0.0], 1.0, 1.0),
    # a square turned by pi/2, a rectangle turned by pi, sides swapped and turned by pi/2: the same box
    "square turned pi/2": ([1.0, 1.0, 3.0, 3.0, 0.2], [1.0, 1.0, 3.0, 3.0, 0.2 + math.pi / 2], 1.0, 1.0),
    "rectangle turned pi": ([1.0, 1.0, 3.0, 2.0, 0.2], [1.0, 1.0, 3.0, 2.0, 0.2 + math.pi], 1.0, 1.0),
    "sides swapped": ([1.0, 1.0, 3.0, 2.0, 0.2], [1.0, 1.0, 2.0, 3.0, 0.2 - math.pi / 2], 1.0, 1.0),
    # sharing an edge from outside: IoU 0 (not 1/3); hull = union (a 4 x 2 rectangle)
    "shared edge upright": (SQ, [2.0, 0.0, 2.0, 2.0, 0.0], 0.0, 0.0),
    "shared edge turned": ([0, 0, 2, 2, 0.4], [2 * math.cos(0.4), 2 * math.sin(0.4), 2, 2, 0.4], 0.0, 0.0),
    # overlapping along a shared line, top and bottom sides collinear with the same normal:
    # counted twice, the shared sides would make it 3/5 (upright and turned)
    "collinear sides": ([1.0, 0.0, 2.0, 2.0, 0.0], [2.0, 0.0, 2.0, 2.0, 0.0], 1 / 3, 1 / 3),
    "collinear sides turned": ([0.0, 0.0, 2.0, 2.0, 0.4], [math.cos(0.4), math.sin(0.4), 2.0, 2.0, 0.4], 1 / 3, 1 / 3),
    # nested, sharing a side: 2 x 2 inside 4 x 2
    "nested sharing a side": ([1.0, 0.0, 2.0, 2.0, 0.0], [0.0, 0.0, 4.0, 2.0, 0.0], 0.5, 0.5),
    # touching at a corner: hull (0,0),(2,0),(4,2),(4,4),(2,4),(0,2) of area 12 against union 8
    "corner touching": ([1.0, 1.0, 2.0, 2.0, 0.0], [3.0, 3.0, 2.0, 2.0, 0.0], 0.0, -1 / 3),
    # zero area: IoU 0, and the hull is the square's
    "zero width": ([0.0, 0.0, 0.0, 2.0, 0.3], SQ, 0.0, 0.0),
    "point": ([0.5, 0.5, 0.0, 0.0, 0.0], SQ, 0.0, 0.0),
    "negative width counts as 0": ([0.0, 0.0, -1.0, 2.0, 0.3], SQ, 0.0, 0.0),
    "two identical segments": ([0.0, 0.0, 0.0, 2.0, 0.3], [0.0, 0.0, 0.0, 2.0, 0.3], 0.0, 0.0),
    # 45 degrees: the overlap is the regular octagon of inradius 1, area 8 tan(pi/8), so IoU is
    # 1/sqrt(2); the hull is the regular octagon of circumradius sqrt(2), area 4 sqrt(2)
    "square at 45 degrees": (
        SQ,
        [0.0, 0.0, 2.0, 2.0, math.pi / 4],
        1 / math.sqrt(2),
        1 / math.sqrt(2) - (4 * math.sqrt(2) - 8 + 8 * math.tan(math.pi / 8)) / (4 * math.sqrt(2)),
    ),
}


@pytest.mark.parametrize("name", sorted(DEGENERATE))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_degenerate_cases_exact_with_finite_gradients(name: str, dtype: torch.dtype) -> None:
    pred, target, iou, giou = DEGENERATE[name]
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for kind, value in (("iou", iou), ("giou", giou)):
        p = torch.tensor(pred, dtype=dtype, requires_grad=True)
        t = torch.tensor(target, dtype=dtype, requires_grad=True)
        got = rotated_iou(p, t, kind, eps=EPS[dtype])
        assert got.item() == pytest.approx(value, abs=tol), kind
        assert got.item() == pytest.approx(shapely_iou(pred, target, kind), abs=tol), kind
        got.backward()
        assert torch.isfinite(p.grad).all() and torch.isfinite(t.grad).all(), kind


def test_failures_of_other_implementations_are_not_ours() -> None:
    """mmcv: identical -> 0.333, concentric crossed boxes -> 0 (exact 0.4058), w = 8e-7 ->
    -1.2e7; detectron2: near-identical -> 0.58; lilanxiao: shared edge -> 1/3."""
    cases = [
        ([0.0, 0.0, 5.0, 10.0, math.pi / 6], [0.0, 0.0, 10.0, 5.0, math.pi / 3]),
        ([100.0, 200.0, 30.0, 10.0, 0.5], [100.000001, 200.0, 30.0, 10.0, 0.5000001]),
        ([0.0, 0.0, 8e-7, 8e-7, 0.3], [1e-7, 0.0, 8e-7, 8e-7, 0.1]),
        ([0.0, 0.0, 5.0, 5.0, 0.1], [0.0, 0.0, 5.0, 5.0, 0.1 + 1e-12]),
    ]
    for pred, target in cases:
        for kind in ("iou", "giou"):
            got = rotated_iou(torch.tensor(pred, dtype=torch.float64), torch.tensor(target, dtype=torch.float64), kind,
                              eps=1e-300)  # fmt: skip
            assert got.item() == pytest.approx(shapely_iou(pred, target, kind), abs=1e-9)
    assert shapely_iou(*cases[0]) == pytest.approx(0.405827, abs=1e-6)
    # with the default eps, a tiny pair is eps-dominated (as aligned_iou is) but never negative
    tiny = rotated_iou(torch.tensor(cases[2][0]), torch.tensor(cases[2][1]))
    assert 0.0 <= tiny.item() < 1e-4


def test_thin_boxes_crossing_far_from_their_centres_in_float32() -> None:
    """Needles 2e4 and 1e4 long and 1e-3 thin crossing about 3000 from their centres: the
    polygon's cross products are taken about a point of the polygon, not the midpoint of the
    centres (there, float32 cancellation swamps the overlap of ~1e-6). What is left is the
    float32 position of vertices 3000 from either centre (u * 3000 = 2e-4 against sides of
    1e-3): a few percent of the overlap, 1e-9 of IoU."""
    a = [0.0, 0.0, 2e4, 1e-3, 0.0]
    turn = math.radians(80)
    b = [500.0 + 3000 * math.cos(turn), 3000 * math.sin(turn), 1e4, 1e-3, turn]
    exact = shapely_iou(a, b)
    assert 1e-8 < exact < 1e-6
    got = rotated_iou(torch.tensor(a), torch.tensor(b), eps=1e-30)
    assert got.item() == pytest.approx(exact, rel=0.1)


def test_giou_hull_of_needles_and_far_apart_boxes_in_float32() -> None:
    """The hull comes from an exact table of cross products (no corner is formed first), so
    float32 keeps a needle's width next to its length, and tiny boxes far apart their widths."""
    cases = [
        # a 1.4e5 x 0.94 needle holding a tiny box: hull = union, GIoU = IoU
        ([0.0, 0.0, 0.94, 1.4e5, -1.0], [3.5e-5, 6.4e-4, 0.033, 8e-6, -0.9]),
        # 1e-3 boxes 7e5 apart: the hull is a sliver of area ~ 7e5 * 1e-3, penalty ~ 1
        ([-3.6e5, 10.0, 1e-3, 2e-3, 0.3], [3.6e5, -10.0, 2e-3, 1e-3, -0.2]),
        # two needles crossing
        ([0.0, 0.0, 0.5, 9e4, 0.2], [10.0, 0.0, 0.3, 7e4, 1.1]),
    ]
    for pred, target in cases:
        exact = shapely_iou(pred, target, "giou")
        got = rotated_iou(torch.tensor(pred), torch.tensor(target), "giou", eps=1e-30)
        assert got.item() == pytest.approx(exact, abs=2e-6), (pred, target)


def degenerate_families(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pred, target, family)``: identical, a quarter turn of the same rectangle, a half turn,
    tiny boxes 1e5 apart, a needle next to a box, upright boxes with collinear sides, a zero
    width, angles at multiples of pi/2."""
    g = torch.Generator().manual_seed(seed)

    def draw(m: int) -> torch.Tensor:
        centre = torch.rand(m, 2, generator=g, dtype=torch.float64) * 10
        sides = torch.exp(torch.rand(m, 2, generator=g, dtype=torch.float64) * 3) * 0.5
        return torch.cat((centre, sides, (torch.rand(m, 1, generator=g, dtype=torch.float64) * 2 - 1) * math.pi), -1)

    p, t = draw(n), draw(n)
    family = torch.arange(n) % 8
    t[family == 0] = p[family == 0]
    q = family == 1
    t[q] = p[q][:, [0, 1, 3, 2, 4]] + torch.tensor([0.0, 0.0, 0.0, 0.0, math.pi / 2], dtype=torch.float64)
    q = family == 2
    t[q] = p[q] + torch.tensor([0.0, 0.0, 0.0, 0.0, math.pi], dtype=torch.float64)
    q = family == 3
    t[q, :2] = p[q, :2] + 1e5 * torch.randn(int(q.sum()), 2, generator=g, dtype=torch.float64)
    p[q, 2:4], t[q, 2:4] = p[q, 2:4] * 1e-4, t[q, 2:4] * 1e-4
    q = family == 4
    p[q, 3] = p[q, 3] * 1e4
    t[q, :2] = p[q, :2] + torch.rand(int(q.sum()), 2, generator=g, dtype=torch.float64)
    q = family == 5
    p[q, 4], t[q, 4], t[q, 3], t[q, 1] = 0.0, 0.0, p[q, 3], p[q, 1]
    p[family == 6, 2] = 0.0
    q = family == 7
    p[q, 4] = torch.randint(-4, 5, (int(q.sum()),), generator=g).double() * math.pi / 2
    t[q, 4] = torch.randint(-4, 5, (int(q.sum()),), generator=g).double() * math.pi / 2
    return p, t, family


def hull_area(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    frames = kernel.prepare_rotated_pair("test", pred, target, "cxcywha", "rad", 1e-7)
    d = 0.5 * kernel.centre_offset(*frames)
    a, b = (kernel._lines(c, f.sides, f.u) for c, f in zip((d, -d), frames))
    return kernel._hull_area(d, *frames, torch.cat((a.corners, b.corners), dim=-2))


def test_hull_of_degenerate_pairs() -> None:
    """The GIoU's hull: against shapely in float64 (except 1e5 from the origin, where shapely's
    own absolute coordinates round at 1e-7), and float32 against float64 on the same inputs."""
    pred, target, family = degenerate_families(800, seed=26)
    exact = hull_area(pred, target)
    shapely_hull = torch.tensor(
        [Polygon(corners(p) + corners(t)).convex_hull.area for p, t in zip(pred.tolist(), target.tolist())],
        dtype=torch.float64,
    )
    trusted = family != 3
    torch.testing.assert_close(exact[trusted], shapely_hull[trusted], rtol=1e-11, atol=0)
    torch.testing.assert_close(exact[~trusted], shapely_hull[~trusted], rtol=1e-5, atol=0)
    rounded = hull_area(pred.float().double(), target.float().double())
    in_float32 = hull_area(pred.float(), target.float()).double()
    assert ((in_float32 - rounded).abs() / rounded).max() < 1e-5


def test_gradients_finite_near_parallel_and_near_identical() -> None:
    """The shape derivative needs no intersection point's derivative: edges at 1e-12 rad
    from parallel give the same bounded gradient as at 1e-3 rad."""
    base = [0.0, 0.0, 10.0, 0.01, 0.3]
    grads = []
    for turn in (1e-3, 1e-6, 1e-9, 1e-12, 0.0):
        p = torch.tensor([0.5, 0.0, 9.0, 0.012, 0.3 + turn], dtype=torch.float64, requires_grad=True)
        value = rotated_iou(p, torch.tensor(base, dtype=torch.float64))
        value.backward()
        assert torch.isfinite(p.grad).all()
        grads.append(p.grad.abs().max().item())
    assert max(grads) < 1e3  # d IoU / d(side) ~ 1 / 0.01: no 1 / sin blow-up


# ---------------------------------------------------------------- pairwise, invariances, limits


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_pairwise_equals_aligned_over_all_pairs(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = random_pairs(7, seed=1)
    _, b = random_pairs(5, seed=2, spread=3.0)
    b[:, :2] = a[:5, :2] + b[:, :2] * 0.1  # some overlap
    expected = torch.stack([rotated_iou(a[i].expand(5, 5), b, kind) for i in range(7)])
    torch.testing.assert_close(pairwise_rotated_iou(a, b, kind), expected, rtol=0, atol=1e-14)
    monkeypatch.setattr(kernel, "ROTATED_PAIRWISE_BLOCK", 3)  # blocks of one row
    torch.testing.assert_close(pairwise_rotated_iou(a, b, kind), expected, rtol=0, atol=1e-14)
    assert pairwise_rotated_iou(a[:0], b).shape == (0, 5)
    pa = a.clone().requires_grad_(True)
    pairwise_rotated_iou(pa, b, kind).sum().backward()
    assert torch.isfinite(pa.grad).all()


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_invariant_under_rigid_motions_of_both_boxes(kind: str) -> None:
    pred, target = random_pairs(400, seed=3)
    base = rotated_iou(pred, target, kind, eps=1e-300)
    g = torch.Generator().manual_seed(4)
    theta = (torch.rand(400, 1, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    pivot = torch.rand(400, 2, generator=g, dtype=torch.float64) * 50
    move = torch.rand(400, 2, generator=g, dtype=torch.float64) * 100 - 50

    def rigid(b: torch.Tensor) -> torch.Tensor:
        rel = b[:, :2] - pivot
        c, s = torch.cos(theta), torch.sin(theta)
        centre = torch.cat((c * rel[:, :1] - s * rel[:, 1:], s * rel[:, :1] + c * rel[:, 1:]), -1) + pivot + move
        return torch.cat((centre, b[:, 2:4], b[:, 4:] + theta), dim=-1)

    torch.testing.assert_close(rotated_iou(rigid(pred), rigid(target), kind, eps=1e-300), base, rtol=0, atol=1e-11)


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_same_box_under_other_descriptions(kind: str) -> None:
    """``a -> a + pi`` (and ``+ 2 pi k``), and ``(w, h, a) -> (h, w, a + pi/2)``: the same rectangle."""
    pred, target = random_pairs(300, seed=6)
    base = rotated_iou(pred, target, kind, eps=1e-300)
    half_turn = pred + torch.tensor([0.0, 0.0, 0.0, 0.0, math.pi], dtype=torch.float64)
    wrapped = pred + torch.tensor([0.0, 0.0, 0.0, 0.0, -40 * math.pi], dtype=torch.float64)
    swapped = torch.cat((pred[:, :2], pred[:, 3:4], pred[:, 2:3], pred[:, 4:] + math.pi / 2), dim=-1)
    for other in (half_turn, wrapped, swapped):
        torch.testing.assert_close(rotated_iou(other, target, kind, eps=1e-300), base, rtol=0, atol=1e-11)
    # symmetry of the measure itself
    torch.testing.assert_close(rotated_iou(target, pred, kind, eps=1e-300), base, rtol=0, atol=1e-13)


def test_axis_aligned_limit() -> None:
    """At a = 0 the rotated IoU is aligned_iou; the rotated GIoU is >= the upright GIoU (the
    hull is inside the enclosing box) and larger for boxes offset diagonally."""
    pred, target = random_pairs(500, seed=8, spread=2.0)
    pred[:, 4], target[:, 4] = 0.0, 0.0

    def xyxy(b: torch.Tensor) -> torch.Tensor:
        return torch.cat((b[:, :2] - b[:, 2:4] / 2, b[:, :2] + b[:, 2:4] / 2), dim=-1)

    upright_iou = aligned_iou(xyxy(pred), xyxy(target), "iou", eps=1e-300)
    torch.testing.assert_close(rotated_iou(pred, target, "iou", eps=1e-300), upright_iou, rtol=0, atol=1e-13)
    upright_giou = aligned_iou(xyxy(pred), xyxy(target), "giou", eps=1e-300)
    rotated_giou = rotated_iou(pred, target, "giou", eps=1e-300)
    assert (rotated_giou >= upright_giou - 1e-13).all()
    assert (rotated_giou > upright_giou + 1e-3).double().mean() > 0.3
    # two unit squares touching at a corner: upright GIoU -(4 - 2)/4, hull (area 3) -(3 - 2)/3
    a, b = torch.tensor([0.5, 0.5, 1.0, 1.0, 0.0]), torch.tensor([1.5, 1.5, 1.0, 1.0, 0.0])
    assert rotated_iou(a, b, "giou").item() == pytest.approx(-1 / 3, abs=1e-6)
    assert aligned_iou(xyxy(a[None]), xyxy(b[None]), "giou").item() == pytest.approx(-0.5, abs=1e-6)


# ---------------------------------------------------------------- formats


def test_formats_degrees_and_corners() -> None:
    pred, target = random_pairs(200, seed=9)
    base = rotated_iou(pred, target, "giou", eps=1e-300)
    deg = in_degrees(pred), in_degrees(target)
    torch.testing.assert_close(rotated_iou(*deg, "giou", angle_unit="deg", eps=1e-300), base, rtol=0, atol=1e-12)

    def ultralytics_corners(b: torch.Tensor) -> torch.Tensor:
        # c + v1 + v2, c + v1 - v2, c - v1 - v2, c - v1 + v2; v1 = w/2 (cos, sin), v2 = h/2 (-sin, cos)
        c, w, h, a = b[:, :2], b[:, 2:3], b[:, 3:4], b[:, 4:]
        v1 = torch.cat((w / 2 * torch.cos(a), w / 2 * torch.sin(a)), -1)
        v2 = torch.cat((-h / 2 * torch.sin(a), h / 2 * torch.cos(a)), -1)
        return torch.cat((c + v1 + v2, c + v1 - v2, c - v1 - v2, c - v1 + v2), -1)

    quad_p, quad_t = ultralytics_corners(pred), ultralytics_corners(target)
    torch.testing.assert_close(convert_rotated(pred, "cxcywha", "xyxyxyxy"), quad_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(rotated_iou(quad_p, quad_t, "giou", "xyxyxyxy", eps=1e-300), base, rtol=0, atol=1e-12)
    # the other orientation (corners clockwise) is the same rectangle
    reversed_p = quad_p.reshape(-1, 4, 2).flip(1).reshape(-1, 8)
    reversed_iou = rotated_iou(reversed_p, quad_t, "giou", "xyxyxyxy", eps=1e-300)
    torch.testing.assert_close(reversed_iou, base, rtol=0, atol=1e-12)
    # corners -> cxcywha -> corners is the identity; the angle comes back modulo 2 pi
    back = convert_rotated(quad_p, "xyxyxyxy", "cxcywha")
    torch.testing.assert_close(convert_rotated(back, "cxcywha", "xyxyxyxy"), quad_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(back[:, :4], pred[:, :4], rtol=0, atol=1e-12)
    turn = back[:, 4] - pred[:, 4]
    torch.testing.assert_close(torch.remainder(turn + 1, 2 * math.pi) - 1, torch.zeros(200, dtype=torch.float64),
                               rtol=0, atol=1e-12)  # fmt: skip
    # a zero-width box from corners: finite, with its h side as direction
    flat = convert_rotated(torch.tensor([[1.0, 2.0, 0.0, 3.0, 0.7]], dtype=torch.float64), "cxcywha", "xyxyxyxy")
    flat.requires_grad_(True)
    rotated_iou(flat, quad_t[:1], "giou", "xyxyxyxy").sum().backward()
    assert torch.isfinite(flat.grad).all()
    got = convert_rotated(flat.detach(), "xyxyxyxy", "cxcywha")
    assert got[0, 2].item() == pytest.approx(0.0, abs=1e-12) and got[0, 3].item() == pytest.approx(3.0)


def test_corners_far_from_the_origin_in_float32() -> None:
    """Corners of boxes 0.01 to 1 wide at 1e5 (float32 spacing 0.008): sides and centre offsets come
    from differences of nearby corners, so float32 matches float64 on the same corners."""
    pred, target = random_pairs(200, seed=25, spread=0.5)
    scale = torch.tensor([0.1, 0.1, 0.1, 0.1, 1.0], dtype=torch.float64)  # sides 0.01 to 1
    far = torch.tensor([1e5, -3e5, 0.0, 0.0, 0.0], dtype=torch.float64)
    quads = [convert_rotated(b * scale + far, "cxcywha", "xyxyxyxy").float() for b in (pred, target)]
    assert (rotated_iou(*(q.double() for q in quads), box_format="xyxyxyxy") > 0).double().mean() > 0.5
    for fn in (rotated_iou, gaussian_distance, kfiou):
        got, ref = fn(*quads, box_format="xyxyxyxy"), fn(*(q.double() for q in quads), box_format="xyxyxyxy")
        assert (got.double() - ref).abs().max() < 1e-3 * max(1.0, ref.abs().max().item()), fn.__name__


def test_half_inputs_compute_in_float32() -> None:
    pred, target = random_pairs(50, seed=10)
    for dtype in (torch.float16, torch.bfloat16):
        p, t = pred.to(dtype), target.to(dtype)
        for fn in (rotated_iou, gaussian_distance, kfiou):
            out = fn(p, t)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out.double(), fn(p.double(), t.double()), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_gradcheck_float64(kind: str) -> None:
    """Away from kinks: random overlapping pairs, both inputs, radians, degrees and corners."""
    pred, target = random_pairs(8 if kind == "iou" else 4, seed=11, spread=0.4)
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: rotated_iou(a, b, kind), (p, t), eps=1e-6, atol=1e-6, rtol=1e-4)
    pd = torch.cat((pred[:, :4], torch.rad2deg(pred[:, 4:])), -1).requires_grad_(True)
    td = torch.cat((target[:, :4], torch.rad2deg(target[:, 4:])), -1)
    assert torch.autograd.gradcheck(
        lambda a: rotated_iou(a, td, kind, angle_unit="deg"), (pd,), eps=1e-6, atol=1e-6, rtol=1e-4
    )
    quad = convert_rotated(pred, "cxcywha", "xyxyxyxy").requires_grad_(True)
    quad_t = convert_rotated(target, "cxcywha", "xyxyxyxy")
    assert torch.autograd.gradcheck(
        lambda a: rotated_iou(a, quad_t, kind, "xyxyxyxy"), (quad,), eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_gradient_of_zero_width_prediction_grows_it() -> None:
    """The one-sided derivative at w = 0: a segment inside the target gains area as it widens."""
    p = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.3], dtype=torch.float64, requires_grad=True)
    rotated_iou(p, torch.tensor(SQ, dtype=torch.float64), eps=1e-300).backward()
    # d IoU / d w = d I / d w / U = length inside (1) / area of the square (4)
    assert p.grad[2].item() == pytest.approx(0.25, rel=1e-9)


# ---------------------------------------------------------------- NMS


def greedy_nms(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(shapely_iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(i)
    return keep


def test_rotated_nms_against_a_greedy_reference() -> None:
    g = torch.Generator().manual_seed(12)
    boxes = torch.cat(
        (
            torch.rand(60, 2, generator=g, dtype=torch.float64) * 10,
            torch.rand(60, 2, generator=g, dtype=torch.float64) * 4 + 1,
            torch.rand(60, 1, generator=g, dtype=torch.float64) * 6,
        ),
        dim=-1,
    )
    scores = torch.rand(60, generator=g, dtype=torch.float64)
    scores[10:15] = scores[3]  # ties: the earlier index first
    for threshold in (0.0, 0.1, 0.3, 0.7, 1.0):
        got = rotated_nms(boxes, scores, threshold)
        assert got.dtype == torch.int64
        assert got.tolist() == greedy_nms(boxes.tolist(), scores.tolist(), threshold)
    assert len(rotated_nms(boxes, scores, 1.0)) == 60
    assert rotated_nms(boxes[:0], scores[:0], 0.5).shape == (0,)
    # an identical copy is removed at any threshold below 1
    twins = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.3], [0.0, 0.0, 4.0, 2.0, 0.3 + math.pi]])
    assert rotated_nms(twins, torch.tensor([0.4, 0.6]), 0.99).tolist() == [1]


# ---------------------------------------------------------------- Gaussian distances and KFIoU


@pytest.mark.parametrize("kind", ["bhattacharyya", "kld", "gwd"])
def test_gaussian_distances_against_matrix_algebra(kind: str) -> None:
    pred, target = random_pairs(300, seed=13, spread=2.0)
    ref = torch.tensor([ref_gaussian(p, t, kind) for p, t in zip(pred.tolist(), target.tolist())], dtype=torch.float64)
    got = gaussian_distance(pred, target, kind, eps=1e-300)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    # degrees and corners give the same
    deg = in_degrees(pred), in_degrees(target)
    torch.testing.assert_close(gaussian_distance(*deg, kind, angle_unit="deg", eps=1e-300), got, rtol=1e-12, atol=1e-12)
    quads = (convert_rotated(b, "cxcywha", "xyxyxyxy") for b in (pred, target))
    torch.testing.assert_close(gaussian_distance(*quads, kind, "xyxyxyxy", eps=1e-300), got, rtol=1e-10, atol=1e-10)


def test_gaussian_distance_properties() -> None:
    pred, target = random_pairs(200, seed=14, spread=2.0)
    for kind in ("bhattacharyya", "gwd"):  # symmetric distances
        torch.testing.assert_close(gaussian_distance(target, pred, kind), gaussian_distance(pred, target, kind))
    kl_tp, kl_pt = gaussian_distance(pred, target, "kld"), gaussian_distance(target, pred, "kld")
    assert (kl_tp - kl_pt).abs().max() > 1e-3  # KL is not symmetric
    # the prediction's covariance is inverted: a centre offset along the predicted box's
    # long side costs delta^2 / (2 w_p^2 / 4) = 2 delta^2 / w_p^2, whatever the target's size
    p = torch.tensor([1.0, 0.0, 4.0, 2.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 0.0, 4.0, 2.0, 0.0], dtype=torch.float64)
    assert gaussian_distance(p, t, "kld", eps=1e-300).item() == pytest.approx(2 / 16)
    for kind in ("bhattacharyya", "kld", "gwd"):
        zero = gaussian_distance(pred, pred.clone(), kind)
        assert zero.abs().max() < 1e-12
        half_turn = pred + torch.tensor([0.0, 0.0, 0.0, 0.0, math.pi], dtype=torch.float64)
        torch.testing.assert_close(gaussian_distance(half_turn, target, kind), gaussian_distance(pred, target, kind))


def test_gaussian_distances_finite_for_degenerate_boxes() -> None:
    boxes = torch.tensor(
        [
            [[5.0, 5.0, 0.0, 0.0, 0.0], [5.1, 5.0, 0.0, 0.0, 0.0]],  # two points
            [[0.0, 0.0, 1e-6, 30.0, 1.0], [0.0, 0.0, 1e-6, 30.0, 1.0]],  # identical needles
            [[0.0, 0.0, 1e6, 1e-6, 0.0], [1e5, 1e5, 1e-6, 1e6, 0.3]],  # huge and flat
            [[0.0, 0.0, 0.0, 3.0, 0.2], [0.0, 0.0, 3.0, 3.0, 0.2 + math.pi / 2]],
        ],
        dtype=torch.float32,
    )
    for kind in ("bhattacharyya", "kld", "gwd"):
        p = boxes[:, 0].clone().requires_grad_(True)
        out = gaussian_distance(p, boxes[:, 1], kind)
        assert torch.isfinite(out).all(), kind
        out.sum().backward()
        assert torch.isfinite(p.grad).all(), kind
    p = boxes[:, 0].clone().requires_grad_(True)
    out = kfiou(p, boxes[:, 1])
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("side", [1e10, 1e14, 1e18])
def test_gwd_and_kfiou_of_huge_float32_boxes(side: float) -> None:
    """Products of four sides overflow float32 from sides of ~1e10 (they did, to NaN): the
    distance and the KFIoU of boxes this large match float64's matrix algebra, and the losses'
    gradients are finite."""
    p = [0.1 * side, 0.0, side, 0.5 * side, 0.3]
    t = [0.0, 0.05 * side, 1.2 * side, 0.4 * side, 0.1]
    pred = torch.tensor([p], dtype=torch.float32, requires_grad=True)
    target = torch.tensor([t], dtype=torch.float32)
    with torch.no_grad():
        assert math.isclose(float(gaussian_distance(pred, target, "gwd")), ref_gaussian(p, t, "gwd"), rel_tol=1e-5)
        assert math.isclose(float(kfiou(pred, target)), ref_kfiou(p, t), rel_tol=1e-5)
    for loss in (F.gwd_loss, F.kfiou_loss):
        pred.grad = None
        value = loss(pred, target)
        value.backward()
        assert bool(torch.isfinite(value)) and bool(torch.isfinite(pred.grad).all()), loss.__name__


def test_kfiou_against_the_papers_definition() -> None:
    pred, target = random_pairs(300, seed=15, spread=2.0)
    ref = torch.tensor([ref_kfiou(p, t) for p, t in zip(pred.tolist(), target.tolist())], dtype=torch.float64)
    torch.testing.assert_close(kfiou(pred, target, eps=1e-300), ref, rtol=1e-9, atol=1e-12)
    # at most 1/3, reached by identical shapes whatever the centres
    assert (kfiou(pred, target) <= 1 / 3 + 1e-12).all()
    moved = pred + torch.tensor([50.0, -20.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(kfiou(moved, pred, eps=1e-300), torch.full((300,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["bhattacharyya", "kld", "gwd", "kfiou"])
def test_gaussian_gradcheck_float64(kind: str) -> None:
    pred, target = random_pairs(10, seed=16, spread=2.0)
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    fn = (lambda a, b: kfiou(a, b)) if kind == "kfiou" else (lambda a, b: gaussian_distance(a, b, kind))
    assert torch.autograd.gradcheck(fn, (p, t), eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the outline (for drawing)


def _signed_area(points: torch.Tensor) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float((x * y.roll(-1) - x.roll(-1) * y).sum())


def test_outline_polygons_are_shapelys_intersection_and_hull() -> None:
    pred, target = random_pairs(300, 11)
    disjoint = 0
    for p, t in zip(pred, target):
        inter, hull = rotated_outline(p, t)
        a, b = Polygon(corners(p.tolist())), Polygon(corners(t.tolist()))
        exact_inter, exact_hull = a.intersection(b), Polygon(corners(p.tolist()) + corners(t.tolist())).convex_hull
        assert len(hull) <= 8 and _signed_area(hull) > 0  # counter-clockwise, y up
        assert Polygon(hull.tolist()).symmetric_difference(exact_hull).area <= 1e-9 * exact_hull.area
        assert len(hull) == len(exact_hull.exterior.coords) - 1  # no collinear or repeated vertices
        if exact_inter.area == 0:
            disjoint += 1
            assert len(inter) <= 2
            continue
        assert len(inter) <= 8 and _signed_area(inter) > 0
        assert Polygon(inter.tolist()).symmetric_difference(exact_inter).area <= 1e-9 * exact_inter.area
    assert 0 < disjoint < 150


def test_outline_of_identical_and_nested_boxes() -> None:
    box = torch.tensor([3.0, -1.0, 4.0, 2.0, 0.7], dtype=torch.float64)
    inter, hull = rotated_outline(box, box.clone())
    expected = torch.tensor(corners(box.tolist()), dtype=torch.float64)
    for polygon in (inter, hull):
        assert len(polygon) == 4
        assert all(float((expected - v).norm(dim=-1).min()) < 1e-12 for v in polygon)
    small = torch.tensor([3.0, -1.0, 1.0, 1.0, 0.2], dtype=torch.float64)
    inter, hull = rotated_outline(small, box)
    assert _signed_area(inter) == pytest.approx(1.0, abs=1e-12)
    assert _signed_area(hull) == pytest.approx(8.0, abs=1e-12)


def test_outline_takes_one_box_each() -> None:
    with pytest.raises(DetLossError, match="`pred` expected one box"):
        rotated_outline(torch.zeros(2, 5), torch.zeros(5))

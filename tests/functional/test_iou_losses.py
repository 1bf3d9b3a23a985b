"""The IoU-family losses: goldens by hand, an independent float64 reference, exact and
surrogate gradients against finite differences, identities, degenerate boxes, errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import detloss
from detloss import functional as F
from detloss import nn as N
from detloss import set_backend
from detloss.boxes import convert
from detloss.errors import DetLossError
from detloss.registry import LOSSES
from detloss.testing import sample_inputs
from tests.reference import (
    ref_alpha_iou,
    ref_box_loss,
    ref_box_terms,
    ref_focal_eiou,
    ref_inner_iou,
    ref_mpdiou,
    ref_nwd,
    ref_wiou,
)

Box = tuple[float, float, float, float]


@pytest.fixture(params=["reference", None], ids=["reference", "default-backend"])
def backend(request: pytest.FixtureRequest) -> object:
    """Run a test on the reference path (the definition) and on the default (fast) path."""
    set_backend(request.param)
    yield request.param
    set_backend(None)


# ---------------------------------------------------------------- goldens, by hand
# A: pred 4 x 2 at (0, 0), target 3 x 3 at (2, 1) (xyxy (0,0,4,2), (2,1,5,4)).
#    inter 2 x 1 = 2, union 8 + 9 - 2 = 15: IoU 2/15; enclosing 5 x 4 = 20 (GIoU term 5/20);
#    centres (2, 1), (3.5, 2.5): rho^2 = 4.5, c^2 = 25 + 16 = 41.
#    EIoU loss = 1 - 2/15 + 4.5/41 + (4 - 3)^2/25 + (2 - 3)^2/16 = 1.078923
#    v = 4/pi^2 (atan 1 - atan 2)^2 = 0.041956, CIoU alpha = v / (13/15 + v) = 0.046176
# X: a cross, pred 4 x 1 and target 1 x 4, both centred at (2, 2): IoU 1/7, enclosing 4 x 4,
#    rho = 0, v = 4/pi^2 (atan(1/4) - atan 4)^2 = 0.473459, alpha = v / (6/7 + v) = 0.355823,
#    alpha v = 0.168468; EIoU loss = 6/7 + 9/16 + 9/16 = 1.982143
A: tuple[Box, Box] = ((0.0, 0.0, 4.0, 2.0), (2.0, 1.0, 5.0, 4.0))
X: tuple[Box, Box] = ((0.0, 1.5, 4.0, 2.5), (1.5, 0.0, 2.5, 4.0))

GOLDEN: list[tuple[str, Callable[..., torch.Tensor], dict, tuple[Box, Box], float]] = [
    # Focal-EIoU: IoU^gamma * L_EIoU
    ("focal_eiou A", F.focal_eiou_loss, {}, A, 0.393967),  # sqrt(2/15) * 1.078923
    ("focal_eiou A gamma 1", F.focal_eiou_loss, {"gamma": 1.0}, A, 0.143856),  # 2/15 * 1.078923
    ("focal_eiou A gamma 0", F.focal_eiou_loss, {"gamma": 0.0}, A, 1.078923),
    ("focal_eiou X", F.focal_eiou_loss, {}, X, 0.749180),  # sqrt(1/7) * 1.982143
    # SIoU on A: dx = dy = 1.5, Lambda = 1, gamma = 1; Delta = (1 - e^-(1.5/5)^2) + (1 - e^-(1.5/4)^2)
    #   = 0.217254; omega_w = 1/4, omega_h = 1/3: Omega_4 = 0.008851, Omega_2 = 0.129284
    ("siou A", F.siou_loss, {}, A, 0.979719),  # 13/15 + (0.217254 + 0.008851) / 2
    ("siou A theta 2", F.siou_loss, {"theta": 2.0}, A, 1.039935),  # 13/15 + (0.217254 + 0.129284) / 2
    # Alpha-IoU, alpha 3
    ("alpha_iou A iou", F.alpha_iou_loss, {}, A, 0.997630),  # 1 - (2/15)^3
    ("alpha_iou A giou", F.alpha_iou_loss, {"kind": "giou"}, A, 1.013255),  # + (5/20)^3
    ("alpha_iou A diou", F.alpha_iou_loss, {"kind": "diou"}, A, 0.998952),  # + (4.5/41)^3
    ("alpha_iou X iou", F.alpha_iou_loss, {}, X, 0.997085),  # 1 - (1/7)^3
    ("alpha_iou X giou", F.alpha_iou_loss, {"kind": "giou"}, X, 1.175063),  # + (9/16)^3
    ("alpha_iou X diou", F.alpha_iou_loss, {"kind": "diou"}, X, 0.997085),  # rho = 0
    ("alpha_iou X ciou", F.alpha_iou_loss, {"kind": "ciou"}, X, 1.001866),  # + 0.168468^3
    ("alpha_iou A diou alpha 1", F.alpha_iou_loss, {"kind": "diou", "alpha": 1.0}, A, 0.976423),  # DIoU loss
    # Wise-IoU v1 on A: exp(4.5/41) * 13/15
    ("wiou A v1", F.wiou_loss, {"version": "v1"}, A, 0.967205),
    # v3 with a given running mean, no update (momentum 0): beta = (13/15) / (13/30) = 2,
    #   r = 2 / (3 * 1.9^-1) = 1.266667
    ("wiou A v3", F.wiou_loss, {"iou_mean": 13 / 30, "momentum": 0.0}, A, 1.225126),
    # MPDIoU on A, image 10 x 8: d1^2 = 2^2 + 1^2 = 5, d2^2 = 1^2 + 2^2 = 5: 13/15 + 10/164
    ("mpdiou A", F.mpdiou_loss, {"image_size": (10, 8)}, A, 0.927642),
    # Inner-IoU on A: ratio 0.5 gives inner boxes [1, 3] x [0.5, 1.5] and [2.75, 4.25] x [1.75, 3.25],
    #   disjoint: 1 - 0; with giou: L_GIoU + IoU - 0 = 13/15 + 1/4 + 2/15 = 1.25.
    #   ratio 1.5: [-1, 5] x [-0.5, 2.5] and [1.25, 5.75] x [0.25, 4.75]: inter 3.75 x 2.25 = 8.4375,
    #   union 18 + 20.25 - 8.4375 = 29.8125: 1 - 0.283019
    ("inner_iou A 0.5", F.inner_iou_loss, {"ratio": 0.5}, A, 1.0),
    ("inner_iou A 0.5 giou", F.inner_iou_loss, {"ratio": 0.5, "kind": "giou"}, A, 1.25),
    ("inner_iou A 1.5", F.inner_iou_loss, {"ratio": 1.5}, A, 0.716981),
    # X is concentric: the inner IoU equals the IoU, so inner CIoU = CIoU = 6/7 + 0.168468
    ("inner_iou X ciou", F.inner_iou_loss, {"ratio": 0.5, "kind": "ciou"}, X, 1.025610),
    # NWD on A: W2^2 = 4.5 + ((4 - 3)^2 + (2 - 3)^2) / 4 = 5: 1 - exp(-sqrt 5 / 12.8)
    ("nwd A", F.nwd_loss, {}, A, 0.160285),
    ("nwd X", F.nwd_loss, {"constant": 1.0}, X, 0.880127),  # W2^2 = (9 + 9)/4: 1 - exp(-2.121320)
    # CIoU, the three variants: A has IoU < 0.5, so the journal gate drops the aspect term
    ("ciou A", F.ciou_loss, {}, A, 0.978360),  # 13/15 + 4.5/41 + 0.046176 * 0.041956
    ("ciou A gated", F.ciou_loss, {"alpha_gate": True}, A, 0.976423),  # = DIoU loss
    ("ciou A paper grad", F.ciou_loss, {"grad_mode": "paper"}, A, 0.978360),  # same value
]


@pytest.mark.parametrize(("name", "fn", "options", "pair", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_values(name, fn, options, pair, expected) -> None:
    pred, target = (torch.tensor(b, dtype=torch.float64) for b in pair)
    assert fn(pred, target, **options).item() == pytest.approx(expected, abs=2e-6)


def test_goldens_tell_the_variants_apart() -> None:
    values = {name: expected for name, _, _, pair, expected in GOLDEN if pair == X and name.startswith("alpha")}
    assert values["alpha_iou X ciou"] != pytest.approx(values["alpha_iou X diou"], abs=1e-3)
    assert values["alpha_iou X giou"] != pytest.approx(values["alpha_iou X iou"], abs=1e-3)


# ---------------------------------------------------------------- the independent reference


def random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-square boxes of sides 0.5..40: a third jittered (mostly IoU > 0.3), a third nested or
    overlapping, a third far apart."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    centre = rand(n, 2) * 100
    size = 0.5 + rand(n, 2) * 40
    target = torch.cat((centre - size / 2, centre + size / 2), dim=-1)
    kind = torch.arange(n) % 3
    spread = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)[kind][:, None]
    pcentre = centre + (rand(n, 2) - 0.5) * size * spread
    psize = size * torch.exp((rand(n, 2) - 0.5) * 2 * spread.clamp(max=1.5))
    pred = torch.cat((pcentre - psize / 2, pcentre + psize / 2), dim=-1)
    return pred, target


def as_tuples(t: torch.Tensor) -> list[Box]:
    return [tuple(row) for row in t.tolist()]  # type: ignore[misc]


REFERENCE_CASES: list[tuple[str, Callable[..., torch.Tensor], dict, Callable[[Box, Box], float]]] = [
    ("focal_eiou", F.focal_eiou_loss, {}, ref_focal_eiou),
    ("focal_eiou exact grad", F.focal_eiou_loss, {"detach_iou": False}, ref_focal_eiou),
    ("focal_eiou gamma 2", F.focal_eiou_loss, {"gamma": 2.0}, lambda p, t: ref_focal_eiou(p, t, 2.0)),
    ("siou", F.siou_loss, {}, lambda p, t: ref_box_loss(p, t, "siou")),
    ("siou theta 2.5", F.siou_loss, {"theta": 2.5}, lambda p, t: ref_box_loss(p, t, "siou", theta=2.5)),
    ("wiou v1", F.wiou_loss, {"version": "v1"}, lambda p, t: ref_wiou(p, t, "v1")),
    ("wiou v3 given mean", F.wiou_loss, {"iou_mean": 0.6, "momentum": 0.0}, lambda p, t: ref_wiou(p, t, mean=0.6)),
    ("mpdiou", F.mpdiou_loss, {"image_size": (640, 480)}, lambda p, t: ref_mpdiou(p, t, 640, 480)),
    ("nwd", F.nwd_loss, {}, ref_nwd),
    ("nwd C 3", F.nwd_loss, {"constant": 3.0}, lambda p, t: ref_nwd(p, t, 3.0)),
]
for _kind in ("iou", "giou", "diou", "ciou"):
    for _alpha in (3.0, 1.0, 0.5):
        REFERENCE_CASES.append(
            (
                f"alpha_iou {_kind} {_alpha}",
                F.alpha_iou_loss,
                {"kind": _kind, "alpha": _alpha},
                lambda p, t, k=_kind, a=_alpha: ref_alpha_iou(p, t, a, k),
            )
        )
for _kind in ("iou", "giou", "diou", "ciou", "eiou", "siou"):
    for _ratio in (0.7, 1.3):
        REFERENCE_CASES.append(
            (
                f"inner_iou {_kind} {_ratio}",
                F.inner_iou_loss,
                {"kind": _kind, "ratio": _ratio},
                lambda p, t, k=_kind, r=_ratio: ref_inner_iou(p, t, r, k),
            )
        )


@pytest.mark.parametrize(("name", "fn", "options", "ref"), REFERENCE_CASES, ids=[c[0] for c in REFERENCE_CASES])
def test_matches_reference_on_random_pairs(name, fn, options, ref) -> None:
    pred, target = random_pairs(1500, seed=21)
    out = fn(pred, target, reduction="none", **options)
    expected = torch.tensor([ref(p, t) for p, t in zip(as_tuples(pred), as_tuples(target))], dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=1e-7)


def test_wiou_v3_batch_mean_matches_reference() -> None:
    pred, target = random_pairs(1200, seed=4)
    pairs = list(zip(as_tuples(pred), as_tuples(target)))
    mean = sum(1 - ref_box_terms(p, t)["iou"] for p, t in pairs) / len(pairs)
    expected = torch.tensor([ref_wiou(p, t, mean=mean) for p, t in pairs], dtype=torch.float64)
    torch.testing.assert_close(F.wiou_loss(pred, target, reduction="none"), expected, atol=1e-7, rtol=1e-7)
    # a running mean of 0.4 moved by momentum 0.25 towards the batch mean, then used
    running = 0.75 * 0.4 + 0.25 * mean
    expected = torch.tensor([ref_wiou(p, t, mean=running) for p, t in pairs], dtype=torch.float64)
    out = F.wiou_loss(pred, target, iou_mean=0.4, momentum=0.25, reduction="none")
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=1e-7)


# ---------------------------------------------------------------- gradients


def finite_difference(f: Callable[[list[float]], float], x: Box, h: float = 1e-6) -> list[float]:
    grad = []
    for i in range(4):
        up, down = list(x), list(x)
        up[i] += h
        down[i] -= h
        grad.append((f(up) - f(down)) / (2 * h))
    return grad


def gradient_pairs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping non-square pairs with IoU on both sides of 0.5, and some disjoint ones."""
    pred, target = random_pairs(90, seed)
    g = ref_box_terms
    ious = [g(p, t)["iou"] for p, t in zip(as_tuples(pred), as_tuples(target))]
    assert any(i >= 0.5 for i in ious) and any(0 < i < 0.5 for i in ious) and any(i == 0 for i in ious)
    return pred, target


def autograd_rows(loss_fn: Callable[..., torch.Tensor], pred: torch.Tensor, target: torch.Tensor, **kw) -> torch.Tensor:
    p = pred.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(p, target, reduction="sum", **kw), p)
    return grad


def ciou_reference_gradient(p: Box, t: Box, alpha_gate: bool, grad_mode: str) -> list[float]:
    """d/dp of 1 - IoU + rho^2/c^2 + alpha0 v(p), alpha0 frozen at p (0 below IoU 0.5 when gated);
    for grad_mode="paper" the v part of the gradient is scaled by w^2 + h^2 of p."""
    base = ref_box_terms(p, t)
    alpha0 = base["v"] / (1 - base["iou"] + base["v"] + 1e-7)
    union = base["pw"] * base["ph"] + base["tw"] * base["th"] - base["inter"]  # without eps
    if alpha_gate and not (base["inter"] > 0 and 2 * base["inter"] >= union):
        alpha0 = 0.0

    def distance_part(q: list[float]) -> float:
        g = ref_box_terms(q, t)
        return 1 - g["iou"] + g["rho2"] / g["c2"]

    def aspect(q: list[float]) -> float:
        return ref_box_terms(q, t)["v"]

    scale = base["pw"] ** 2 + base["ph"] ** 2 if grad_mode == "paper" else 1.0
    d_dist = finite_difference(distance_part, p)
    d_v = finite_difference(aspect, p)
    return [a + alpha0 * scale * b for a, b in zip(d_dist, d_v)]


@pytest.mark.parametrize(("alpha_gate", "grad_mode"), [(False, "exact"), (True, "exact"), (False, "paper")])
def test_ciou_gradient_is_its_own_formula_with_alpha_frozen(alpha_gate: bool, grad_mode: str, backend: object) -> None:
    pred, target = gradient_pairs(seed=7)
    got = autograd_rows(F.ciou_loss, pred, target, alpha_gate=alpha_gate, grad_mode=grad_mode)
    expected = torch.tensor(
        [ciou_reference_gradient(p, t, alpha_gate, grad_mode) for p, t in zip(as_tuples(pred), as_tuples(target))],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)


# IoU exactly 0.5 (inter 4, union 8; inter 6, union 12), below (4 / 10), above (6 / 8), and two
# empty boxes (inter = union = 0, IoU 0) with different aspect angles, so an open gate would show
GATE_PAIRS: list[tuple[Box, Box, bool]] = [
    ((0.0, 0.0, 2.0, 2.0), (0.0, 0.0, 4.0, 2.0), True),
    ((0.0, 0.0, 3.0, 2.0), (0.0, 0.0, 4.0, 3.0), True),
    ((0.0, 0.0, 2.0, 2.0), (0.0, 0.0, 4.0, 2.5), False),
    ((0.0, 0.0, 3.0, 2.0), (0.0, 0.0, 4.0, 2.0), True),
    ((0.0, 0.0, 2.0, 0.0), (0.0, 0.0, 0.0, 2.0), False),
]


@pytest.mark.parametrize("fast", ["reference", "fused", "native"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ciou_gate_side_is_the_same_in_every_dtype_and_backend(dtype: torch.dtype, fast: str) -> None:
    """The journal gate keeps the aspect term for IoU >= 0.5, decided on the areas: a pair with
    IoU exactly 0.5 is gated the same in float32 (where the union's eps rounds away) and float64."""
    pred = torch.tensor([p for p, _, _ in GATE_PAIRS], dtype=dtype)
    target = torch.tensor([t for _, t, _ in GATE_PAIRS], dtype=dtype)
    expected = [ref_box_loss(p, t, "ciou" if open_ else "diou") for p, t, open_ in GATE_PAIRS]
    with detloss.use_backend(fast):
        info = detloss.backend_info()
        if info.cpu != fast:
            pytest.skip(f"{fast} backend unavailable here: {info.native_failure}")
        got = F.ciou_loss(pred, target, alpha_gate=True, reduction="none")
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)
    assert got[0].item() == pytest.approx(0.553248, abs=1e-6)  # 0.5 + 1/20 + alpha v, in both dtypes


@pytest.mark.parametrize("key", sorted(k for k, spec in LOSSES.items() if spec.inputs == "boxes"))
def test_box_losses_take_framework_weight_layouts(key: str) -> None:
    """mmdetection's (N, 4) weights are averaged over the coordinates, ultralytics' (N, 1) broadcast."""
    spec = LOSSES[key]
    pred, target = (t.detach() for t in sample_inputs(key, 5, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    per_coordinate = torch.rand(5, 4, generator=g, dtype=torch.float64)
    column = torch.rand(5, 1, generator=g, dtype=torch.float64)
    for reduction in ("none", "sum", "mean"):

        def loss(weight: torch.Tensor, reduction: str = reduction) -> torch.Tensor:
            return spec.function(pred, target, weight=weight, reduction=reduction, **dict(spec.call_options))

        torch.testing.assert_close(loss(per_coordinate), loss(per_coordinate.mean(-1)))
        torch.testing.assert_close(loss(column), loss(column[:, 0]))
    # by hand: the second pair has all four coordinate weights 0, the first all 1: the sum is
    # the first pair's loss
    rows = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    two = spec.function(pred[:2], target[:2], weight=rows, reduction="sum", **dict(spec.call_options))
    each = spec.function(pred[:2], target[:2], reduction="none", **dict(spec.call_options))
    torch.testing.assert_close(two, each[0])


def test_ciou_variants_have_different_gradients_and_alpha_is_really_frozen() -> None:
    pred, target = gradient_pairs(seed=7)
    exact = autograd_rows(F.ciou_loss, pred, target)
    gated = autograd_rows(F.ciou_loss, pred, target, alpha_gate=True)
    paper = autograd_rows(F.ciou_loss, pred, target, grad_mode="paper")
    assert (exact - gated).abs().max() > 1e-3
    assert (exact - paper).abs().max() > 1e-3
    # the derivative with alpha NOT frozen differs: the test above can tell the two apart
    full = torch.tensor(
        [
            finite_difference(lambda q, t=t: ref_box_loss(q, t, "ciou"), p)  # type: ignore[misc]
            for p, t in zip(as_tuples(pred), as_tuples(target))
        ],
        dtype=torch.float64,
    )
    assert (exact - full).abs().max() > 1e-4


def test_focal_eiou_detached_gradient_is_weighted_eiou_gradient(backend: object) -> None:
    pred, target = gradient_pairs(seed=8)
    got = autograd_rows(F.focal_eiou_loss, pred, target)
    rows = []
    for p, t in zip(as_tuples(pred), as_tuples(target)):
        weight0 = ref_box_terms(p, t)["iou"] ** 0.5
        rows.append([weight0 * d for d in finite_difference(lambda q, t=t: ref_box_loss(q, t, "eiou"), p)])
    torch.testing.assert_close(got, torch.tensor(rows, dtype=torch.float64), atol=2e-6, rtol=1e-5)
    exact = autograd_rows(F.focal_eiou_loss, pred, target, detach_iou=False)
    assert (exact - got).abs().max() > 1e-3


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_wiou_gradient_with_detached_terms_frozen(version: str) -> None:
    pred, target = gradient_pairs(seed=9)
    pairs = list(zip(as_tuples(pred), as_tuples(target)))
    mean = sum(1 - ref_box_terms(p, t)["iou"] for p, t in pairs) / len(pairs)
    got = autograd_rows(F.wiou_loss, pred, target, version=version)
    rows = []
    for p, t in pairs:
        base = ref_box_terms(p, t)
        diag0 = base["cw"] ** 2 + base["ch"] ** 2  # the detached enclosing diagonal
        outlier = (1 - base["iou"]) / mean
        r0 = outlier / (3.0 * 1.9 ** (outlier - 3.0)) if version == "v3" else 1.0

        def v1_frozen(q: list[float], t: Box = t, diag0: float = diag0) -> float:
            g = ref_box_terms(q, t)
            return math.exp(g["rho2"] / diag0) * (1 - g["iou"])

        rows.append([r0 * d for d in finite_difference(v1_frozen, p)])
    torch.testing.assert_close(got, torch.tensor(rows, dtype=torch.float64), atol=2e-6, rtol=1e-5)


def test_alpha_ciou_gradient_with_beta_frozen() -> None:
    pred, target = gradient_pairs(seed=10)
    got = autograd_rows(F.alpha_iou_loss, pred, target, kind="ciou")
    rows = []
    for p, t in zip(as_tuples(pred), as_tuples(target)):
        base = ref_box_terms(p, t)
        beta0 = base["v"] / (1 - base["iou"] + base["v"] + 1e-7)

        def frozen(q: list[float], t: Box = t, beta0: float = beta0) -> float:
            g = ref_box_terms(q, t)
            return 1 - g["iou"] ** 3 + (g["rho2"] / g["c2"]) ** 3 + (beta0 * g["v"]) ** 3

        rows.append(finite_difference(frozen, p))
    torch.testing.assert_close(got, torch.tensor(rows, dtype=torch.float64), atol=2e-6, rtol=1e-5)


EXACT_GRADIENT = [
    (F.focal_eiou_loss, {"detach_iou": False}),
    (F.focal_eiou_loss, {"detach_iou": False, "gamma": 2.0}),
    (F.siou_loss, {}),
    (F.siou_loss, {"theta": 2.0}),
    (F.alpha_iou_loss, {}),
    (F.alpha_iou_loss, {"kind": "giou", "alpha": 2.0}),
    (F.alpha_iou_loss, {"kind": "diou", "alpha": 0.5}),
    (F.mpdiou_loss, {"image_size": (64, 48)}),
    (F.inner_iou_loss, {}),
    (F.inner_iou_loss, {"kind": "giou", "ratio": 1.2}),
    (F.inner_iou_loss, {"kind": "eiou", "ratio": 0.6}),
    (F.inner_iou_loss, {"kind": "siou"}),
    (F.nwd_loss, {}),
    (F.nwd_loss, {"box_format": "cxcywh"}),
]


@pytest.mark.parametrize(("fn", "options"), EXACT_GRADIENT)
def test_gradcheck_float64(fn, options) -> None:
    pred, target = random_pairs(9, seed=2)
    if options.get("box_format") == "cxcywh":
        pred, target = convert(pred, "xyxy", "cxcywh"), convert(target, "xyxy", "cxcywh")
    weight = torch.rand(9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: fn(p, target, weight=weight, **options), (pred.requires_grad_(True),), atol=1e-5, rtol=1e-4
    )


# ---------------------------------------------------------------- identities


def test_focal_eiou_with_gamma_zero_is_eiou() -> None:
    pred, target = random_pairs(600, seed=5)
    for detach in (True, False):
        p = pred.clone().requires_grad_(True)
        focal = F.focal_eiou_loss(p, target, gamma=0.0, detach_iou=detach, reduction="none")
        eiou = F.eiou_loss(p, target, reduction="none")
        torch.testing.assert_close(focal, eiou)
        torch.testing.assert_close(torch.autograd.grad(focal.sum(), p)[0], torch.autograd.grad(eiou.sum(), p)[0])


@pytest.mark.parametrize(
    ("kind", "base"), [("iou", F.iou_loss), ("giou", F.giou_loss), ("diou", F.diou_loss), ("ciou", F.ciou_loss)]
)
def test_alpha_iou_with_alpha_one_is_its_base_loss(kind: str, base: Callable[..., torch.Tensor]) -> None:
    pred, target = random_pairs(600, seed=6)
    p = pred.clone().requires_grad_(True)
    alpha = F.alpha_iou_loss(p, target, alpha=1.0, kind=kind, reduction="none")
    plain = base(p, target, reduction="none")
    torch.testing.assert_close(alpha, plain)
    torch.testing.assert_close(torch.autograd.grad(alpha.sum(), p)[0], torch.autograd.grad(plain.sum(), p)[0])


@pytest.mark.parametrize("options", [{}, {"alpha_gate": True}, {"grad_mode": "paper"}])
def test_ciou_equals_diou_at_equal_aspect_ratios(options: dict, backend: object) -> None:
    pred, target = random_pairs(400, seed=12)
    # give each prediction the target's aspect ratio (non-square), keeping its centre and area
    tw, th = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    cx, cy = (pred[:, 0] + pred[:, 2]) / 2, (pred[:, 1] + pred[:, 3]) / 2
    scale = torch.sqrt((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]) / (tw * th))
    pred = torch.stack((cx - scale * tw / 2, cy - scale * th / 2, cx + scale * tw / 2, cy + scale * th / 2), dim=-1)
    assert ((tw / th - 1).abs() > 0.05).float().mean() > 0.9  # really non-square
    p = pred.clone().requires_grad_(True)
    ciou = F.ciou_loss(p, target, reduction="none", **options)
    diou = F.diou_loss(p, target, reduction="none")
    torch.testing.assert_close(ciou, diou, atol=1e-9, rtol=0)
    torch.testing.assert_close(
        torch.autograd.grad(ciou.sum(), p)[0], torch.autograd.grad(diou.sum(), p)[0], atol=1e-7, rtol=0
    )


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou", "eiou", "siou"])
def test_inner_iou_with_ratio_one_is_the_base_loss(kind: str) -> None:
    pred, target = random_pairs(300, seed=13)
    base = {
        "iou": F.iou_loss,
        "giou": F.giou_loss,
        "diou": F.diou_loss,
        "ciou": F.ciou_loss,
        "eiou": F.eiou_loss,
        "siou": F.siou_loss,
    }[kind]
    out = F.inner_iou_loss(pred, target, ratio=1.0, kind=kind, reduction="none")
    torch.testing.assert_close(out, base(pred, target, reduction="none"))


def test_wiou_v3_focus_is_one_at_outlier_degree_delta() -> None:
    pred, target = random_pairs(30, seed=14)
    l_iou = F.iou_loss(pred, target, reduction="none")  # 1 - IoU
    for i in range(5):  # one box at a time: mean chosen so that beta = delta = 3
        p, t = pred[i : i + 1], target[i : i + 1]
        mean = l_iou[i].item() / 3.0
        v3 = F.wiou_loss(p, t, iou_mean=mean, momentum=0.0)
        torch.testing.assert_close(v3, F.wiou_loss(p, t, version="v1"))


def test_box_formats_agree() -> None:
    pred, target = random_pairs(200, seed=15)
    cases: list[tuple[Callable[..., torch.Tensor], dict]] = [
        (F.focal_eiou_loss, {}),
        (F.siou_loss, {}),
        (F.alpha_iou_loss, {"kind": "ciou"}),
        (F.wiou_loss, {}),
        (F.mpdiou_loss, {"image_size": (100, 100)}),
        (F.inner_iou_loss, {"kind": "diou"}),
        (F.nwd_loss, {}),
    ]
    for fmt in ("xywh", "cxcywh"):
        p, t = convert(pred, "xyxy", fmt), convert(target, "xyxy", fmt)
        for fn, options in cases:
            torch.testing.assert_close(fn(p, t, box_format=fmt, **options), fn(pred, target, **options))


def test_shapes_broadcast_to_a_matrix() -> None:
    pred, target = random_pairs(4, seed=16)
    out = F.nwd_loss(pred[:, None, :], target[None, :, :], reduction="none")
    assert out.shape == (4, 4)
    torch.testing.assert_close(out.diagonal(), F.nwd_loss(pred, target, reduction="none"))
    out = F.mpdiou_loss(pred[:, None, :], target[None, :, :], image_size=(50, 50), reduction="none")
    torch.testing.assert_close(out[2, 3], F.mpdiou_loss(pred[2], target[3], image_size=(50, 50)))


# ---------------------------------------------------------------- Wise-IoU's running mean


def test_wiou_module_keeps_a_running_mean_in_training_only() -> None:
    pred, target = random_pairs(20, seed=17)
    l_iou = F.iou_loss(pred, target, reduction="none")  # 1 - IoU
    batch_mean = l_iou.mean()
    loss = N.WIoULoss(momentum=0.1)
    assert torch.isnan(loss.running_iou_mean)
    # first training batch: the running mean starts at the batch mean, as the function's default
    torch.testing.assert_close(loss(pred, target), F.wiou_loss(pred, target))
    torch.testing.assert_close(loss.running_iou_mean, batch_mean.float())
    # second batch (half of it): moved by momentum, then used
    half_mean = l_iou[:10].mean()
    expected = F.wiou_loss(pred[:10], target[:10], iou_mean=batch_mean.item(), momentum=0.1)
    torch.testing.assert_close(loss(pred[:10], target[:10]), expected)
    torch.testing.assert_close(loss.running_iou_mean, (0.9 * batch_mean + 0.1 * half_mean).float())
    # eval: used as it is, not updated
    state = loss.running_iou_mean.clone()
    loss.eval()
    expected = F.wiou_loss(pred, target, iou_mean=state.item(), momentum=0.0)
    torch.testing.assert_close(loss(pred, target), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(loss.running_iou_mean, state)
    # it is saved and restored with the model
    fresh = N.WIoULoss(momentum=0.1)
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.running_iou_mean, state)


def test_wiou_module_authors_start_and_empty_batches() -> None:
    pred, target = random_pairs(8, seed=18)
    batch_mean = F.iou_loss(pred, target).item()
    loss = N.WIoULoss(iou_mean=1.0, momentum=0.01)  # the authors' code starts at 1
    loss(pred, target)
    assert loss.running_iou_mean.item() == pytest.approx(0.99 + 0.01 * batch_mean, rel=1e-6)
    before = loss.running_iou_mean.clone()
    empty = loss(pred[:0], target[:0])
    assert empty.item() == 0.0 and torch.equal(loss.running_iou_mean, before)
    v1 = N.WIoULoss(version="v1")
    v1(pred, target)
    assert torch.isnan(v1.running_iou_mean)  # v1 has no state to update


def test_wiou_identical_boxes_give_zero_not_nan() -> None:
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [2.0, 2.0, 5.0, 9.0]], requires_grad=True)
    loss = F.wiou_loss(boxes, boxes.detach())  # every 1 - IoU is 0: mean 0, outlier degree 0
    assert loss.item() == 0.0
    loss.backward()
    assert boxes.grad is not None and torch.isfinite(boxes.grad).all()


# ---------------------------------------------------------------- degenerate boxes, dtypes

BOX_KEYS = sorted(k for k, spec in LOSSES.items() if spec.inputs == "boxes")
DEGENERATE: dict[str, tuple[Box, Box]] = {
    "identical": ((1.0, 2.0, 4.0, 3.0), (1.0, 2.0, 4.0, 3.0)),
    "zero width": ((2.0, 1.0, 2.0, 5.0), (1.0, 1.0, 4.0, 3.0)),
    "zero height": ((1.0, 2.0, 6.0, 2.0), (1.0, 1.0, 4.0, 3.0)),
    "point": ((2.0, 2.0, 2.0, 2.0), (1.0, 1.0, 4.0, 3.0)),
    "two equal points": ((2.0, 2.0, 2.0, 2.0), (2.0, 2.0, 2.0, 2.0)),
    "inverted": ((4.0, 3.0, 1.0, 1.0), (1.0, 1.0, 4.0, 3.0)),
    "tiny": ((0.0, 0.0, 1e-6, 2e-6), (0.0, 0.0, 2e-6, 1e-6)),
    "huge": ((0.0, 0.0, 1e5, 2e5), (5e4, 0.0, 2e5, 1e5)),
    "far apart": ((0.0, 0.0, 1.0, 2.0), (1e4, 1e4, 1e4 + 3.0, 1e4 + 1.0)),
    "touching": ((0.0, 0.0, 2.0, 1.0), (2.0, 0.0, 5.0, 1.0)),
}


def call_options(key: str) -> dict:
    return dict(LOSSES[key].call_options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("key", BOX_KEYS)
def test_degenerate_boxes_give_finite_loss_and_gradient(
    key: str, case: str, dtype: torch.dtype, backend: object
) -> None:
    p, t = DEGENERATE[case]
    pred = torch.tensor([p], dtype=dtype, requires_grad=True)
    target = torch.tensor([t], dtype=dtype)
    loss = LOSSES[key].function(pred, target, **call_options(key))
    assert torch.isfinite(loss), (key, case, loss)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all(), (key, case, pred.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("key", BOX_KEYS)
def test_half_precision_300_pixel_boxes(key: str, dtype: torch.dtype, backend: object) -> None:
    # areas of 300-pixel boxes (9e4) overflow float16 (max 65504): computed in float32
    pred = torch.tensor([[100.0, 120.0, 400.0, 420.0], [0.0, 0.0, 310.0, 290.0]], dtype=dtype, requires_grad=True)
    target = torch.tensor([[110.0, 100.0, 420.0, 380.0], [20.0, 10.0, 300.0, 330.0]], dtype=dtype)
    options = call_options(key)
    if key == "mpdiou":
        options = {"image_size": (640, 640)}
    out = LOSSES[key].function(pred, target, reduction="none", **options)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = LOSSES[key].function(pred.detach().double(), target.double(), reduction="none", **options)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert pred.grad is not None and pred.grad.dtype == dtype and torch.isfinite(pred.grad).all()


def test_target_needs_no_gradient_and_gets_none() -> None:
    pred, target = random_pairs(5, seed=19)
    pred.requires_grad_(True)
    for key in BOX_KEYS:
        LOSSES[key].function(pred, target, **call_options(key)).backward()
    assert target.grad is None and pred.grad is not None


# ---------------------------------------------------------------- errors

BAD = [
    (lambda p, t: F.focal_eiou_loss(p, t, gamma=-0.5), "gamma"),
    (lambda p, t: F.focal_eiou_loss(p, t, detach_iou=1), "detach_iou"),
    (lambda p, t: F.siou_loss(p, t, theta=0.5), "theta"),
    (lambda p, t: F.alpha_iou_loss(p, t, alpha=0.0), "alpha"),
    (lambda p, t: F.alpha_iou_loss(p, t, alpha=-3.0), "alpha"),
    (lambda p, t: F.alpha_iou_loss(p, t, kind="eiou"), "kind"),
    (lambda p, t: F.wiou_loss(p, t, version="v2"), "version"),
    (lambda p, t: F.wiou_loss(p, t, alpha=0.0), "alpha"),
    (lambda p, t: F.wiou_loss(p, t, delta=-3.0), "delta"),
    (lambda p, t: F.wiou_loss(p, t, momentum=1.5), "momentum"),
    (lambda p, t: F.wiou_loss(p, t, iou_mean=0.0), "iou_mean"),
    (lambda p, t: F.wiou_loss(p, t, iou_mean=torch.ones(2)), "iou_mean"),
    (lambda p, t: F.mpdiou_loss(p, t), "image_size"),
    (lambda p, t: F.mpdiou_loss(p, t, image_size=(0, 480)), "image_size"),
    (lambda p, t: F.mpdiou_loss(p, t, image_size=(640,)), "image_size"),
    (lambda p, t: N.MPDIoULoss()(p, t), "image_size"),
    (lambda p, t: F.inner_iou_loss(p, t, ratio=0.0), "ratio"),
    (lambda p, t: F.inner_iou_loss(p, t, kind="wiou"), "kind"),
    (lambda p, t: F.nwd_loss(p, t, constant=-12.8), "constant"),
    (lambda p, t: F.ciou_loss(p, t, grad_mode="approx"), "grad_mode"),
    (lambda p, t: F.iou_loss(p, t, mode="sqrt"), "mode"),
    (lambda p, t: F.siou_loss(p, t, box_format="ltrb"), "box_format"),
    (lambda p, t: F.nwd_loss(p, t, eps=0.0), "eps"),
    (lambda p, t: F.wiou_loss(p[:, :3], t), "pred"),
    (lambda p, t: F.alpha_iou_loss(p, t[:2, None].expand(2, 2, 4).reshape(4, 4)[:3]), "target"),
]


@pytest.mark.parametrize(("call", "argument"), BAD)
def test_bad_arguments_raise_naming_them(call, argument: str) -> None:
    pred, target = random_pairs(4, seed=20)
    with pytest.raises(DetLossError, match=f"`{argument}`"):
        call(pred, target)

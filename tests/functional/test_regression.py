"""The Ln family: goldens by hand, an independent reference, identities, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import functional as F
from detloss import nn as N
from detloss.boxes import BoxCoder
from detloss.errors import DetLossError
from tests.reference import ref_balanced_l1, ref_huber, ref_l1, ref_l2, ref_smooth_l1

B = math.exp(3.0) - 1  # balanced L1's b for alpha 0.5, gamma 1.5: 19.085537

# x = pred - target = (0.5, -2, 3), by hand:
#   l1 0.5, 2, 3;  l2 0.25, 4, 9
#   smooth L1, beta 1: 0.5 * 0.25 = 0.125, 2 - 0.5 = 1.5, 3 - 0.5 = 2.5
#   smooth L1, beta 4: 0.25 / 8 = 0.03125, 4 / 8 = 0.5, 9 / 8 = 1.125 (all inside)
#   Huber, delta 2: 0.125, 0.5 * 4 = 2 (|x| <= delta), 2 * (3 - 1) = 4
#   balanced L1 (0.5, 1.5, 1): 0.5/b (b/2 + 1) ln(b/2 + 1) - 0.25 = 0.400568;
#     1.5 * 2 + 1.5/b - 0.5 = 2.578594; 1.5 * 3 + 1.5/b - 0.5 = 4.078594
#   balanced L1 with beta 2 (= 2 * L(x / 2)): 2 * (0.5/b (b/4 + 1) ln(b/4 + 1) - 0.125) = 0.280073
#     (0.5/b = 0.026198, b/4 + 1 = 5.771384, ln = 1.752912); |x| = 2 is the boundary: 2 * 1.078594 = 2.157187;
#     2 * (1.5 * 1.5 + 1.5/b - 0.5) = 3.657187
X = (0.5, -2.0, 3.0)
GOLDEN = [
    (F.l1_loss, {}, (0.5, 2.0, 3.0)),
    (F.l2_loss, {}, (0.25, 4.0, 9.0)),
    (F.smooth_l1_loss, {}, (0.125, 1.5, 2.5)),
    (F.smooth_l1_loss, {"beta": 4.0}, (0.03125, 0.5, 1.125)),
    (F.smooth_l1_loss, {"beta": 0.0}, (0.5, 2.0, 3.0)),
    (F.huber_loss, {"delta": 2.0}, (0.125, 2.0, 4.0)),
    (F.balanced_l1_loss, {}, (0.400568, 2.578594, 4.078594)),
    (F.balanced_l1_loss, {"beta": 2.0}, (0.280073, 2.157187, 3.657187)),
]


@pytest.mark.parametrize(("fn", "options", "expected"), GOLDEN)
def test_golden_values(fn, options, expected) -> None:
    pred = torch.tensor(X, dtype=torch.float64)
    out = fn(pred, torch.zeros(3, dtype=torch.float64), reduction="none", **options)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), atol=2e-6, rtol=0)


def test_balanced_l1_constants_of_the_paper() -> None:
    # alpha ln(b + 1) = gamma defines b; both branches meet at 1.0786 for the defaults (Pang et al., CVPR 2019)
    assert B == pytest.approx(19.0855, abs=1e-4)
    assert 0.5 * math.log(B + 1) == pytest.approx(1.5)
    assert 1.5 + 1.5 / B - 0.5 == pytest.approx(1.0786, abs=1e-4)
    one = F.balanced_l1_loss(torch.tensor([1.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert one.item() == pytest.approx(1.0786, abs=1e-4)


def random_values(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-6, 3, generator=g))  # 2.5e-3 .. 20
    pred = torch.randn(n, generator=g, dtype=torch.float64) * scale
    target = torch.randn(n, generator=g, dtype=torch.float64) * scale
    return pred, target


REFERENCE_CASES = [
    (F.l1_loss, {}, ref_l1),
    (F.l2_loss, {}, ref_l2),
    (F.smooth_l1_loss, {}, ref_smooth_l1),
    (F.smooth_l1_loss, {"beta": 1 / 9}, lambda x: ref_smooth_l1(x, 1 / 9)),
    (F.smooth_l1_loss, {"beta": 0.11}, lambda x: ref_smooth_l1(x, 0.11)),
    (F.smooth_l1_loss, {"beta": 3.0}, lambda x: ref_smooth_l1(x, 3.0)),
    (F.smooth_l1_loss, {"beta": 0.0}, ref_l1),
    (F.huber_loss, {}, ref_huber),
    (F.huber_loss, {"delta": 0.3}, lambda x: ref_huber(x, 0.3)),
    (F.huber_loss, {"delta": 5.0}, lambda x: ref_huber(x, 5.0)),
    (F.balanced_l1_loss, {}, ref_balanced_l1),
    (F.balanced_l1_loss, {"beta": 0.2}, lambda x: ref_balanced_l1(x, beta=0.2)),
    (F.balanced_l1_loss, {"beta": 2.5}, lambda x: ref_balanced_l1(x, beta=2.5)),
    (F.balanced_l1_loss, {"alpha": 1.0, "gamma": 2.0}, lambda x: ref_balanced_l1(x, 1.0, 2.0)),
]


@pytest.mark.parametrize(("fn", "options", "ref"), REFERENCE_CASES)
def test_matches_reference_on_random_values(fn, options, ref) -> None:
    pred, target = random_values(3000, seed=11)
    out = fn(pred, target, reduction="none", **options)
    expected = torch.tensor([ref(float(p - t)) for p, t in zip(pred, target)], dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_smooth_l1_beta_to_zero_is_l1_without_division_by_zero() -> None:
    pred = torch.tensor([0.0, 1e-9, -0.3, 2.0, -7.0], dtype=torch.float64, requires_grad=True)
    target = torch.zeros(5, dtype=torch.float64)
    l1 = F.l1_loss(pred, target, reduction="none")
    for beta in (0.0, 1e-300, 1e-12):
        out = F.smooth_l1_loss(pred, target, beta=beta, reduction="none")
        torch.testing.assert_close(out, l1, atol=1e-12, rtol=0)
        (grad,) = torch.autograd.grad(out.sum(), pred)
        assert torch.isfinite(grad).all()
    (grad,) = torch.autograd.grad(F.smooth_l1_loss(pred, target, beta=0.0, reduction="sum"), pred)
    torch.testing.assert_close(grad, torch.tensor([0.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64))


@pytest.mark.parametrize("delta", [0.05, 0.5, 1.0, 3.0])
def test_huber_is_delta_times_smooth_l1(delta: float) -> None:
    pred, target = random_values(500, seed=3)
    pred.requires_grad_(True)
    huber = F.huber_loss(pred, target, delta=delta, reduction="none")
    smooth = F.smooth_l1_loss(pred, target, beta=delta, reduction="none")
    torch.testing.assert_close(huber, delta * smooth)
    g_huber = torch.autograd.grad(huber.sum(), pred)[0]
    g_smooth = torch.autograd.grad(smooth.sum(), pred)[0]
    torch.testing.assert_close(g_huber, delta * g_smooth)


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.5, 1.5), (1.0, 0.7)])
def test_balanced_l1_continuous_with_continuous_gradient_at_beta(beta: float, alpha: float, gamma: float) -> None:
    h = 1e-7
    x = torch.tensor([beta - h, beta + h, -beta + h, -beta - h], dtype=torch.float64, requires_grad=True)
    out = F.balanced_l1_loss(
        x, torch.zeros(4, dtype=torch.float64), alpha=alpha, gamma=gamma, beta=beta, reduction="none"
    )
    assert abs(out[0].item() - out[1].item()) < 1e-6
    assert abs(out[2].item() - out[3].item()) < 1e-6
    b = math.exp(gamma / alpha) - 1
    assert out[0].item() == pytest.approx(beta * (gamma + gamma / b - alpha), abs=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), x)
    # inside: alpha ln(b |x| / beta + 1) -> alpha ln(b + 1) = gamma; outside: gamma
    torch.testing.assert_close(
        grad, torch.tensor([gamma, gamma, -gamma, -gamma], dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_balanced_l1_gradient_inside_is_alpha_log() -> None:
    x = torch.tensor([0.1, 0.4, -0.9], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(F.balanced_l1_loss(x, torch.zeros(3, dtype=torch.float64), reduction="sum"), x)
    expected = [math.copysign(0.5 * math.log(B * abs(v) + 1), v) for v in (0.1, 0.4, -0.9)]
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))


GRADCHECK = [
    (F.l1_loss, {}),
    (F.l2_loss, {}),
    (F.smooth_l1_loss, {}),
    (F.smooth_l1_loss, {"beta": 0.0}),
    (F.smooth_l1_loss, {"beta": 0.3}),
    (F.huber_loss, {"delta": 0.4}),
    (F.balanced_l1_loss, {}),
    (F.balanced_l1_loss, {"beta": 0.5, "alpha": 0.8, "gamma": 1.0}),
]


@pytest.mark.parametrize("residual", [1e-8, 1e-6, 1e-4, -1e-6])
def test_float32_gradient_at_small_residuals(residual: float) -> None:
    """Where a converging regressor lives: the gradient of smooth L1 (beta 1) and Huber (delta 1)
    is the residual itself, that of balanced L1 alpha ln(1 + b |x| / beta) sign(x), in float32
    to its rounding (no (x / beta - 1) + 1 or ln(1 + z) + 1 - 1 that cancels)."""
    x = torch.tensor([residual], dtype=torch.float32)
    r = x.double().item()  # the residual as float32 holds it
    cases = [
        (F.smooth_l1_loss, {}, r),
        (F.huber_loss, {}, r),
        (F.smooth_l1_loss, {"beta": 0.11}, r / 0.11),
        (F.huber_loss, {"delta": 0.5}, r),
        (F.balanced_l1_loss, {}, math.copysign(0.5 * math.log1p(B * abs(r)), r)),
        (F.balanced_l1_loss, {"beta": 2.0}, math.copysign(0.5 * math.log1p(B * abs(r) / 2.0), r)),
    ]
    for fn, options, expected in cases:
        pred = x.clone().requires_grad_(True)
        fn(pred, torch.zeros(1), reduction="sum", **options).backward()
        assert pred.grad is not None
        assert pred.grad.item() == pytest.approx(expected, rel=1e-6, abs=0), (fn.__name__, options)


def test_gradient_at_the_kink_is_one_sided_and_continuous() -> None:
    # at |x| = beta the two branches have the same slope, and the gradient is that slope once
    for fn, options, slope in ((F.smooth_l1_loss, {"beta": 0.5}, 1.0), (F.huber_loss, {"delta": 0.5}, 0.5)):
        pred = torch.tensor([0.5, -0.5], dtype=torch.float64, requires_grad=True)
        fn(pred, torch.zeros(2, dtype=torch.float64), reduction="sum", **options).backward()
        assert pred.grad is not None
        assert pred.grad.tolist() == [slope, -slope]
    pred = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    F.balanced_l1_loss(pred, torch.zeros(1, dtype=torch.float64), reduction="sum").backward()
    assert pred.grad is not None and pred.grad.item() == pytest.approx(1.5, rel=1e-12)  # gamma


@pytest.mark.parametrize(("fn", "options"), GRADCHECK)
def test_gradcheck_float64(fn, options) -> None:
    g = torch.Generator().manual_seed(5)
    # values away from the kinks (0 and +-beta) so finite differences are valid
    magnitude = torch.tensor([0.05, 0.2, 0.45, 0.8, 1.3, 2.0, 4.0, 0.15], dtype=torch.float64)
    sign = torch.where(torch.rand(8, generator=g) > 0.5, 1.0, -1.0).double()
    target = torch.randn(8, generator=g, dtype=torch.float64)
    pred = (target + sign * magnitude).requires_grad_(True)
    weight = torch.rand(8, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: fn(p, target, weight=weight, **options), (pred,))


def test_any_shape_and_weight_broadcast() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 5, generator=g)
    target = torch.randn(2, 3, 5, generator=g)
    for fn in (F.l1_loss, F.l2_loss, F.smooth_l1_loss, F.huber_loss, F.balanced_l1_loss):
        none = fn(pred, target, reduction="none")
        assert none.shape == (2, 3, 5)
        weight = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0])  # per coordinate, broadcast
        torch.testing.assert_close(fn(pred, target, weight=weight, reduction="sum"), (none * weight).sum())


def test_on_box_coder_deltas() -> None:
    # the R-CNN use: regress encoded deltas (weights 10, 10, 5, 5), smooth L1 with beta 1/9
    coder = BoxCoder()
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]])
    gt = torch.tensor([[1.0, 0.0, 11.0, 20.0], [20.0, 20.0, 40.0, 30.0]])
    target = coder.encode(proposals, gt)
    # box 1: t_x = 10 * 1/10 = 1, t_y = 10 * 5/10 = 5, t_w = 0, t_h = 5 ln 2; box 2: all 0
    torch.testing.assert_close(target[0], torch.tensor([1.0, 5.0, 0.0, 5 * math.log(2)]))
    pred = torch.zeros(2, 4, requires_grad=True)
    loss = F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum", avg_factor=None)
    # |t| - beta/2 for the three deltas above beta: 1 + 5 + 3.465736 - 3 / 18
    assert loss.item() == pytest.approx(1 + 5 + 5 * math.log(2) - 3 / 18, abs=1e-5)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    # decoding the regressed deltas gives the boxes back
    torch.testing.assert_close(coder.decode(proposals, target), gt, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype: torch.dtype) -> None:
    # 300-pixel errors: x^2 = 90,000 overflows float16 (max 65,504)
    pred = torch.tensor([300.0, -300.0, 0.5], dtype=dtype, requires_grad=True)
    target = torch.zeros(3, dtype=dtype)
    for fn in (F.l1_loss, F.l2_loss, F.smooth_l1_loss, F.huber_loss, F.balanced_l1_loss):
        out = fn(pred, target, reduction="none")
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        ref = fn(pred.detach().double(), target.double(), reduction="none")
        torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
        (grad,) = torch.autograd.grad(out.sum(), pred)
        assert grad.dtype == dtype and torch.isfinite(grad).all()
    assert F.l2_loss(pred, target, reduction="none")[0].item() == 90000.0


def test_non_finite_inputs_propagate() -> None:
    pred = torch.tensor([float("nan"), float("inf"), 1.0])
    out = F.smooth_l1_loss(pred, torch.zeros(3), reduction="none")
    assert math.isnan(out[0].item()) and math.isinf(out[1].item()) and out[2].item() == 0.5


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda p, t: F.smooth_l1_loss(p, t, beta=-0.1), "beta"),
        (lambda p, t: F.smooth_l1_loss(p, t, beta=float("nan")), "beta"),
        (lambda p, t: F.huber_loss(p, t, delta=-1.0), "delta"),
        (lambda p, t: F.huber_loss(p, t, delta=0.0), "delta"),
        (lambda p, t: F.balanced_l1_loss(p, t, beta=-1.0), "beta"),
        (lambda p, t: F.balanced_l1_loss(p, t, beta=0.0), "beta"),
        (lambda p, t: F.balanced_l1_loss(p, t, alpha=0.0), "alpha"),
        (lambda p, t: F.balanced_l1_loss(p, t, gamma=-1.5), "gamma"),
        (lambda p, t: F.l1_loss(p, t[:2]), "target"),
        (lambda p, t: F.l2_loss(p.long(), t), "pred"),
        (lambda p, t: F.l1_loss(p, t, reduction="avg"), "reduction"),
    ],
)
def test_bad_arguments_raise_naming_them(call, argument: str) -> None:
    with pytest.raises(DetLossError, match=f"`{argument}`"):
        call(torch.zeros(3), torch.zeros(3))


def test_error_message_names_the_function() -> None:
    with pytest.raises(DetLossError, match=r"smooth_l1_loss\(\): argument `beta` expected a number in \[0.0, inf\]"):
        F.smooth_l1_loss(torch.zeros(3), torch.zeros(3), beta=-1)


def test_modules_store_options_and_match_functions() -> None:
    pred, target = random_values(50, seed=9)
    module = N.BalancedL1Loss(beta=0.5, reduction="sum", loss_weight=2.0)
    torch.testing.assert_close(module(pred, target), 2.0 * F.balanced_l1_loss(pred, target, beta=0.5, reduction="sum"))
    assert "beta=0.5" in repr(module)
    torch.testing.assert_close(N.SmoothL1Loss(beta=0.0)(pred, target), N.L1Loss()(pred, target))
    torch.testing.assert_close(N.HuberLoss(delta=2.0)(pred, target), 2.0 * N.SmoothL1Loss(beta=2.0)(pred, target))
    torch.testing.assert_close(N.L2Loss()(pred, target), torch.nn.functional.mse_loss(pred, target))

"""The binary family at saturating logits: every backend against closed forms written here.

Where ``sigmoid(x)`` rounds to 1 (``x >= 37`` in float64, ``x >= 17`` in float32), ``p - t``
is 0 for ``t = 1`` while the true gradient of the BCE is ``-sigmoid(-x)``, e.g. -4.25e-18 at
logit 40. Each backend is called through the public API (``detloss.set_backend`` and the
loss functions) and compared, value and gradient w.r.t. the logits, with the formulas below,
evaluated in float64 with ``1 - p`` taken as ``sigmoid(-x)`` (never a subtraction) on the
inputs as rounded to the tested dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import detloss
from detloss import functional as F

LOGITS = (-100.0, -40.0, -17.0, -5.0, -1.0, 0.0, 1.0, 5.0, 17.0, 40.0, 100.0)
TARGETS = (0.0, 1.0, 0.25, 0.7)
BACKENDS = ("reference", "fused", "native")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _softplus(x: float) -> float:
    """ln(1 + e^x) for any x."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _terms(x: float, y: float) -> tuple[float, float, float, float]:
    """p, q = 1 - p, the BCE and its derivative in x, (1 - y) p - y q."""
    p, q = _sigmoid(x), _sigmoid(-x)
    ce = y * _softplus(-x) + (1 - y) * _softplus(x)
    return p, q, ce, (1 - y) * p - y * q


def bce(x: float, y: float) -> tuple[float, float]:
    _, _, ce, dce = _terms(x, y)
    return ce, dce


def focal(alpha: float | None, gamma: float) -> Callable[[float, float], tuple[float, float]]:
    """-alpha_t (1 - p_t)^gamma log p_t, m = 1 - p_t = y q + (1 - y) p, dm/dx = (1 - 2y) p q."""

    def value_and_grad(x: float, y: float) -> tuple[float, float]:
        p, q, ce, dce = _terms(x, y)
        m = y * q + (1 - y) * p
        a = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
        value = a * m**gamma * ce
        grad = a * (gamma * m ** (gamma - 1) * (1 - 2 * y) * p * q * ce + m**gamma * dce)
        return value, grad

    return value_and_grad


def quality(beta: float) -> Callable[[float, float], tuple[float, float]]:
    """|y - p|^beta BCE, d = y - p = y q - (1 - y) p, d|d|/dx = -sign(d) p q."""

    def value_and_grad(x: float, y: float) -> tuple[float, float]:
        p, q, ce, dce = _terms(x, y)
        d = y * q - (1 - y) * p
        sign = (d > 0) - (d < 0)
        value = abs(d) ** beta * ce
        grad = -beta * abs(d) ** (beta - 1) * sign * p * q * ce + abs(d) ** beta * dce
        return value, grad

    return value_and_grad


def varifocal(alpha: float, gamma: float) -> Callable[[float, float], tuple[float, float]]:
    """y BCE for y > 0; alpha p^gamma BCE for y = 0 (BCE = softplus(x), its derivative p)."""

    def value_and_grad(x: float, y: float) -> tuple[float, float]:
        p, q, ce, dce = _terms(x, y)
        if y > 0:
            return y * ce, y * dce
        return alpha * p**gamma * ce, alpha * (gamma * p**gamma * q * ce + p**gamma * p)

    return value_and_grad


KINDS: dict[str, tuple[Callable[..., torch.Tensor], Callable[[float, float], tuple[float, float]]]] = {
    "bce": (F.binary_cross_entropy_loss, bce),
    "focal": (F.sigmoid_focal_loss, focal(0.25, 2.0)),
    "focal_gamma_3": (lambda x, y, **kw: F.sigmoid_focal_loss(x, y, alpha=None, gamma=3.0, **kw), focal(None, 3.0)),
    "quality": (F.quality_focal_loss, quality(2.0)),
    "quality_beta_1": (lambda x, y, **kw: F.quality_focal_loss(x, y, beta=1.0, **kw), quality(1.0)),
    "varifocal": (F.varifocal_loss, varifocal(0.75, 2.0)),
}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> object:
    with detloss.use_backend(request.param):
        info = detloss.backend_info()
        if info.cpu != request.param:
            pytest.skip(f"{request.param} backend unavailable here: {info.native_failure}")
        yield request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_saturating_logits_against_closed_forms(kind: str, dtype: torch.dtype, backend: object) -> None:
    loss_fn, closed_form = KINDS[kind]
    grid = [(x, y) for x in LOGITS for y in TARGETS]
    x = torch.tensor([g[0] for g in grid], dtype=dtype, requires_grad=True)
    y = torch.tensor([g[1] for g in grid], dtype=dtype)
    value = loss_fn(x, y, reduction="none")
    (grad,) = torch.autograd.grad(value.sum(), x)
    # the closed forms on the inputs as the dtype holds them (0.7 is 0.699999988 in float32)
    expected = [closed_form(xi, yi) for xi, yi in zip(x.tolist(), y.tolist())]
    want_value = torch.tensor([e[0] for e in expected], dtype=torch.float64)
    want_grad = torch.tensor([e[1] for e in expected], dtype=torch.float64)
    if dtype == torch.float64:
        tol = {"rtol": 1e-12, "atol": 1e-300}
    else:  # relative to float32's precision; below its normal range (1.2e-38) only the absolute size counts
        tol = {"rtol": 1e-5, "atol": 1e-37}
    torch.testing.assert_close(value.double(), want_value, **tol)
    torch.testing.assert_close(grad.double(), want_grad, **tol)


def test_bce_gradient_at_logit_40_is_minus_sigmoid_of_minus_40(backend: object) -> None:
    """The number from the cross-check: -4.25e-18 (not 0) in float64, and in float32 too."""
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor([40.0], dtype=dtype, requires_grad=True)
        F.binary_cross_entropy_loss(x, torch.ones(1, dtype=dtype), reduction="sum").backward()
        assert x.grad is not None
        assert x.grad.item() == pytest.approx(-math.exp(-40.0), rel=1e-6, abs=0)  # -4.248354e-18

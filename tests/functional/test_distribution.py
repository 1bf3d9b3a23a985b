"""Distribution Focal Loss and the distribution's expectation (GFL)."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import functional as F
from tests import reference as R

DT = torch.float64


def close(actual: torch.Tensor, expected: object) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype))


def test_golden_distribution_focal() -> None:
    pred = torch.log(torch.tensor([[1.0, 1.0, 6.0, 2.0, 1.0]], dtype=DT))  # bins 0..4, S = (1, 1, 6, 2, 1) / 11
    # y = 2.25: -(0.75 ln 6/11 + 0.25 ln 2/11) = 0.4546017 + 0.4261870
    close(F.distribution_focal_loss(pred, torch.tensor([2.25], dtype=DT)), 0.8807887)
    close(F.distribution_focal_loss(pred, torch.tensor([2.0], dtype=DT)), math.log(11 / 6))  # an integer: one bin
    close(F.distribution_focal_loss(pred, torch.tensor([4.0], dtype=DT)), math.log(11))  # y = R: the last bin
    close(F.distribution_focal_loss(pred, torch.tensor([7.0], dtype=DT)), math.log(11))  # clipped to R
    close(F.distribution_focal_loss(pred, torch.tensor([-1.0], dtype=DT)), math.log(11))  # clipped to 0
    close(F.distribution_expectation(pred), [23 / 11])


@pytest.mark.parametrize("reg_max", [16, 7, 1])
def test_distribution_focal_matches_reference(reg_max: int) -> None:
    g = torch.Generator().manual_seed(reg_max)
    pred = torch.randn(6, 4, reg_max + 1, generator=g, dtype=DT) * 2
    target = torch.rand(6, 4, generator=g, dtype=DT) * reg_max
    target[0] = torch.tensor([0.0, float(reg_max), 1.0, reg_max - 0.01])
    out = F.distribution_focal_loss(pred, target, reduction="none")
    assert out.shape == (6, 4)
    ref = [[R.ref_distribution_focal(p, y) for p, y in zip(pr, tr)] for pr, tr in zip(pred.tolist(), target.tolist())]
    close(out, ref)
    close(F.distribution_expectation(pred), [[R.ref_distribution_expectation(p) for p in pr] for pr in pred.tolist()])


def test_minimum_is_the_two_bin_distribution_whose_expectation_is_the_target() -> None:
    y = 5.3
    probs = torch.full((17,), 1e-30, dtype=DT)
    probs[5], probs[6] = 0.7, 0.3
    pred = torch.log(probs / probs.sum()).requires_grad_(True)
    loss = F.distribution_focal_loss(pred, torch.tensor(y, dtype=DT))
    close(loss, -(0.7 * math.log(0.7) + 0.3 * math.log(0.3)))  # the entropy of (0.7, 0.3)
    (grad,) = torch.autograd.grad(loss, pred)
    assert grad.abs().max() < 1e-12  # stationary: the minimum
    close(F.distribution_expectation(pred.detach()), y)


def test_gradcheck_and_stability() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, 9, generator=g, dtype=DT).requires_grad_(True)
    target = torch.rand(3, 4, generator=g, dtype=DT) * 8
    assert torch.autograd.gradcheck(lambda p: F.distribution_focal_loss(p, target), (pred,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(F.distribution_expectation, (pred,), eps=1e-6, atol=1e-5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        big = (torch.tensor([1e4, -1e4, 0.0, 100.0, -100.0]).repeat(2, 1)).to(dtype).requires_grad_(True)
        loss = F.distribution_focal_loss(big, torch.tensor([0.5, 2.5]).to(dtype), reduction="none")
        assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
        x0, x1 = big[0, 0].float(), big[0, 1].float()  # 1e4 and -1e4 after rounding to dtype
        close(loss[0], 0.5 * (x0 - x1))  # 0.5 (-log S_0 = 0) + 0.5 (-log S_1 = x0 - x1)
        (grad,) = torch.autograd.grad(loss.sum(), big)
        assert torch.isfinite(grad.float()).all()
        assert torch.isfinite(F.distribution_expectation(big)).all()


def test_empty_input_is_zero_with_gradient() -> None:
    pred = torch.zeros(0, 4, 17, requires_grad=True)
    loss = F.distribution_focal_loss(pred, torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and pred.grad.shape == (0, 4, 17)
    assert F.distribution_expectation(pred).shape == (0, 4)

"""The rotated Gaussian losses as an operator (torch.ops.detloss.rotated_gaussian_loss): opcheck
as in test_ops.py, the native kernel's values and gradients against the losses' reference path
(float32 and float64), float64 gradcheck and the degenerate pairs. The losses call it on CPU
when the native backend is active (tests/_fused/test_rotated_native.py)."""

from __future__ import annotations

import math

import pytest
import torch

import detloss
from detloss import functional as F
from detloss.testing import random_rotated_boxes
from tests._fused.test_ops import need_native

OPS = torch.ops.detloss
#: (loss function, its options, the operator's kind, fun, tau)
CASES = [
    (F.probiou_loss, {}, ("bhattacharyya", "hellinger", 0.0)),
    (F.probiou_loss, {"mode": "l2"}, ("bhattacharyya", "none", 0.0)),
    (F.kld_loss, {}, ("kld", "log1p", 1.0)),
    (F.kld_loss, {"fun": "sqrt", "tau": 2.0}, ("kld", "sqrt", 2.0)),
    (F.gwd_loss, {}, ("gwd", "sqrt", 2.0)),
    (F.gwd_loss, {"fun": "log1p", "tau": 1.0}, ("gwd", "log1p", 1.0)),
]


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    detloss.set_backend(None)


def rotated_pairs(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions near their targets (centres within the sides, sides within e^+-0.5, any turn)."""
    g = torch.Generator().manual_seed(seed)
    target = random_rotated_boxes(n, generator=g)
    noise = torch.rand(n, 5, generator=g, dtype=torch.float64) * 2 - 1
    pred = target.clone()
    pred[:, :2] += noise[:, :2] * target[:, 2:4]
    pred[:, 2:4] *= torch.exp(0.5 * noise[:, 2:4])
    pred[:, 4] += 2 * noise[:, 4]
    return pred.to(dtype), target.to(dtype)


def degenerate_pairs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Identical, zero-width, negative-width, square turned by pi/2, far apart, tiny, huge."""
    rows = [
        ([3.0, 4.0, 5.0, 2.0, 0.3], [3.0, 4.0, 5.0, 2.0, 0.3]),
        ([3.0, 4.0, 0.0, 2.0, 0.3], [3.0, 4.0, 0.0, 2.0, 0.3]),
        ([3.0, 4.0, -1.0, 2.0, 0.3], [3.5, 4.0, 2.0, 2.0, 0.0]),
        ([0.0, 0.0, 2.0, 2.0, math.pi / 2], [0.0, 0.0, 2.0, 2.0, 0.0]),
        ([0.0, 0.0, 1.0, 1.0, 0.0], [1e4, -1e4, 1.0, 3.0, 1.0]),
        ([0.0, 0.0, 1e-6, 1e-6, 0.0], [1e-6, 0.0, 2e-6, 1e-6, 0.5]),
        ([0.0, 0.0, 1e6, 1e5, 0.0], [1e3, 0.0, 1e6, 1e5, 1e-3]),
    ]
    pred, target = zip(*rows)
    return torch.tensor(pred, dtype=dtype), torch.tensor(target, dtype=dtype)


def opcheck_samples() -> list[tuple[str, tuple[object, ...]]]:
    samples: list[tuple[str, tuple[object, ...]]] = []
    for dtype in (torch.float32, torch.float64):
        p, t = rotated_pairs(7, dtype)
        grad = torch.rand(7, dtype=dtype)
        for kind, fun, tau in (("bhattacharyya", "hellinger", 0.0), ("kld", "log1p", 1.0), ("gwd", "sqrt", 2.0)):
            options = (kind, fun, tau, 1e-7)
            samples.append(
                ("rotated_gaussian_loss", (p.clone().requires_grad_(True), t.clone().requires_grad_(True), *options))
            )
            samples.append(("rotated_gaussian_loss", (p.clone().requires_grad_(True), t, *options)))
            samples.append(("rotated_gaussian_loss_backward", (p, t, grad, *options, True)))
            samples.append(("rotated_gaussian_loss_backward", (p, t, None, *options, False)))
    return samples


SAMPLES = opcheck_samples()


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=[f"{n}-{i}" for i, (n, _) in enumerate(SAMPLES)])
def test_opcheck_rotated_operator(index: int) -> None:
    """Schema, fake kernel, autograd registration and AOT dispatch on the native kernel (the
    operator has no other CPU kernel)."""
    need_native()
    name, args = SAMPLES[index]
    torch.library.opcheck(getattr(OPS, name).default, args)


def test_the_cpu_kernel_is_rotated_cpp() -> None:
    need_native()
    table = torch._C._dispatch_dump_table("detloss::rotated_gaussian_loss")
    rows = dict(line.split(": ", 1) for line in table.splitlines() if ": " in line)
    assert "rotated.cpp" in rows["CPU"] and "ops.py" in rows["Meta"]


def _grads(loss: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    weight = torch.linspace(0.5, 1.5, len(loss), dtype=loss.dtype)
    return loss.detach(), *torch.autograd.grad((loss * weight).sum(), (pred, target))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0].__name__}-{c[2][1]}" for c in CASES])
def test_native_equals_the_reference(dtype: torch.dtype, case: int) -> None:
    need_native()
    fn, options, (kind, fun, tau) = CASES[case]
    pred, target = rotated_pairs(2000, dtype, seed=case)
    dp, dt = degenerate_pairs(dtype)
    pred, target = torch.cat((pred, dp)), torch.cat((target, dt))
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    native = _grads(OPS.rotated_gaussian_loss(p, t, kind, fun, tau, 1e-7), p, t)
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    with detloss.use_backend("reference"):
        reference = _grads(fn(p, t, reduction="none", **options), p, t)
    assert native[0].dtype == dtype
    # float32 agrees to float32 rounding of the reference's steps; the square roots of
    # near-identical pairs turn a rounding u of the distance into sqrt(u)
    rtol, atol = (1e-4, 4e-4) if dtype == torch.float32 else (1e-9, 2e-8)
    for ours, theirs in zip(native, reference):
        assert bool(torch.isfinite(ours).all())
        scale = theirs.abs().amax(dim=-1, keepdim=True).clamp(min=1.0) if theirs.dim() > 1 else 1.0
        torch.testing.assert_close(ours / scale, theirs / scale, rtol=rtol, atol=atol)


def test_native_operator_passes_gradcheck() -> None:
    need_native()
    pred, target = rotated_pairs(6, torch.float64, seed=5)
    for kind, fun, tau in (
        ("bhattacharyya", "hellinger", 0.0),
        ("bhattacharyya", "none", 0.0),
        ("kld", "log1p", 1.0),
        ("gwd", "sqrt", 2.0),
    ):
        p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda a, b, o=(kind, fun, tau): OPS.rotated_gaussian_loss(a, b, *o, 1e-7), (p, t)
        )


def test_a_double_backward_through_the_operator_says_it_is_not_implemented() -> None:
    need_native()
    pred, target = rotated_pairs(4, torch.float64)
    p = pred.clone().requires_grad_(True)
    loss = OPS.rotated_gaussian_loss(p, target, "gwd", "sqrt", 2.0, 1e-7).sum()
    (grad,) = torch.autograd.grad(loss, p, create_graph=True)
    with pytest.raises(RuntimeError, match="rotated_gaussian_loss_backward is not implemented"):
        grad.sum().backward()
    with detloss.use_backend("reference"):  # the reference path has them
        (grad,) = torch.autograd.grad(F.gwd_loss(p, target), p, create_graph=True)
    grad.sum().backward()
    assert bool(torch.isfinite(p.grad).all())

r"""The :math:`\ell_n` family of regression losses: elementwise on any tensor shape.

Every function takes ``pred`` and ``target`` of the same shape (raw coordinates, or the
R-CNN deltas of :class:`detloss.boxes.BoxCoder`), computes the elementwise loss of
``x = pred - target`` and reduces it with :func:`detloss.reduction.reduce_loss`. Half and
bfloat16 inputs are computed and returned in float32.

Each piecewise loss is written as one expression over ``q = min(|x|, beta)``, the part of
``|x|`` inside the quadratic (or logarithmic) zone, plus the linear remainder ``|x| - q``.
The branch that is not taken is never evaluated outside its zone, so no division by
``beta`` happens at ``beta = 0`` and no large value is ever formed and then discarded: the
loss and its gradient are finite for every finite input.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from detloss._checks import check_floating, check_range, check_same_device, check_same_shape, upcast
from detloss._typing import AvgFactor, Reduction
from detloss.reduction import reduce_loss

__all__ = ["balanced_l1_loss", "huber_loss", "l1_loss", "l2_loss", "smooth_l1_loss"]


class _BalancedInlier(torch.autograd.Function):
    """``f(z) = (1 + z) ln(1 + z) - z`` with its derivative ``ln(1 + z)`` written as such.

    Autograd of the expression itself computes ``f'(z)`` as ``ln(1 + z) + 1 - 1``, which loses
    every digit of a small ``z`` (float32: ``z = 1e-8`` gives 1.2e-7 for 1e-8); the backward
    here is ``log1p(z)``, exact to rounding, and differentiable again (``1 / (1 + z)``).
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        return (1 + z) * torch.log1p(z) - z

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad * torch.log1p(z)


def _difference(where: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Checked ``pred - target`` in float32 or wider."""
    check_floating(where, "pred", pred)
    check_floating(where, "target", target)
    check_same_shape(where, "pred", pred, "target", target)
    check_same_device(where, "pred", pred, "target", target)
    dtype = torch.promote_types(upcast(pred).dtype, upcast(target).dtype)
    return pred.to(dtype) - target.to(dtype)


def l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""L1 loss, the absolute error: :math:`\ell(x) = |x|`, ``x = pred - target``.

    The gradient is ``sign(x)`` (0 at ``x = 0``): constant in size, so outliers do not
    dominate, but it does not shrink near the optimum (DETR uses it, next to GIoU, on
    normalised ``cxcywh`` boxes).

    Args:
        pred: predictions (raw coordinates or encoded deltas), any shape, floating.
        target: regression targets, ``pred``'s shape.
        weight: broadcasts to ``pred``'s shape (e.g. ``(N, 1)``: one weight per row).
        reduction: ``"none"`` (``pred``'s shape), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements; below 1 it
            counts as 1.

    Shape:
        - pred, target: ``(*)``, the same.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> l1_loss(torch.tensor([0.5, -2.0, 3.0]), torch.zeros(3), reduction="none")
        tensor([0.5000, 2.0000, 3.0000])
        >>> l1_loss(torch.tensor([0.5, -2.0, 3.0]), torch.zeros(3))  # (0.5 + 2 + 3) / 3
        tensor(1.8333)
    """
    where = "l1_loss"
    loss = _difference(where, pred, target).abs()
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def l2_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""L2 loss, the squared error (MSE with the default ``reduction="mean"``): :math:`\ell(x) = x^2`.

    No factor 1/2 (as ``torch.nn.MSELoss``). Its gradient ``2x`` grows with the error, so
    outliers dominate: the reason Fast R-CNN replaced it with smooth L1 (Girshick, ICCV 2015).

    Args:
        pred: predictions (raw coordinates or encoded deltas), any shape, floating.
        target: regression targets, ``pred``'s shape.
        weight: broadcasts to ``pred``'s shape (e.g. ``(N, 1)``: one weight per row).
        reduction: ``"none"`` (``pred``'s shape), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements; below 1 it
            counts as 1.

    Shape:
        - pred, target: ``(*)``, the same.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> l2_loss(torch.tensor([0.5, -2.0, 3.0]), torch.zeros(3), reduction="none")
        tensor([0.2500, 4.0000, 9.0000])
    """
    where = "l2_loss"
    diff = _difference(where, pred, target)
    return reduce_loss(diff * diff, reduction, weight=weight, avg_factor=avg_factor, where=where)


def smooth_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    beta: float = 1.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Smooth L1 loss: quadratic below ``beta``, linear above.

    .. math::
        \ell(x) = \begin{cases} 0.5\, x^2 / \beta & |x| < \beta \\
                                |x| - 0.5\, \beta & \text{otherwise} \end{cases}

    Reference: Girshick, "Fast R-CNN", ICCV 2015, Eq. 3 (``beta = 1``). Common settings:
    ``beta = 1/9`` (the RPN of Detectron), ``0.11`` (RetinaNet). Continuous with a continuous
    gradient ``clamp(x / beta, -1, 1)``. ``beta = 0`` is exactly L1 (computed as such, with
    no division by zero); ``beta * smooth_l1(beta)`` is :func:`huber_loss` with
    ``delta = beta``. ``beta`` must be ``>= 0``.

    Args:
        pred: predictions (raw coordinates or encoded deltas), any shape, floating.
        target: regression targets, ``pred``'s shape.
        beta: where the quadratic zone ends, ``>= 0`` (0: L1).
        weight: broadcasts to ``pred``'s shape (e.g. ``(N, 1)``: one weight per row).
        reduction: ``"none"`` (``pred``'s shape), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements; below 1 it
            counts as 1.

    Shape:
        - pred, target: ``(*)``, the same.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> x = torch.tensor([0.5, -2.0, 3.0])
        >>> smooth_l1_loss(x, torch.zeros(3), reduction="none")  # 0.5 * 0.25, 2 - 0.5, 3 - 0.5
        tensor([0.1250, 1.5000, 2.5000])
        >>> smooth_l1_loss(x, torch.zeros(3), beta=0.0, reduction="none")  # L1
        tensor([0.5000, 2.0000, 3.0000])
    """
    where = "smooth_l1_loss"
    check_range(where, "beta", beta, 0.0)
    abs_diff = _difference(where, pred, target).abs()
    if beta == 0:
        loss = abs_diff
    else:
        q = abs_diff.clamp(max=beta)
        loss = 0.5 * q * q / beta + torch.relu(abs_diff - beta)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def huber_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    delta: float = 1.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Huber loss: quadratic below ``delta``, linear with slope ``delta`` above.

    .. math::
        \ell(x) = \begin{cases} 0.5\, x^2 & |x| \le \delta \\
                                \delta\,(|x| - 0.5\, \delta) & \text{otherwise} \end{cases}

    Reference: Huber, "Robust Estimation of a Location Parameter", Ann. Math. Statist. 1964.
    Identity: ``huber_loss(delta=d) == d * smooth_l1_loss(beta=d)``; smooth L1 keeps slope 1
    outside, Huber keeps curvature 1 inside. ``delta`` must be ``> 0`` (at 0 the loss is
    identically 0).

    Args:
        pred: predictions (raw coordinates or encoded deltas), any shape, floating.
        target: regression targets, ``pred``'s shape.
        delta: where the quadratic zone ends, ``> 0``.
        weight: broadcasts to ``pred``'s shape (e.g. ``(N, 1)``: one weight per row).
        reduction: ``"none"`` (``pred``'s shape), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements; below 1 it
            counts as 1.

    Shape:
        - pred, target: ``(*)``, the same.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> huber_loss(torch.tensor([0.5, -2.0, 3.0]), torch.zeros(3), delta=2.0, reduction="none")
        tensor([0.1250, 2.0000, 4.0000])
    """
    where = "huber_loss"
    check_range(where, "delta", delta, 0.0, low_open=True)
    abs_diff = _difference(where, pred, target).abs()
    q = abs_diff.clamp(max=delta)
    loss = 0.5 * q * q + delta * torch.relu(abs_diff - delta)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def balanced_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Balanced L1 loss of Libra R-CNN: promotes the gradients of inliers (``|x| < beta``).

    With ``b`` fixed by :math:`\alpha \ln(b + 1) = \gamma`, i.e. :math:`b = e^{\gamma/\alpha} - 1`
    (19.0855 for the defaults), and ``u = |x| / beta``:

    .. math::
        \ell(x) = \beta \begin{cases} \frac{\alpha}{b} (b u + 1) \ln(b u + 1) - \alpha u & u < 1 \\
                                      \gamma u + C & \text{otherwise} \end{cases},
        \qquad C = \frac{\gamma}{b} - \alpha

    Its gradient is :math:`\alpha \ln(b u + 1)` inside and :math:`\gamma` outside.
    Reference: Pang et al., "Libra R-CNN: Towards Balanced Learning for Object Detection",
    CVPR 2019, Eqs. 8-10 (there ``beta = 1``; defaults ``alpha = 0.5``, ``gamma = 1.5``). Both
    branches give :math:`\gamma + \gamma / b - \alpha = 1.0786` at ``|x| = 1``, and the
    gradient is ``gamma`` on both sides, so value and gradient are continuous.

    ``beta`` rescales the loss as smooth L1 does (``beta * l(x / beta)``): value and gradient
    stay continuous at ``|x| = beta`` for every ``beta``. mmdetection writes
    ``alpha/b (b|x| + 1) ln(b|x|/beta + 1) - alpha|x|`` instead, equal for ``beta = 1`` but
    with a jump of the gradient at ``|x| = beta`` otherwise. ``alpha``, ``gamma`` and ``beta``
    must be ``> 0``.

    Args:
        pred: predictions (raw coordinates or encoded deltas), any shape, floating.
        target: regression targets, ``pred``'s shape.
        alpha: the inliers' gradient scale, ``> 0`` (0.5).
        gamma: the outliers' slope, ``> 0`` (1.5); with ``alpha`` it fixes ``b``.
        beta: where the logarithmic zone ends, ``> 0`` (1).
        weight: broadcasts to ``pred``'s shape (e.g. ``(N, 1)``: one weight per row).
        reduction: ``"none"`` (``pred``'s shape), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements; below 1 it
            counts as 1.

    Shape:
        - pred, target: ``(*)``, the same.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> x = torch.tensor([0.0, 0.5, 1.0, 3.0])
        >>> # at 0.5: 0.5 / 19.0855 * (9.5428 + 1) * ln(10.5428) - 0.5 * 0.5 = 0.4006;
        >>> # at 1: 1.5 + 1.5 / 19.0855 - 0.5 = 1.0786; at 3: 1.0786 + 1.5 * 2
        >>> balanced_l1_loss(x, torch.zeros(4), reduction="none")
        tensor([0.0000, 0.4006, 1.0786, 4.0786])
    """
    where = "balanced_l1_loss"
    check_range(where, "alpha", alpha, 0.0, low_open=True)
    check_range(where, "gamma", gamma, 0.0, low_open=True)
    check_range(where, "beta", beta, 0.0, low_open=True)
    b = math.expm1(gamma / alpha)
    abs_diff = _difference(where, pred, target).abs()
    q = abs_diff.clamp(max=beta)  # inside part; relu(|x| - beta) is the linear remainder
    inside = _BalancedInlier.apply(b * q / beta) * (alpha * beta / b)
    loss = inside + gamma * torch.relu(abs_diff - beta)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)

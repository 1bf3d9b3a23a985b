r"""Distribution Focal Loss (GFL) and the expectation that decodes a box side from its bins.

Bin convention (that of the GFL paper and mmdetection): a box side is predicted as a
discrete distribution over ``R + 1`` bins at the integers ``0, 1, ..., R``, with
``R = reg_max = 16`` (17 bins) in the paper. The logits have shape ``(..., R + 1)``, so ``R``
is read from their last dimension. (Ultralytics' YOLOv8 uses ``reg_max`` bins
``0 .. reg_max - 1`` instead: its ``reg_max = 16`` is ``R = 15`` here.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as tnf

from detloss._checks import check_floating, check_same_device, upcast
from detloss._typing import AvgFactor, Reduction
from detloss.errors import DetLossError
from detloss.reduction import reduce_loss

__all__ = ["distribution_expectation", "distribution_focal_loss"]


def _bin_logits(where: str, name: str, logits: torch.Tensor) -> torch.Tensor:
    check_floating(where, name, logits)
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise DetLossError.bad_argument(
            where, name, "bin logits of shape (..., R + 1) with at least 2 bins", f"shape {tuple(logits.shape)}"
        )
    return upcast(logits)


def _dfl_elementwise(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-((y_r - y) log S_l + (y - y_l) log S_r)`` over the two bins around ``y`` (checked inputs)."""
    reg_max = logits.shape[-1] - 1
    y = target.clamp(0, reg_max)
    left = y.floor().clamp(max=reg_max - 1)
    index = left.long().unsqueeze(-1)
    log_s = tnf.log_softmax(logits, dim=-1)
    log_left = log_s.gather(-1, index).squeeze(-1)
    log_right = log_s.gather(-1, index + 1).squeeze(-1)
    return -((left + 1 - y) * log_left + (y - left) * log_right)


def distribution_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Distribution Focal Loss: :math:`-\big((y_r - y)\log S_{y_l} + (y - y_l)\log S_{y_r}\big)`.

    Reference: Li et al., "Generalized Focal Loss", NeurIPS 2020. ``pred``: bin logits
    ``(..., R + 1)`` (e.g. ``(N, 4, 17)``: four box sides, ``R = reg_max = 16``), ``S`` their
    softmax; ``target``: the continuous side lengths ``(...)`` (e.g. ``(N, 4)``) in bin units,
    in ``[0, R]``. ``y_l = floor(y)``, ``y_r = y_l + 1``: the loss pushes the probability
    onto the two bins around ``y``, in the proportions that make the expectation
    (:func:`distribution_expectation`) equal ``y``. Elementwise, one value per side
    (shape of ``target``); GFL averages the four sides, e.g. ``avg_factor=4 * num_pos``.

    Targets outside ``[0, R]`` are clipped to it, and ``y = R`` uses the bins ``R - 1, R``
    (weight 0 and 1), so a target may reach ``R`` exactly: no ``R - 0.01`` margin is needed.
    (mmdetection's box coder clips targets to ``R - 0.1`` before the loss; on targets below
    that the two agree.) The targets carry no gradient.

    Args:
        pred: bin logits ``(..., R + 1)``, floating; ``R`` is read from the last dimension.
        target: continuous side lengths in bin units, ``pred.shape[:-1]``, clipped to ``[0, R]``.
        weight: broadcasts to ``target``'s shape (e.g. ``(N, 1)``: one per box).
        reduction: ``"none"`` (one value per side), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of sides (e.g.
            ``4 * num_pos``); below 1 it counts as 1.

    Shape:
        - pred: ``(*, R + 1)``; target: ``(*)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example (R = 4: bins 0..4 with probabilities 1, 1, 6, 2, 1 over 11):
        >>> pred = torch.log(torch.tensor([[1.0, 1.0, 6.0, 2.0, 1.0]]))
        >>> distribution_focal_loss(pred, torch.tensor([2.25]))  # -(0.75 ln 6/11 + 0.25 ln 2/11)
        tensor(0.8808)
    """
    where = "distribution_focal_loss"
    x = _bin_logits(where, "pred", pred)
    check_floating(where, "target", target)
    check_same_device(where, "pred", x, "target", target)
    if target.shape != x.shape[:-1]:
        raise DetLossError.bad_argument(
            where, "target", f"shape {tuple(x.shape[:-1])} (the logits' without the bins)", tuple(target.shape)
        )
    loss = _dfl_elementwise(x, target.detach().to(x.dtype))
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def distribution_expectation(logits: torch.Tensor) -> torch.Tensor:
    r"""The value a bin distribution predicts: :math:`\sum_{i=0}^{R} i\, \mathrm{softmax}(x)_i`.

    GFL's "integral" decoding of a box side (in bin units) from logits ``(..., R + 1)``; the
    result has shape ``(...)`` and lies in ``[0, R]``. Half inputs are computed in float32.

    Args:
        logits: bin logits ``(..., R + 1)``, floating.

    Shape:
        - logits: ``(*, R + 1)``; output: ``(*)``.

    Example:
        >>> logits = torch.log(torch.tensor([1.0, 1.0, 6.0, 2.0, 1.0]))
        >>> distribution_expectation(logits)  # (0 + 1 + 12 + 6 + 4) / 11 = 23 / 11
        tensor(2.0909)
    """
    x = _bin_logits("distribution_expectation", "logits", logits)
    positions = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
    return (torch.softmax(x, dim=-1) * positions).sum(-1)

"""The only reducer of detloss: ``weight``, ``reduction``, ``avg_factor``, distributed normaliser."""

from __future__ import annotations

import math
import numbers
from typing import get_args

import torch

from detloss._checks import check_broadcasts_to, check_choice, check_floating
from detloss._typing import AvgFactor, Reduction
from detloss.errors import DetLossError

__all__ = ["MIN_AVG_FACTOR", "REDUCTIONS", "global_avg_factor", "reduce_loss"]

#: The values of ``reduction``: ``"none"``, ``"sum"``, ``"mean"``.
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
#: The smallest normaliser: ``avg_factor`` below it counts as it (no positives: the plain sum).
MIN_AVG_FACTOR = 1.0


def reduce_loss(
    loss: torch.Tensor,
    reduction: Reduction = "mean",
    *,
    weight: torch.Tensor | None = None,
    avg_factor: AvgFactor | None = None,
    where: str = "reduce_loss",
) -> torch.Tensor:
    r"""Weight and reduce an elementwise loss.

    .. math::
        \text{none}: w \odot \ell, \qquad \text{sum}: \sum w \ell, \qquad
        \text{mean}: \frac{\sum w \ell}{\max(n, 1)} \;\text{ or }\;
        \frac{\sum w \ell}{\max(\text{avg\_factor}, 1)}

    ``n`` is the number of elements of ``loss``, so an empty loss gives a 0 that still has a
    gradient (never NaN). ``avg_factor`` (e.g. the number of positive anchors, as in the
    focal-loss paper) replaces ``n``. A normaliser below 1 counts as 1: a batch with no
    positives (``avg_factor=0``) gives the plain sum, never a division by zero or by a tiny
    number (mmdetection's and ultralytics' detection heads clamp their positive counts at 1
    the same way before they divide). :func:`global_avg_factor` applies the same floor.

    Args:
        loss: the elementwise loss, any shape, floating.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
        weight: multiplies ``loss`` elementwise; any shape that broadcasts to ``loss.shape``
            (e.g. one weight per row), on ``loss``'s device. ``None``: all 1.
        avg_factor: the normaliser of ``"mean"``: a finite number ``>= 0`` or a one-element
            real tensor (not read, so no device sync). Not allowed with ``"sum"`` and ``"none"``.
        where: the name of the calling function, for error messages.

    Shape:
        - loss: ``(*)``; weight: broadcastable to ``(*)``.
        - output: ``(*)`` for ``"none"``, ``()`` otherwise.

    Example:
        >>> loss = torch.tensor([1.0, 2.0, 3.0])
        >>> reduce_loss(loss, "mean", weight=torch.tensor([1.0, 0.0, 1.0]))
        tensor(1.3333)
        >>> reduce_loss(loss, "mean", avg_factor=4)  # 6 / 4
        tensor(1.5000)
        >>> reduce_loss(loss, "mean", avg_factor=0)  # no positives: 6 / 1
        tensor(6.)
        >>> reduce_loss(torch.zeros(0), "mean")
        tensor(0.)
    """
    if reduction == "mean" and weight is None and avg_factor is None and isinstance(loss, torch.Tensor):
        if loss.is_floating_point():  # the common call, which every check below passes
            return loss.sum() / max(loss.numel(), 1)
    check_choice(where, "reduction", reduction, REDUCTIONS)
    check_floating(where, "loss", loss)
    if weight is not None:
        check_floating(where, "weight", weight)
        if weight.device != loss.device:
            raise DetLossError.bad_argument(where, "weight", f"a tensor on {loss.device}, as the inputs", weight.device)
        check_broadcasts_to(where, "weight", weight, loss.shape)
        loss = loss * weight.to(loss.dtype)
    if avg_factor is not None:
        if reduction == "sum":
            raise DetLossError.bad_argument(where, "avg_factor", 'None with reduction="sum"', avg_factor)
        if reduction == "none":
            raise DetLossError.bad_argument(where, "avg_factor", 'None with reduction="none"', avg_factor)
        _check_avg_factor(where, avg_factor, loss.device)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if avg_factor is None:
        return total / max(loss.numel(), 1)
    if isinstance(avg_factor, torch.Tensor):
        return total / avg_factor.clamp(min=MIN_AVG_FACTOR)
    return total / max(float(avg_factor), MIN_AVG_FACTOR)


def _check_avg_factor(where: str, avg_factor: object, device: torch.device) -> None:
    """A finite number >= 0, or a one-element real tensor (its value is not read: no sync)."""
    if isinstance(avg_factor, torch.Tensor):
        if avg_factor.numel() != 1 or avg_factor.is_complex() or avg_factor.dtype == torch.bool:
            got = f"a {avg_factor.dtype} tensor of shape {tuple(avg_factor.shape)}"
            raise DetLossError.bad_argument(where, "avg_factor", "a number or a one-element real tensor", got)
        if avg_factor.device != device and not (avg_factor.dim() == 0 and avg_factor.device.type == "cpu"):
            expected = f"a tensor on {device}, as the inputs"
            raise DetLossError.bad_argument(where, "avg_factor", expected, avg_factor.device)
        return
    ok = isinstance(avg_factor, numbers.Real) and not isinstance(avg_factor, bool)
    if not (ok and math.isfinite(avg_factor) and avg_factor >= 0):  # type: ignore[arg-type, operator]
        raise DetLossError.bad_argument(where, "avg_factor", "a finite number >= 0", repr(avg_factor))


def global_avg_factor(n: float | int | torch.Tensor) -> float | torch.Tensor:
    """The normaliser summed over all ranks, clamped to at least 1.

    With ``torch.distributed`` initialised, ``n`` (a local count such as the number of
    positives on this rank) is all-reduced so that every rank divides by the global count;
    losses normalised by it, then averaged by DDP's gradient all-reduce, give N ranks of
    batch B the same gradient as one rank of batch N*B when the caller multiplies the loss
    by the world size (as ``detloss.detection`` does). Without distributed, it is
    ``max(n, 1)``.

    Args:
        n: this rank's count, a number or a tensor.

    Example:
        >>> global_avg_factor(0)
        1.0
        >>> global_avg_factor(7)
        7.0
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = torch.as_tensor(n, dtype=torch.float32).detach().clone()
        backend = dist.get_backend()
        if backend == "nccl" and t.device.type != "cuda":
            t = t.cuda()
        dist.all_reduce(t)
        return t.clamp(min=MIN_AVG_FACTOR)
    if isinstance(n, torch.Tensor):
        return n.detach().float().clamp(min=MIN_AVG_FACTOR)
    return max(float(n), MIN_AVG_FACTOR)

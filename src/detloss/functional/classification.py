r"""Classification and quality losses: every one takes logits and computes in log space.

Conventions shared by the functions of this module:

- **Logits in, never probabilities.** ``p = sigmoid(x)`` for the binary family (BCE, focal,
  QFL, varifocal, GHM-C, IoU-aware), ``p = softmax(x)`` over the last dimension for the
  multi-class family (cross-entropy, softmax focal, distillation).
- **Stable at any logit.** Logs are ``logsigmoid`` / ``log_softmax``; ``1 - p_t`` is built from
  ``sigmoid(+-x)`` (never ``1 - sigmoid(x)``, which rounds to 0). Value and gradient are finite
  for logits of ``+-1e4`` and give the exact limits there, e.g. the BCE of logit ``-1e4``
  against target 1 is ``1e4`` with gradient ``-1``.
- **Powers with an exponent in (0, 1)** (``gamma`` or ``beta`` below 1) have an infinite
  derivative where their base is 0 (``p_t = 1``). A base below the smallest normal float
  (``1.2e-38`` in float32) gets no gradient there, and keeps its exact value: the floor
  guards the gradient, it never moves the loss (QFL with ``beta = 0.1`` at ``p = y`` is 0,
  not ``(1.2e-38)^0.1 BCE = 1.1e-4``). An exponent of 0 drops the factor (exactly 1).
- **Dtypes**: half and bfloat16 inputs are computed (and returned) in float32.
- **Targets** of the binary family are the logits' shape, soft (in ``[0, 1]``) or one-hot.
  :func:`binary_cross_entropy_loss` and :func:`sigmoid_focal_loss` also take integer labels
  of shape ``pred.shape[:-1]`` with values in ``[0, C]``, where ``C`` (the number of
  classes) means background (all-zero row), mmdetection's convention. Soft target values
  are not range-checked (that would read the tensor); values outside ``[0, 1]`` are the
  caller's.
- **Label checks** (values in range) read the labels, so they run on CPU tensors only; on an
  accelerator an out-of-range label fails in the indexing kernel instead (no device sync
  in the hot path).

The four elementwise kernels of the binary family (``_bce_elementwise``,
``_sigmoid_focal_elementwise``, ``_quality_focal_elementwise``, ``_varifocal_elementwise``)
take checked, upcast tensors of one shape: a fast path replaces them at that one point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as tnf

from detloss import _backend
from detloss._checks import (
    check_broadcasts_to,
    check_broadcasts_with,
    check_choice,
    check_flag,
    check_floating,
    check_integer,
    check_range,
    check_same_device,
    check_same_shape,
    upcast,
)
from detloss._typing import AvgFactor, BoxFormat, IoUKind, Reduction
from detloss.boxes.iou import IOU_KINDS, box_similarity, prepare_pair
from detloss.errors import DetLossError
from detloss.functional._math import finite_pow
from detloss.reduction import reduce_loss

__all__ = [
    "binary_cross_entropy_loss",
    "cross_entropy_loss",
    "exponential_loss",
    "ghm_c_loss",
    "hinge_loss",
    "iou_aware_loss",
    "iou_aware_score",
    "kl_div_distill_loss",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "varifocal_loss",
]

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_UNBOUNDED = math.inf


# ---------------------------------------------------------------------------- checks


def _logits(where: str, name: str, x: object) -> torch.Tensor:
    """A floating tensor, half precision upcast to float32."""
    check_floating(where, name, x)
    return upcast(cast(torch.Tensor, x))


def _is_labels(target: object) -> bool:
    return isinstance(target, torch.Tensor) and target.dtype in _INTEGER_DTYPES


def _tensor(where: str, name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise DetLossError.bad_argument(where, name, "a torch.Tensor", type(t).__name__)
    return t


def _check_labels(where: str, name: str, labels: torch.Tensor, num: int, ignore_index: int | None = None) -> None:
    """Raise unless every label is in ``[0, num)`` (or equals ``ignore_index``); CPU tensors only,
    and not inside ``torch.compile`` (reading the labels would break the graph)."""
    if labels.device.type != "cpu" or labels.numel() == 0 or torch.compiler.is_compiling():
        return
    bad = (labels < 0) | (labels >= num)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        allowed = f"labels in [0, {num - 1}]" + ("" if ignore_index is None else f" or ignore_index {ignore_index}")
        raise DetLossError.bad_argument(where, name, allowed, f"label {int(labels[bad][0])}")


def _dense_target(where: str, x: torch.Tensor, target: object, name: str = "target") -> torch.Tensor:
    """A target of the logits' shape (soft, one-hot or 0/1), cast to the logits' dtype."""
    t = _tensor(where, name, target)
    check_same_device(where, "pred", x, name, t)
    check_same_shape(where, "pred", x, name, t)
    return t.to(x.dtype)


def _binary_target(where: str, x: torch.Tensor, target: object) -> torch.Tensor:
    """Dense target, or integer labels ``pred.shape[:-1]`` in ``[0, C]`` (``C`` = background) made one-hot."""
    if _is_labels(target) and x.dim() >= 1:
        labels = _tensor(where, "target", target)
        if labels.shape == x.shape[:-1]:
            check_same_device(where, "pred", x, "target", labels)
            classes = x.shape[-1]
            _check_labels(where, "target", labels, classes + 1)
            return tnf.one_hot(labels.long(), classes + 1)[..., :classes].to(x.dtype)
    return _dense_target(where, x, target)


def _check_exponent(where: str, name: str, value: float) -> None:
    check_range(where, name, value, 0.0, _UNBOUNDED, high_open=True)


def _check_alpha(where: str, alpha: float | None) -> None:
    if alpha is not None:
        check_range(where, "alpha", alpha, 0.0, 1.0)


def _class_vector(where: str, name: str, values: object, x: torch.Tensor, *, unit: bool) -> torch.Tensor | None:
    """A per-class vector ``(C,)`` from a sequence or tensor; sequence entries range-checked."""
    if values is None:
        return None
    classes = x.shape[-1]
    if isinstance(values, torch.Tensor):
        check_floating(where, name, values)
        vector = values.to(device=x.device, dtype=x.dtype)
    elif isinstance(values, Sequence) and not isinstance(values, str):
        for v in values:
            if unit:
                check_range(where, name, v, 0.0, 1.0)
            else:
                check_range(where, name, v, 0.0, _UNBOUNDED, high_open=True)
        vector = torch.tensor([float(v) for v in values], device=x.device, dtype=x.dtype)
    else:
        raise DetLossError.bad_argument(where, name, f"a sequence or tensor of {classes} numbers", repr(values))
    if vector.shape != (classes,):
        got = f"shape {tuple(vector.shape)}"
        raise DetLossError.bad_argument(where, name, f"{classes} entries (one per class)", got)
    return vector


# ---------------------------------------------------------------------------- shared kernels


def _safe_pow(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """``base ** exponent`` for ``base`` in ``[0, 1]``, with a finite gradient for any exponent >= 0.

    Exponent 0 gives exactly 1 (no factor); for an exponent in (0, 1), where the true
    derivative at 0 is infinite, a base below the smallest normal float gets no gradient
    and keeps its exact value (:func:`~detloss.functional._math.finite_pow`).
    """
    return finite_pow(base, exponent, torch.finfo(base.dtype).tiny)


def _one_minus_pt(logits: torch.Tensor, target: torch.Tensor, negative: torch.Tensor | None) -> torch.Tensor:
    """``1 - p_t = t (1 - p) + (1 - t) p``, each term from a sigmoid (no cancellation);
    ``negative``: ``1 - t`` or ``None`` (:func:`_complement`)."""
    positive = target * torch.sigmoid(-logits)
    negative = 1 - target if negative is None else negative
    return positive.add_(negative * torch.sigmoid(logits))


def _bce_elementwise(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | float | None
) -> torch.Tensor:
    """``-(w t log p + (1 - t) log(1 - p))`` with ``log p = logsigmoid(x)``, ``log(1 - p) = logsigmoid(-x)``."""
    fast = None if pos_weight is not None else _backend.binary_loss(logits, target, "bce")
    if fast is not None:  # None: the backend is "reference" or does not cover this call
        return fast
    return _bce(logits, target, None, pos_weight)


def _complement(target: torch.Tensor) -> torch.Tensor | None:
    """``1 - target`` once for all the terms of a loss, or ``None`` (each term makes its own)
    where ``target`` needs a gradient: there one shared node would change the order in which
    autograd sums the target's gradient, and so its rounding."""
    return None if target.requires_grad else 1 - target


def _bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    negative: torch.Tensor | None,
    pos_weight: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The BCE of ``_bce_elementwise``, ``negative`` being ``1 - target`` (from
    :func:`_complement`); the sum and the sign in place, on a product autograd does not keep."""
    positive = target * tnf.logsigmoid(logits)
    if pos_weight is not None:
        positive = positive * pos_weight
    negative = 1 - target if negative is None else negative
    return (negative * tnf.logsigmoid(-logits)).add_(positive).neg_()


def _sigmoid_focal_elementwise(
    logits: torch.Tensor, target: torch.Tensor, alpha: float | None, gamma: float
) -> torch.Tensor:
    """``-alpha_t (1 - p_t)^gamma [t log p + (1 - t) log(1 - p)]`` (Lin et al., Eq. 5, soft ``t``)."""
    fast = _backend.binary_loss(logits, target, "focal", alpha=alpha, gamma=gamma)
    if fast is not None:
        return fast
    negative = _complement(target)
    loss = _bce(logits, target, negative)
    if gamma != 0:
        loss = loss * _safe_pow(_one_minus_pt(logits, target, negative), gamma)
    if alpha is not None:
        balance = (alpha * target).add_((1 - alpha) * (1 - target if negative is None else negative))
        loss = loss.mul_(balance)  # in place: a product's backward keeps its inputs, not its result
    return loss


def _quality_focal_elementwise(logits: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """``|y - p|^beta BCE(p, y)``; ``y - p = y (1 - p) - (1 - y) p`` from sigmoids (exact for y in {0, 1})."""
    fast = _backend.binary_loss(logits, target, "quality", gamma=beta)
    if fast is not None:
        return fast
    negative = _complement(target)
    loss = _bce(logits, target, negative)
    if beta != 0:
        distance = target * torch.sigmoid(-logits)
        negative = 1 - target if negative is None else negative
        distance = distance.sub_(negative * torch.sigmoid(logits)).abs()
        loss = loss * _safe_pow(distance, beta)
    return loss


def _varifocal_elementwise(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """``q BCE(p, q)`` where ``q > 0``, ``alpha p^gamma BCE(p, 0)`` where ``q = 0`` (VarifocalNet, Eq. 2)."""
    fast = _backend.binary_loss(logits, target, "varifocal", alpha=alpha, gamma=gamma)
    if fast is not None:
        return fast
    loss = _bce(logits, target, None)
    negative = alpha * _safe_pow(torch.sigmoid(logits), gamma)
    return loss * torch.where(target > 0, target, negative)


# ---------------------------------------------------------------------------- softmax family


def cross_entropy_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    class_weight: Sequence[float] | torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Softmax cross-entropy over the last dimension: :math:`-\sum_c w_c\, q_c \log \mathrm{softmax}(x)_c`.

    ``pred``: logits ``(..., C)``. ``target``: integer labels ``(...)`` in ``[0, C)`` (the
    one-hot ``q``; a label equal to ``ignore_index`` gives a loss of 0), or class
    probabilities / one-hot rows ``(..., C)``. The loss is one value per row, shape ``(...)``.

    - ``class_weight`` ``w`` (one per class, default all 1) scales each class's term.
    - ``label_smoothing`` ``eps`` replaces ``q`` by ``(1 - eps) q + eps / C`` (Szegedy et al.,
      "Rethinking the Inception Architecture", CVPR 2016), as ``torch.nn.functional.cross_entropy``
      does (with class weights too).

    Unlike ``torch.nn.functional.cross_entropy``, ``"mean"`` divides by the number of rows
    (or ``avg_factor``), not by the sum of the class weights of the non-ignored rows:
    pass ``avg_factor=(target != ignore_index).sum()`` to average over the rows that count.

    Args:
        pred: logits ``(..., C)``, floating.
        target: integer labels ``pred.shape[:-1]`` in ``[0, C)`` (or ``ignore_index``), or
            class probabilities / one-hot rows of ``pred``'s shape.
        class_weight: ``C`` weights ``>= 0`` (a sequence or tensor), or ``None`` for all 1.
        ignore_index: a label whose rows give 0 (labels only).
        label_smoothing: in ``[0, 1]``, mixed with the uniform distribution.
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred: ``(*, C)``; target: labels ``(*)`` or rows ``(*, C)``.
        - output: ``(*)``, one value per row, for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.log(torch.tensor([[1.0, 3.0]]))  # probabilities 1/4, 3/4
        >>> cross_entropy_loss(pred, torch.tensor([1]))  # -ln(3/4)
        tensor(0.2877)
        >>> cross_entropy_loss(pred, torch.tensor([1]), label_smoothing=0.2)  # q = (0.1, 0.9)
        tensor(0.3975)
    """
    where = "cross_entropy_loss"
    x = _logits(where, "pred", pred)
    if x.dim() == 0:
        raise DetLossError.bad_argument(where, "pred", "logits of shape (..., C)", "a 0-d tensor")
    check_range(where, "label_smoothing", label_smoothing, 0.0, 1.0)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise DetLossError.bad_argument(where, "ignore_index", "an integer", repr(ignore_index))
    classes = x.shape[-1]
    w = _class_vector(where, "class_weight", class_weight, x, unit=False)
    log_p = tnf.log_softmax(x, dim=-1)
    if _is_labels(target) and target.shape == x.shape[:-1]:
        check_same_device(where, "pred", x, "target", target)
        _check_labels(where, "target", target, classes, ignore_index)
        valid = target != ignore_index
        labels = torch.where(valid, target, torch.zeros_like(target)).long()
        loss = -log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        if w is not None:
            loss = loss * w[labels]
        if label_smoothing > 0:
            smooth = -(log_p if w is None else log_p * w).sum(-1) / classes
            loss = (1 - label_smoothing) * loss + label_smoothing * smooth
        loss = torch.where(valid, loss, torch.zeros_like(loss))
    else:
        if _is_labels(target) and target.dim() != x.dim():
            raise DetLossError.bad_argument(
                where, "target", f"labels of shape {tuple(x.shape[:-1])} or probabilities {tuple(x.shape)}",
                f"shape {tuple(target.shape)}",
            )
        q = _dense_target(where, x, target)
        if label_smoothing > 0:
            q = (1 - label_smoothing) * q + label_smoothing / classes
        terms = -q * log_p
        loss = (terms if w is None else terms * w).sum(-1)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def softmax_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: Sequence[float] | torch.Tensor | None = None,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Multi-class focal loss: :math:`-\sum_c \alpha_c\, q_c (1 - p_c)^\gamma \log p_c`, ``p = softmax(x)``.

    The focal modulation of Lin et al. ("Focal Loss for Dense Object Detection", ICCV 2017)
    applied to a softmax, as the paper notes it extends to the multi-class case. ``target``:
    integer labels ``(...)`` in ``[0, C)`` (then the sum has the one term ``c = y``) or
    probabilities / one-hot rows ``(..., C)``. ``alpha``: one balance weight per class (each
    in ``[0, 1]``), or ``None`` for no balancing (the default: the paper's ``alpha = 0.25``
    belongs to its sigmoid form). ``gamma = 2`` as in the paper; ``gamma = 0`` with
    ``alpha=None`` is :func:`cross_entropy_loss`. ``1 - p_c`` is ``-expm1(log p_c)``.

    Args:
        pred: logits ``(..., C)``, floating.
        target: integer labels ``pred.shape[:-1]`` in ``[0, C)``, or class probabilities /
            one-hot rows of ``pred``'s shape.
        alpha: ``C`` balance weights in ``[0, 1]`` (a sequence or tensor), or ``None``.
        gamma: the focusing exponent, ``>= 0``.
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred: ``(*, C)``; target: labels ``(*)`` or rows ``(*, C)``.
        - output: ``(*)``, one value per row, for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.log(torch.tensor([[1.0, 3.0]]))  # probabilities 1/4, 3/4
        >>> softmax_focal_loss(pred, torch.tensor([1]))  # (1/4)^2 * -ln(3/4)
        tensor(0.0180)
    """
    where = "softmax_focal_loss"
    x = _logits(where, "pred", pred)
    if x.dim() == 0:
        raise DetLossError.bad_argument(where, "pred", "logits of shape (..., C)", "a 0-d tensor")
    _check_exponent(where, "gamma", gamma)
    a = _class_vector(where, "alpha", alpha, x, unit=True)
    log_p = tnf.log_softmax(x, dim=-1)
    if _is_labels(target) and target.shape == x.shape[:-1]:
        check_same_device(where, "pred", x, "target", target)
        _check_labels(where, "target", target, x.shape[-1])
        labels = target.long()
        log_pt = log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        loss = -_safe_pow(-torch.expm1(log_pt), gamma) * log_pt
        if a is not None:
            loss = loss * a[labels]
    else:
        q = _dense_target(where, x, target)
        terms = -q * _safe_pow(-torch.expm1(log_p), gamma) * log_p
        loss = (terms if a is None else terms * a).sum(-1)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


# ---------------------------------------------------------------------------- sigmoid family


def binary_cross_entropy_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    pos_weight: float | torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Sigmoid (binary) cross-entropy on logits: :math:`-[w_+\, t \log p + (1 - t) \log(1 - p)]`, ``p = sigmoid(x)``.

    Elementwise, shape of ``pred``. ``target``: soft or one-hot values of ``pred``'s shape, or
    integer labels ``pred.shape[:-1]`` in ``[0, C]`` (``C`` = background). ``pos_weight``
    ``w_+`` scales the positive term (a number, or a tensor broadcasting against ``pred``,
    e.g. one per class), as in ``torch.nn.functional.binary_cross_entropy_with_logits``.
    Computed as ``logsigmoid(x)``, ``logsigmoid(-x)``: logit ``-1e4`` against target 1 gives
    ``1e4`` (gradient ``-1``), not ``inf``.

    Args:
        pred: logits (never probabilities), floating; half precision runs in float32.
        target: soft or one-hot targets of ``pred``'s shape in ``[0, 1]``, or integer labels
            ``pred.shape[:-1]`` in ``[0, C]`` (``C``: background).
        pos_weight: ``w_+ >= 0``, a number or a tensor broadcasting to ``pred``'s shape, or ``None``.
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred: ``(*, C)``; target: ``(*, C)`` (or labels ``(*)`` where stated).
        - output: ``(*, C)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred, target = torch.zeros(2), torch.tensor([1.0, 0.0])  # p = 1/2
        >>> binary_cross_entropy_loss(pred, target)  # ln 2
        tensor(0.6931)
        >>> binary_cross_entropy_loss(pred, target, pos_weight=3.0)  # (3 ln 2 + ln 2) / 2
        tensor(1.3863)
    """
    where = "binary_cross_entropy_loss"
    x = _logits(where, "pred", pred)
    t = _binary_target(where, x, target)
    pw: float | torch.Tensor | None = pos_weight
    if isinstance(pos_weight, torch.Tensor):
        check_floating(where, "pos_weight", pos_weight)
        pw = pos_weight.to(device=x.device, dtype=x.dtype)
        check_broadcasts_to(where, "pos_weight", pw, x.shape)
    elif pos_weight is not None:
        check_range(where, "pos_weight", pos_weight, 0.0, _UNBOUNDED, high_open=True)
    loss = _bce_elementwise(x, t, pw)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def sigmoid_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Focal loss (Lin et al., ICCV 2017, Eq. 5): :math:`-\alpha_t (1 - p_t)^\gamma \log p_t`.

    ``p = sigmoid(x)``; for a target ``t`` in ``{0, 1}``, ``p_t = p`` and ``alpha_t = alpha``
    where ``t = 1``, ``p_t = 1 - p`` and ``alpha_t = 1 - alpha`` where ``t = 0`` (the paper's
    definitions). Defaults are the paper's best,
    ``alpha = 0.25, gamma = 2`` (Table 1b); ``alpha=None`` turns the balance off
    (``alpha_t = 1``), and ``gamma = 0, alpha=None`` is the binary cross-entropy. The paper
    normalises the sum by the number of positive anchors: pass ``avg_factor=num_pos``.

    Soft targets ``t`` in ``[0, 1]`` (a generalisation, not in the paper) use
    ``-log p_t -> -t log p - (1 - t) log(1 - p)``, ``p_t = p t + (1 - p)(1 - t)`` and
    ``alpha_t = alpha t + (1 - alpha)(1 - t)``, as torchvision and mmdetection do.
    ``target``: soft or one-hot values of ``pred``'s shape, or integer labels
    ``pred.shape[:-1]`` in ``[0, C]`` (``C`` = background). Elementwise, shape of ``pred``.
    ``1 - p_t = t sigmoid(-x) + (1 - t) sigmoid(x)`` keeps its full precision at large
    logits; for ``0 < gamma < 1`` see the module notes (finite gradient at ``p_t = 1``).

    Args:
        pred: logits (never probabilities), floating; half precision runs in float32.
        target: soft or one-hot targets of ``pred``'s shape in ``[0, 1]``, or integer labels
            ``pred.shape[:-1]`` in ``[0, C]`` (``C``: background).
        alpha: the positives' balance in ``[0, 1]``, or ``None`` for no balance.
        gamma: the focusing exponent, ``>= 0`` (0 with ``alpha=None``: BCE).
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred: ``(*, C)``; target: ``(*, C)`` (or labels ``(*)`` where stated).
        - output: ``(*, C)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.log(torch.tensor([3.0, 3.0]))  # p = 3/4
        >>> # positive: 0.25 (1/4)^2 (-ln 3/4); negative: 0.75 (3/4)^2 (-ln 1/4)
        >>> sigmoid_focal_loss(pred, torch.tensor([1.0, 0.0]), reduction="none")
        tensor([0.0045, 0.5848])
    """
    where = "sigmoid_focal_loss"
    x = _logits(where, "pred", pred)
    t = _binary_target(where, x, target)
    _check_alpha(where, alpha)
    _check_exponent(where, "gamma", gamma)
    loss = _sigmoid_focal_elementwise(x, t, alpha, gamma)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def quality_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    beta: float = 2.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Quality Focal Loss (GFL): :math:`-|y - p|^\beta \,[(1 - y)\log(1 - p) + y \log p]`, ``p = sigmoid(x)``.

    Reference: Li et al., "Generalized Focal Loss", NeurIPS 2020. ``target`` ``y`` has
    ``pred``'s shape: the IoU of the predicted box with its ground truth (computed from
    detached predictions) in the ground-truth class's column, 0 elsewhere and for
    negatives. ``beta = 2`` as in the paper; ``beta = 0`` is the binary cross-entropy on soft
    targets. Normalise by the number of positives (``avg_factor``). Elementwise.

    Args:
        pred: logits (never probabilities), floating; half precision runs in float32.
        target: the quality (IoU) targets in ``[0, 1]``, ``pred``'s shape.
        beta: the exponent of ``|y - p|``, ``>= 0`` (0: BCE on soft targets).
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*)``, the same (e.g. ``(N, C)``).
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> quality_focal_loss(torch.tensor([0.0]), torch.tensor([0.8]))  # |0.8 - 0.5|^2 ln 2
        tensor(0.0624)
    """
    where = "quality_focal_loss"
    x = _logits(where, "pred", pred)
    t = _dense_target(where, x, target)
    _check_exponent(where, "beta", beta)
    loss = _quality_focal_elementwise(x, t, beta)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def varifocal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.75,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Varifocal loss: IoU-weighted BCE for positives, focal down-weighting for negatives only.

    .. math::
        \mathrm{VFL}(p, q) = -q\,\big(q \log p + (1 - q) \log(1 - p)\big) \;\text{if } q > 0,
        \qquad -\alpha\, p^\gamma \log(1 - p) \;\text{if } q = 0

    Reference: Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021.
    ``p = sigmoid(x)``; ``target`` ``q`` has ``pred``'s shape: the IoU-aware classification
    score (IoU with the ground truth in its class's column, 0 elsewhere). Positives are
    weighted by ``q`` itself, only negatives are down-weighted, by ``alpha p^gamma``
    (``alpha = 0.75, gamma = 2`` as in the paper). Elementwise.

    Args:
        pred: logits (never probabilities), floating; half precision runs in float32.
        target: the IoU-aware scores ``q`` in ``[0, 1]``, ``pred``'s shape (0 for negatives).
        alpha: the negatives' scale, in ``[0, 1]``.
        gamma: the negatives' exponent of ``p``, ``>= 0``.
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*)``, the same (e.g. ``(N, C)``).
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.zeros(2)  # p = 1/2
        >>> varifocal_loss(pred, torch.tensor([0.8, 0.0]), reduction="none")  # 0.8 ln 2; 0.75 / 4 ln 2
        tensor([0.5545, 0.1300])
    """
    where = "varifocal_loss"
    x = _logits(where, "pred", pred)
    t = _dense_target(where, x, target)
    check_range(where, "alpha", alpha, 0.0, 1.0)
    _check_exponent(where, "gamma", gamma)
    loss = _varifocal_elementwise(x, t, alpha, gamma)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def ghm_c_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    bins: int = 10,
    momentum: float = 0.0,
    running_count: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""GHM-C: binary cross-entropy weighted by the inverse density of its gradient norm.

    Reference: Li, Liu and Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019.
    With ``g = |p - t|`` (the gradient norm of the BCE wrt its logit, ``p = sigmoid(x)``) cut
    into ``bins`` equal regions ``[k / bins, (k + 1) / bins)`` (``g = 1`` in the last), each
    element of region ``k`` gets the constant (no gradient) weight

    .. math:: \beta = \frac{N}{R_k \cdot n}

    where ``N`` counts the valid elements, ``R_k`` those in region ``k`` and ``n`` the
    non-empty regions (the authors' code; the paper's unit-region density divides by
    ``bins`` instead, which is the same when every region is occupied). The loss is
    ``beta * BCE``, elementwise, and ``"mean"`` is the paper's
    :math:`L = \frac{1}{N} \sum_i \beta_i \mathrm{BCE}_i`: the sum over ``N``, the number of
    valid elements, not over every element (the authors' code and mmdetection's ``GHMC``
    divide by the same count). Elements whose ``weight`` is 0 are left out of the counts and
    of the loss, like mmdetection's ``label_weight``; a weight other than 0 and 1 also scales
    its element's loss (mmdetection uses ``label_weight`` as a mask only).

    ``momentum > 0`` replaces ``R_k`` by a running count
    ``R_k <- momentum R_k + (1 - momentum) R_k(batch)`` (updated for non-empty regions only),
    which is state: pass ``running_count``, a tensor of ``bins`` zeros kept between calls and
    updated in place (as ``torch.nn.functional.batch_norm`` does with its running mean), or
    use :class:`detloss.nn.GHMCLoss`, which keeps it and advances it in training mode only.
    With ``momentum = 0`` (the default) ``running_count`` is ignored. The paper's RetinaNet
    setting is ``bins=30, momentum=0.75``.

    Args:
        pred: logits (never probabilities), floating; half precision runs in float32.
        target: 0/1 or soft targets in ``[0, 1]``, ``pred``'s shape.
        bins: the number of gradient-norm regions, an integer ``>= 1``.
        momentum: in ``[0, 1)``; above 0 the densities are running counts.
        running_count: the ``bins`` running counts, updated in place; needed when ``momentum > 0``.
        weight: broadcasts to ``pred``'s shape; elements of weight 0 are left out of the counts.
        reduction: ``"none"``, ``"mean"`` (the sum over the valid elements' number, the paper's
            ``N``) or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of ``N``; below 1 it counts as 1.

    Shape:
        - pred, target: ``(*)``, the same (e.g. ``(N, C)``).
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example (one easy example among three harder ones gets the larger weight):
        >>> pred = torch.log(torch.tensor([1.0, 1.0, 1.0, 3.0]))  # p = 1/2, 1/2, 1/2, 3/4
        >>> # g = 1/2 (3 elements), 1/4 (1): beta = 4 / (3 * 2) and 4 / (1 * 2)
        >>> ghm_c_loss(pred, torch.ones(4), reduction="none")  # (2/3) ln 2, 2 (-ln 3/4)
        tensor([0.4621, 0.4621, 0.4621, 0.5754])
    """
    where = "ghm_c_loss"
    x = _logits(where, "pred", pred)
    t = _dense_target(where, x, target)
    check_integer(where, "bins", bins, 1)
    check_range(where, "momentum", momentum, 0.0, 1.0, high_open=True)
    if running_count is not None:
        check_floating(where, "running_count", running_count)
        if running_count.shape != (bins,):
            raise DetLossError.bad_argument(
                where, "running_count", f"shape ({bins},) (one count per bin)", f"shape {tuple(running_count.shape)}"
            )
    elif momentum > 0:
        raise DetLossError.bad_argument(
            where, "running_count", "a tensor of `bins` counts when momentum > 0 (GHMCLoss keeps one)", None
        )
    if weight is not None:
        check_floating(where, "weight", weight)
        check_same_device(where, "pred", x, "weight", weight)
        check_broadcasts_to(where, "weight", weight, x.shape)
    with torch.no_grad():
        g = (torch.sigmoid(x) - t).abs()
        index = (g * bins).floor().clamp(0, bins - 1).long()
        if weight is None:
            valid = torch.ones_like(x, dtype=torch.bool)
        else:
            valid = (weight > 0).expand(x.shape)
        valid_f = valid.to(x.dtype)
        counts = x.new_zeros(bins).scatter_add_(0, index.reshape(-1), valid_f.reshape(-1))
        occupied = counts > 0
        density = counts
        if momentum > 0 and running_count is not None:
            old = running_count.to(x.dtype)
            density = torch.where(occupied, momentum * old + (1 - momentum) * counts, old)
            running_count.copy_(density)
        total = valid_f.sum().clamp(min=1)
        beta = torch.where(occupied, total / density.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(density))
        beta = beta / occupied.sum().clamp(min=1)
        harmonizer = torch.where(valid, beta[index], torch.zeros_like(x))
    loss = _bce_elementwise(x, t, None) * harmonizer
    if reduction == "mean" and avg_factor is None:
        avg_factor = total  # the paper's N: the valid elements, not every element
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


# ---------------------------------------------------------------------------- localisation quality


def iou_aware_loss(
    pred: torch.Tensor,
    pred_boxes: torch.Tensor,
    target_boxes: torch.Tensor,
    *,
    kind: IoUKind = "iou",
    detach_target: bool = True,
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""IoU-aware loss: :math:`\mathrm{BCE}(\sigma(x), \mathrm{IoU}(\hat b, b))` for a predicted-IoU logit ``x``.

    Reference: Wu, Li and Wang, "IoU-aware Single-stage Object Detector for Accurate
    Localization", Image and Vision Computing 2020 (arXiv 1912.05992). ``pred``:
    IoU logits ``(...)``; ``pred_boxes`` (the decoded predictions) and ``target_boxes``:
    ``(..., 4)`` in ``box_format``. The target is the IoU of each pair, or any ``kind`` of
    :func:`detloss.boxes.aligned_iou` (``giou``, ``diou``, ...), clamped to ``[0, 1]`` so that
    it is a probability. Apply it to positives and normalise by their number
    (``avg_factor=num_pos``), as the paper does.

    ``detach_target=True`` (default: the IoU target computed without gradient) trains only
    the IoU head: ``pred_boxes`` get an exact zero gradient (they stay in the graph, so their
    ``.grad`` is a zero tensor, not ``None``). ``detach_target=False`` lets the gradient flow
    into the box branch through the target, as the authors' released code does.

    Args:
        pred: IoU logits, one per box pair, floating.
        pred_boxes: the decoded predicted boxes in ``box_format``.
        target_boxes: their ground-truth boxes, broadcasting with ``pred_boxes``.
        kind: the overlap used as target, one of ``iou, giou, diou, ciou, eiou, siou``.
        detach_target: ``True`` to train the IoU head only (the boxes get a zero gradient).
        box_format: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.
        eps: in ``(0, 1]``, as in :func:`detloss.boxes.aligned_iou`.
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred: ``(*)``; pred_boxes, target_boxes: ``(*, 4)``, broadcasting.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred_boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> target_boxes = torch.tensor([[2.0, 0.0, 6.0, 2.0]])  # IoU 1/3
        >>> logit = torch.log(torch.tensor([0.5]))  # sigmoid = 1/3: the minimum, the entropy of 1/3
        >>> iou_aware_loss(logit, pred_boxes, target_boxes)  # (1/3) ln 3 + (2/3) ln 3/2
        tensor(0.6365)
    """
    where = "iou_aware_loss"
    x = _logits(where, "pred", pred)
    check_choice(where, "kind", kind, IOU_KINDS)
    check_flag(where, "detach_target", detach_target)
    p, t = prepare_pair(where, pred_boxes, target_boxes, box_format, eps, names=("pred_boxes", "target_boxes"))
    check_same_device(where, "pred_boxes", p, "pred", x)
    pairs = torch.broadcast_shapes(p.shape, t.shape)[:-1]
    if x.shape != pairs:
        raise DetLossError.bad_argument(
            where, "pred", f"one logit per box pair, shape {tuple(pairs)}", f"shape {tuple(x.shape)}"
        )
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_target):
        similarity = box_similarity(p, t, kind, eps)[0]
    iou = similarity.clamp(0.0, 1.0).to(x.dtype)
    if detach_target and torch.is_grad_enabled() and p.requires_grad:
        # keep the boxes in the graph with an exact zero gradient (no backward through the geometry)
        iou = iou + 0.0 * p.sum(-1).to(x.dtype)
    loss = _bce_elementwise(x, iou, None)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def iou_aware_score(cls_prob: torch.Tensor, iou: torch.Tensor, *, alpha: float = 0.5) -> torch.Tensor:
    r"""Detection score for ranking at inference: :math:`p^{1 - \alpha}\, \mathrm{IoU}^{\alpha}` (a helper, not a loss).

    ``cls_prob``: classification probabilities (already through the sigmoid); ``iou``: the
    predicted IoU in ``[0, 1]`` (sigmoid of the IoU head). Shapes broadcast: for scores
    ``(N, C)`` pass ``iou[:, None]``. Both are clamped to ``[0, 1]``.

    Convention: ``alpha`` is the weight of the IoU, as PP-YOLO's ``p^(1 - f) IoU^f``. Wu et
    al. write ``p^alpha IoU^(1 - alpha)`` (their alpha weights the probability): their alpha
    is ``1 - alpha`` here. The default 0.5 (the geometric mean) is the same in both.

    Args:
        cls_prob: classification probabilities in ``[0, 1]`` (after the sigmoid).
        iou: predicted IoUs in ``[0, 1]``, broadcasting with ``cls_prob``.
        alpha: the weight of the IoU, in ``[0, 1]``.

    Shape:
        - cls_prob, iou: broadcasting, e.g. ``(N, C)`` and ``(N, 1)``.
        - output: their broadcast shape.

    Example:
        >>> iou_aware_score(torch.tensor([0.64]), torch.tensor([0.25]))  # sqrt(0.64 * 0.25)
        tensor([0.4000])
    """
    where = "iou_aware_score"
    p = _logits(where, "cls_prob", cls_prob)
    q = _logits(where, "iou", iou)
    check_range(where, "alpha", alpha, 0.0, 1.0)
    check_same_device(where, "cls_prob", p, "iou", q)
    check_broadcasts_with(where, "cls_prob", p, "iou", q)
    return p.clamp(0.0, 1.0).pow(1.0 - alpha) * q.clamp(0.0, 1.0).pow(alpha)


# ---------------------------------------------------------------------------- distillation and margins


def kl_div_distill_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Soft-label distillation: :math:`T^2\, \mathrm{KL}(\mathrm{softmax}(t / T) \,\|\, \mathrm{softmax}(s / T))`.

    Reference: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network",
    arXiv 1503.02531 (2015). ``pred``: student logits ``s`` ``(..., C)``; ``target``:
    teacher logits ``t`` of the same shape, detached (no gradient reaches the teacher). One
    value per row: the textbook sum over classes
    :math:`\sum_c q_c (\log q_c - \log p_c)`, times ``T^2`` so that the gradient's scale does
    not depend on ``T``. mmdetection's ``KnowledgeDistillationKLDivLoss`` averages over the
    classes instead (``1 / C`` of this value).

    ``temperature = 1`` (the plain KL divergence) by default: Hinton et al. tune ``T`` per
    task and give no single value; mmdetection's localisation distillation uses 10.

    Args:
        pred: the student's logits ``(..., C)``.
        target: the teacher's logits, ``pred``'s shape (detached).
        temperature: ``T > 0``, dividing both before the softmax.
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, C)``.
        - output: ``(*)``, one value per row, for ``reduction="none"``, else ``()``.

    Example:
        >>> student = torch.zeros(1, 2)  # p = (1/2, 1/2)
        >>> teacher = torch.log(torch.tensor([[1.0, 3.0]]))  # q = (1/4, 3/4)
        >>> kl_div_distill_loss(student, teacher)  # (1/4) ln(1/2) + (3/4) ln(3/2)
        tensor(0.1308)
    """
    where = "kl_div_distill_loss"
    s = _logits(where, "pred", pred)
    t = _logits(where, "target", target)
    check_same_device(where, "pred", s, "target", t)
    check_same_shape(where, "pred", s, "target", t)
    if s.dim() == 0:
        raise DetLossError.bad_argument(where, "pred", "logits of shape (..., C)", "a 0-d tensor")
    check_range(where, "temperature", temperature, 0.0, _UNBOUNDED, low_open=True, high_open=True)
    log_p = tnf.log_softmax(s / temperature, dim=-1)
    log_q = tnf.log_softmax(t.detach().to(s.dtype) / temperature, dim=-1)
    loss = (log_q.exp() * (log_q - log_p)).sum(-1) * (temperature * temperature)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def _signs(where: str, f: torch.Tensor, target: object) -> torch.Tensor:
    """Labels as +-1: values > 0 are positive, the rest negative ({-1, +1} and {0, 1} both work)."""
    t = _tensor(where, "target", target)
    check_same_device(where, "pred", f, "target", t)
    check_same_shape(where, "pred", f, "target", t)
    positive = t > 0
    return torch.where(positive, torch.ones_like(f), -torch.ones_like(f))


def hinge_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    margin: float = 1.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Hinge loss: :math:`\max(0, m - y f)` for a real score ``f`` and a label ``y = +-1``.

    The SVM's loss (Cortes and Vapnik, "Support-Vector Networks", Machine Learning 1995):
    zero once the example is on the right side with margin ``m = 1``. ``target``:
    labels of ``pred``'s shape in ``{-1, +1}`` or ``{0, 1}`` (a value > 0 is positive, any
    other negative; not range-checked). Elementwise. The gradient at the kink ``y f = m`` is 0.

    Args:
        pred: real scores ``f``, floating.
        target: labels of ``pred``'s shape, ``{-1, +1}`` or ``{0, 1}`` (a value > 0 is positive).
        margin: ``m >= 0``.
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*)``, the same (e.g. ``(N, C)``).
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> scores = torch.tensor([2.0, 0.5, -1.0])
        >>> hinge_loss(scores, torch.tensor([1, 1, 0]), reduction="none")  # 1 - 2, 1 - 0.5, 1 - 1
        tensor([0.0000, 0.5000, 0.0000])
    """
    where = "hinge_loss"
    f = _logits(where, "pred", pred)
    y = _signs(where, f, target)
    check_range(where, "margin", margin, 0.0, _UNBOUNDED, high_open=True)
    loss = torch.relu(margin - y * f)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def exponential_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    max_exponent: float | None = 50.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Exponential loss: :math:`e^{-y f}` for a real score ``f`` and a label ``y = +-1``.

    AdaBoost's loss (Freund and Schapire, J. Comput. Syst. Sci. 1997; Friedman, Hastie and
    Tibshirani, Ann. Statist. 2000). ``target``: labels of ``pred``'s shape in
    ``{-1, +1}`` or ``{0, 1}`` (a value > 0 is positive). Elementwise.

    ``e^z`` overflows float32 beyond ``z = 88.7``; so that a badly wrong score still gives
    a finite value and gradient, the loss continues along its tangent beyond ``z = -y f =
    max_exponent`` (50 by default): ``e^m (1 + z - m)`` for ``z > m``, which is convex,
    increasing and exact below ``m`` (``e^50 = 5.2e21``; at ``z = 1e4`` the value is
    ``5.2e25``). ``max_exponent=None`` gives the pure exponential (``inf`` past the overflow).
    The function is the same for every dtype. For float16 scores pass ``max_exponent=10``
    (slope ``e^10 = 22026``) if the gradient must fit float16 (largest value 65504): with
    the default, the value (float32) stays finite but a float16 leaf's gradient past
    ``z = 11`` is beyond float16's range.

    Args:
        pred: real scores ``f``, floating.
        target: labels of ``pred``'s shape, ``{-1, +1}`` or ``{0, 1}`` (a value > 0 is positive).
        max_exponent: where the loss continues along its tangent (a finite number), or ``None``
            for the pure exponential.
        weight: broadcasts to the elementwise loss's shape (e.g. ``(N, 1)``: one per anchor).
        reduction: ``"none"`` (the elementwise loss), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of elements (the number of
            positives, as the paper normalises); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*)``, the same (e.g. ``(N, C)``).
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> scores = torch.tensor([0.0, 0.6931472])  # 0, ln 2
        >>> exponential_loss(scores, torch.tensor([1.0, -1.0]), reduction="none")  # e^0, e^(ln 2)
        tensor([1., 2.])
    """
    where = "exponential_loss"
    f = _logits(where, "pred", pred)
    y = _signs(where, f, target)
    if max_exponent is not None:
        check_range(where, "max_exponent", max_exponent, -_UNBOUNDED, _UNBOUNDED, low_open=True, high_open=True)
    z = -y * f
    if max_exponent is None:
        loss = torch.exp(z)
    else:
        capped = z.clamp(max=max_exponent)
        # one expression for both sides: e^z below the cap, the tangent e^m (1 + z - m) above
        loss = torch.exp(capped) * (1 + (z - capped))
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)

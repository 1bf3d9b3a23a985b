"""IoU-family box-regression losses: each a few lines over :mod:`detloss.boxes`.

Every function takes ``pred`` and ``target`` boxes of shape ``(..., 4)`` (shapes broadcast)
in ``box_format`` (``xyxy`` by default), returns the loss reduced by
:func:`detloss.reduction.reduce_loss`, and computes in float32 for half inputs.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch

from detloss import _backend
from detloss._checks import check_choice, check_flag, check_floating, check_range
from detloss._typing import AvgFactor, BoxFormat, IoUKind, Reduction
from detloss.boxes.convert import convert, to_xyxy
from detloss.boxes.iou import IOU_KINDS, AspectGrad, box_similarity, prepare_pair
from detloss.errors import DetLossError
from detloss.functional._math import finite_pow
from detloss.reduction import reduce_loss

#: ``iou_loss``'s forms: ``1 - IoU`` or ``-ln IoU``.
IoULossMode = Literal["linear", "log"]
_IOU_MODES: tuple[str, ...] = get_args(IoULossMode)
_ASPECT_GRADS: tuple[str, ...] = get_args(AspectGrad)

__all__ = [
    "alpha_iou_loss",
    "box_loss",
    "ciou_loss",
    "diou_loss",
    "eiou_loss",
    "focal_eiou_loss",
    "giou_loss",
    "inner_iou_loss",
    "iou_loss",
    "mpdiou_loss",
    "nwd_loss",
    "reduce_box_loss",
    "siou_loss",
    "wiou_loss",
]


def reduce_box_loss(
    loss: torch.Tensor,
    reduction: Reduction,
    *,
    weight: torch.Tensor | None,
    avg_factor: AvgFactor | None,
    where: str,
) -> torch.Tensor:
    """:func:`~detloss.reduction.reduce_loss` for a loss with one value per box pair.

    Besides a weight per pair (the loss's shape, or one that broadcasts to it), a box loss
    takes the two layouts of the detection frameworks: one weight per coordinate, ``(..., 4)``
    like the boxes (mmdetection's ``bbox_weights``), averaged over the coordinates, and a
    trailing singleton, ``(..., 1)`` (ultralytics' ``target_scores.sum(-1, keepdim=True)``),
    dropped.
    """
    if isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.dim() == loss.dim() + 1:
        if weight.shape[-1] == 4:
            weight = weight.mean(dim=-1)
        elif weight.shape[-1] == 1:
            weight = weight.squeeze(-1)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def box_loss(
    where: str,
    kind: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    box_format: str,
    eps: float,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked ``(1 - similarity, iou)`` elementwise, for the losses of this package."""
    p, t = prepare_pair(where, pred, target, box_format, eps)
    fast = _backend.box_loss(p, t, kind, eps, **options)  # None: the backend is "reference" or does not cover it
    if fast is not None:
        return fast
    similarity, iou = box_similarity(p, t, kind, eps, **options)
    return 1.0 - similarity, iou


def iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: IoULossMode = "linear",
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""IoU loss: :math:`1 - \mathrm{IoU}` (``mode="linear"``) or :math:`-\ln \mathrm{IoU}` (``"log"``).

    Reference: Yu et al., "UnitBox: An Advanced Object Detection Network", ACM MM 2016
    (the ``log`` form); the linear form ``1 - IoU`` is the common one. Its gradient
    vanishes for disjoint boxes. In ``log`` mode the IoU is floored at ``eps`` so a
    disjoint pair gives ``-ln(eps)`` (16.1 for the default), not infinity.

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        mode: ``"linear"`` for ``1 - IoU``, ``"log"`` for ``-ln IoU`` (IoU floored at ``eps``).
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> target = torch.tensor([[2.0, 0.0, 6.0, 2.0]])  # overlap 4, union 12
        >>> iou_loss(pred, target)  # 1 - 1/3
        tensor(0.6667)
        >>> iou_loss(pred, target, mode="log")  # ln 3
        tensor(1.0986)
    """

    check_choice("iou_loss", "mode", mode, _IOU_MODES)
    loss, iou = box_loss("iou_loss", "iou", pred, target, box_format, eps)
    if mode == "log":
        loss = -torch.log(iou.clamp(min=eps))
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="iou_loss")


def giou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Generalized IoU loss: :math:`1 - \mathrm{IoU} + \frac{|C| - |A \cup B|}{|C|}`, in [0, 2).

    ``C`` is the smallest box enclosing both. Reference: Rezatofighi et al., "Generalized
    Intersection over Union", CVPR 2019.

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
        >>> target = torch.tensor([[4.0, 0.0, 6.0, 1.0]])  # disjoint: IoU 0
        >>> giou_loss(pred, target)  # enclosing 6 x 1 = 6, union 4: 1 - 0 + 2/6
        tensor(1.3333)
    """
    loss, _ = box_loss("giou_loss", "giou", pred, target, box_format, eps)
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="giou_loss")


def diou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Distance-IoU loss: :math:`1 - \mathrm{IoU} + \rho^2(b, b^{gt}) / c^2`.

    ``rho`` is the distance between the centres, ``c`` the diagonal of the smallest
    enclosing box. Reference: Zheng et al., "Distance-IoU Loss", AAAI 2020, Eqs. 6-7.

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
        >>> target = torch.tensor([[4.0, 0.0, 6.0, 1.0]])  # centres 4 apart
        >>> diou_loss(pred, target)  # 1 - 0 + 16 / (6^2 + 1^2) = 1 + 16/37
        tensor(1.4324)
    """
    loss, _ = box_loss("diou_loss", "diou", pred, target, box_format, eps)
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="diou_loss")


def ciou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha_gate: bool = False,
    grad_mode: AspectGrad = "exact",
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Complete-IoU loss: :math:`1 - \mathrm{IoU} + \rho^2 / c^2 + \alpha v`.

    .. math::
        v = \frac{4}{\pi^2}\Big(\arctan\frac{w^{gt}}{h^{gt}} - \arctan\frac{w}{h}\Big)^2,
        \qquad \alpha = \frac{v}{(1 - \mathrm{IoU}) + v}

    Three variants, all of Zheng et al.:

    - default: the AAAI 2020 paper (Eqs. 9-11), ``alpha`` held constant in the gradient;
    - ``alpha_gate=True``: the journal version (arXiv 2005.03572), ``alpha = 0`` where
      ``IoU < 0.5``;
    - ``grad_mode="paper"``: same value, but the gradient of ``v`` has the factor
      ``1 / (w^2 + h^2)`` replaced by 1, as the AAAI paper's Eq. 12 prescribes for stability.

    The gate's side at exactly 0.5: the journal's piecewise ``alpha`` keeps the aspect term
    for ``IoU >= 0.5``, and so does this function; the authors' released code and
    mmdetection keep it only for ``IoU > 0.5``, so the two differ for pairs whose IoU is
    exactly 0.5 (common with integer boxes, e.g. the example below). The decision is taken on
    the intersection and union areas without ``eps`` (``2 I >= U``, see
    ``detloss.boxes.iou.ciou_gate``), in every backend: with the ``eps`` of the IoU's
    denominator, which float32 rounds away and float64 keeps, one pair would fall on
    different sides in the two dtypes.

    Deviations for safety, both of size ``eps``: ``alpha = v / (1 - IoU + v + eps)`` (finite
    for identical boxes, where mmdetection's gives NaN) and the aspect angle is
    ``atan((w + eps) / (h + eps))`` (finite for zero-height boxes and points).

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        alpha_gate: ``True`` for the journal form: ``alpha = 0`` where ``IoU < 0.5``.
        grad_mode: ``"exact"`` (alpha constant) or ``"paper"`` (the gradient of ``v`` without
            its factor ``1 / (w^2 + h^2)``).
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example (non-square boxes, so the aspect term is not zero):
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])  # 2 x 2, centre (1, 1)
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])  # 4 x 2, centre (2, 1)
        >>> # IoU 4/8 = 0.5; rho^2/c^2 = 1/20; v = 4/pi^2 (atan 2 - pi/4)^2 = 0.041956
        >>> # alpha = v / (0.5 + v) = 0.077417; loss = 0.5 + 0.05 + 0.003248
        >>> ciou_loss(pred, target)
        tensor(0.5532)
    """

    check_choice("ciou_loss", "grad_mode", grad_mode, _ASPECT_GRADS)
    check_flag("ciou_loss", "alpha_gate", alpha_gate)
    loss, _ = box_loss("ciou_loss", "ciou", pred, target, box_format, eps, alpha_gate=alpha_gate, aspect_grad=grad_mode)
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="ciou_loss")


def eiou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Efficient-IoU loss: 1 - IoU + rho^2 / c^2 + width and height terms.

    .. math::
        L_{EIoU} = 1 - \mathrm{IoU} + \frac{\rho^2}{c^2} + \frac{(w - w^{gt})^2}{C_w^2} + \frac{(h - h^{gt})^2}{C_h^2}

    ``C_w, C_h`` are the sides of the smallest enclosing box. Reference: Zhang et al.,
    "Focal and Efficient IOU Loss for Accurate Bounding Box Regression", Neurocomputing
    2022 (arXiv 2101.08158). Not mmdetection's ``EIoULoss``, which is
    a different ("Extended IoU") loss.

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> eiou_loss(pred, target)  # 0.5 + 1/20 + (2 - 4)^2 / 4^2 + 0 / 2^2 = 0.8
        tensor(0.8000)
    """
    loss, _ = box_loss("eiou_loss", "eiou", pred, target, box_format, eps)
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="eiou_loss")


# ---------------------------------------------------------------- newer IoU-family losses (issue 3)


def focal_eiou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 0.5,
    detach_iou: bool = True,
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Focal-EIoU loss: :math:`\mathrm{IoU}^\gamma \, L_{EIoU}`, which down-weights low-overlap boxes.

    :math:`L_{EIoU}` is :func:`eiou_loss`. Reference: Zhang et al., "Focal and Efficient IOU
    Loss for Accurate Bounding Box Regression", Neurocomputing 2022 (arXiv 2101.08158);
    ``gamma = 0.5`` as in common implementations (the paper's text was not checked for it).
    ``gamma = 0`` gives :func:`eiou_loss` exactly.

    ``detach_iou=True`` (default) treats :math:`\mathrm{IoU}^\gamma` as a per-box weight, a
    constant in the gradient, so every box is still pulled towards its target. With
    ``detach_iou=False`` the gradient is the exact derivative of the product, whose extra
    term :math:`\gamma \mathrm{IoU}^{\gamma - 1} L_{EIoU}\, \nabla \mathrm{IoU}` pushes
    poorly overlapping boxes *away* (the product is 0 at IoU 0). Implementations differ
    on this point. Below ``IoU = eps`` the weight keeps its value but gets no gradient (its
    slope is infinite at 0 for ``gamma < 1``); a disjoint pair has loss 0.

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        gamma: the exponent of ``IoU^gamma``, ``>= 0``; 0 gives EIoU.
        detach_iou: ``True`` to treat ``IoU^gamma`` as a constant weight in the gradient.
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> focal_eiou_loss(pred, target)  # IoU 0.5, EIoU loss 0.8: sqrt(0.5) * 0.8
        tensor(0.5657)
    """
    where = "focal_eiou_loss"
    check_range(where, "gamma", gamma, 0.0)
    check_flag(where, "detach_iou", detach_iou)
    if detach_iou:
        loss, iou = box_loss(where, "eiou", pred, target, box_format, eps)
        focus = iou.detach() ** gamma
    else:
        p, t = prepare_pair(where, pred, target, box_format, eps)
        similarity, iou = box_similarity(p, t, "eiou", eps)
        loss, focus = 1.0 - similarity, finite_pow(iou, gamma, eps)
    return reduce_box_loss(focus * loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def siou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    theta: float = 4.0,
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""SCYLLA-IoU loss: :math:`1 - \mathrm{IoU} + (\Delta + \Omega) / 2`.

    .. math::
        \Lambda = \sin 2\varphi, \quad
        \Delta = \sum_{t \in \{x, y\}} 1 - e^{-(2 - \Lambda)\rho_t}, \quad
        \rho_x = \Big(\frac{d_x}{C_w}\Big)^2, \quad
        \Omega = \sum_{t \in \{w, h\}} \big(1 - e^{-\omega_t}\big)^\theta, \quad
        \omega_w = \frac{|w - w^{gt}|}{\max(w, w^{gt})}

    ``phi`` is the angle of the line between the centres to the x axis (``Lambda`` is 0 for
    aligned centres, 1 at 45 degrees), ``d_x, d_y`` the centre offsets and ``C_w, C_h`` the
    enclosing box. Reference: Gevorgyan, "SIoU Loss: More Powerful Learning for Bounding
    Box Regression", arXiv 2205.12740, 2022 (``theta = 4``, range 2 to 6). The distance cost
    is a cost, as in the paper (mmdetection's default ``neg_gamma=False`` makes it a
    reward). ``theta`` must be ``>= 1`` (below, the shape term has an infinite slope at 0).

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        theta: the shape cost's exponent, ``>= 1`` (the paper's range is 2 to 6).
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example (centres on one horizontal line, so ``Lambda = 0`` and ``gamma = 2``):
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> # IoU 0.5; Delta = 1 - exp(-2 (1/4)^2) = 0.117503; omega_w = 2/4:
        >>> # Omega = (1 - exp(-0.5))^4 = 0.023969; 1 - 0.5 + (0.117503 + 0.023969) / 2
        >>> siou_loss(pred, target)
        tensor(0.5707)
    """
    where = "siou_loss"
    check_range(where, "theta", theta, 1.0)
    loss, _ = box_loss(where, "siou", pred, target, box_format, eps, siou_theta=float(theta))
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


AlphaIoUKind = Literal["iou", "giou", "diou", "ciou"]
ALPHA_IOU_KINDS: tuple[str, ...] = get_args(AlphaIoUKind)


def alpha_iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 3.0,
    kind: AlphaIoUKind = "iou",
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Alpha-IoU loss: the power ``alpha`` of each term of an IoU loss.

    .. math::
        L_{\alpha\text{-IoU}} = 1 - \mathrm{IoU}^\alpha, \quad
        L_{\alpha\text{-GIoU}} = 1 - \mathrm{IoU}^\alpha + \Big(\frac{|C \setminus (A \cup B)|}{|C|}\Big)^\alpha,

        L_{\alpha\text{-DIoU}} = 1 - \mathrm{IoU}^\alpha + \frac{\rho^{2\alpha}}{c^{2\alpha}}, \quad
        L_{\alpha\text{-CIoU}} = L_{\alpha\text{-DIoU}} + (\beta v)^\alpha,
        \quad \beta = \frac{v}{1 - \mathrm{IoU} + v}

    selected by ``kind``. Reference: He et al., "Alpha-IoU: A Family of Power Intersection
    over Union Losses for Bounding Box Regression", NeurIPS 2021 (``alpha = 3`` in all its
    experiments; ``alpha = 1`` gives the base loss). For ``ciou``, ``beta`` is computed from
    the plain IoU and held constant in the gradient, as in :func:`ciou_loss` and the authors'
    code. The authors' code raises the x and y parts of the distance term separately
    (``(|d_x|^{2 alpha} + |d_y|^{2 alpha}) / (C_w^{2 alpha} + C_h^{2 alpha})``); we follow the
    paper's formula. ``alpha`` must be ``> 0``; for ``alpha < 1`` a term below ``eps`` gets no
    gradient (its slope is infinite at 0).

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        alpha: the power, ``> 0``; 1 gives the base loss.
        kind: the base loss: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> alpha_iou_loss(pred, target)  # 1 - 0.5^3
        tensor(0.8750)
        >>> alpha_iou_loss(pred, target, kind="diou")  # 0.875 + (1/20)^3
        tensor(0.8751)
    """
    where = "alpha_iou_loss"
    check_range(where, "alpha", alpha, 0.0, low_open=True)
    check_choice(where, "kind", kind, ALPHA_IOU_KINDS)
    p, t = prepare_pair(where, pred, target, box_format, eps)
    similarity, iou = box_similarity(p, t, "diou" if kind == "ciou" else kind, eps)
    loss = 1.0 - finite_pow(iou, alpha, eps)
    if kind != "iou":
        loss = loss + finite_pow(iou - similarity, alpha, eps)
    if kind == "ciou":
        ciou, _ = box_similarity(p, t, "ciou", eps)
        loss = loss + finite_pow(similarity - ciou, alpha, eps)  # beta v, beta constant
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


WIoUVersion = Literal["v1", "v3"]
WIOU_VERSIONS: tuple[str, ...] = get_args(WIoUVersion)


def _wiou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    version: str,
    alpha: float,
    delta: float,
    iou_mean: float | torch.Tensor | None,
    momentum: float,
    box_format: str,
    eps: float,
    weight: torch.Tensor | None,
    reduction: Reduction,
    avg_factor: AvgFactor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`wiou_loss` and, for v3, the mean of ``1 - IoU`` it normalised by (the running
    mean that :class:`detloss.nn.WIoULoss` keeps). A NaN ``iou_mean`` tensor means "no history"."""
    where = "wiou_loss"
    check_choice(where, "version", version, WIOU_VERSIONS)
    check_range(where, "alpha", alpha, 0.0, low_open=True)
    check_range(where, "delta", delta, 0.0, low_open=True)
    check_range(where, "momentum", momentum, 0.0, 1.0)
    if isinstance(iou_mean, torch.Tensor):
        check_floating(where, "iou_mean", iou_mean)
        if iou_mean.numel() != 1:
            raise DetLossError.bad_argument(where, "iou_mean", "a number or a 1-element tensor", tuple(iou_mean.shape))
    elif iou_mean is not None:
        check_range(where, "iou_mean", iou_mean, 0.0, low_open=True)
    p, t = prepare_pair(where, pred, target, box_format, eps)
    similarity, iou = box_similarity(p, t, "wiou", eps)
    loss = 1.0 - similarity  # R (1 - IoU): Wise-IoU v1
    mean = None
    if version == "v3":
        l_iou = (1.0 - iou).detach()
        batch_mean = l_iou.sum() / max(l_iou.numel(), 1)
        if iou_mean is None:
            mean = batch_mean
        else:
            running = torch.as_tensor(iou_mean, dtype=l_iou.dtype, device=l_iou.device).reshape(())
            if l_iou.numel() == 0:
                mean = running
            else:
                updated = (1.0 - momentum) * running + momentum * batch_mean
                mean = torch.where(torch.isnan(running), batch_mean, updated)
        outlier = l_iou / mean.clamp(min=eps)  # beta of the paper
        loss = loss * (outlier / (delta * alpha ** (outlier - delta)))
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where), mean


def wiou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    version: WIoUVersion = "v3",
    alpha: float = 1.9,
    delta: float = 3.0,
    iou_mean: float | torch.Tensor | None = None,
    momentum: float = 0.01,
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Wise-IoU loss: IoU loss scaled by a distance attention (v1) and a dynamic focus (v3).

    .. math::
        L_{v1} = R\,(1 - \mathrm{IoU}), \quad R = \exp\Big(\frac{\rho^2}{(C_w^2 + C_h^2)^*}\Big),
        \qquad L_{v3} = r\, L_{v1}, \quad r = \frac{\beta}{\delta\, \alpha^{\beta - \delta}},
        \quad \beta = \frac{(1 - \mathrm{IoU})^*}{\overline{1 - \mathrm{IoU}}}

    ``*`` marks terms detached from the gradient: the enclosing diagonal in ``R`` and the
    whole focusing factor ``r``, so the gradient is not the derivative of the value (a
    surrogate, by design). ``beta`` is the outlier degree of a box: ``r`` is 1 at
    ``beta = delta``, largest for ordinary boxes and small both for very good boxes and for
    outliers. Reference: Tong et al., "Wise-IoU: Bounding Box Regression Loss with Dynamic
    Focusing Mechanism", arXiv 2301.10051, 2023 (v3 with ``alpha = 1.9``, ``delta = 3``).

    The mean of ``1 - IoU`` over the elements (weights not applied):

    - ``iou_mean=None`` (default): this batch's mean;
    - ``iou_mean=m``: a running mean from earlier batches, first moved towards this batch's
      mean, ``(1 - momentum) m + momentum * batch_mean``, then used (the authors' order).
      :class:`detloss.nn.WIoULoss` keeps this running mean as state (see there).

    The authors use ``momentum = 1 - 0.05^(1 / (t n))`` for ``n`` batches per epoch and
    ``t`` epochs, and ``0.01`` in their example. ``version="v1"`` ignores ``alpha``,
    ``delta``, ``iou_mean`` and ``momentum``.

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        version: ``"v1"`` (distance attention) or ``"v3"`` (with the dynamic focus).
        alpha: v3's ``alpha``, ``> 0``.
        delta: v3's ``delta``, ``> 0``: the outlier degree where the focus is 1.
        iou_mean: the running mean of ``1 - IoU`` from earlier batches (a number ``> 0`` or a
            1-element tensor, NaN meaning none yet), or ``None`` to use this batch's mean.
        momentum: in ``[0, 1]``, how far ``iou_mean`` moves towards this batch's mean first.
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example (v1; centres 1 apart, enclosing box 4 x 2):
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> wiou_loss(pred, target, version="v1")  # exp(1/20) * (1 - 0.5)
        tensor(0.5256)
        >>> # v3, one box: beta = 0.5 / 0.5 = 1, r = 1 / (3 * 1.9^-2) = 1.203333
        >>> wiou_loss(pred, target)
        tensor(0.6325)
    """
    return _wiou_loss(
        pred,
        target,
        version=version,
        alpha=alpha,
        delta=delta,
        iou_mean=iou_mean,
        momentum=momentum,
        box_format=box_format,
        eps=eps,
        weight=weight,
        reduction=reduction,
        avg_factor=avg_factor,
    )[0]


def _check_image_size(where: str, image_size: Any) -> tuple[float, float]:
    if image_size is None:
        raise DetLossError.bad_argument(
            where, "image_size", "the input image size (width, height): MPDIoU normalises by it", None
        )
    ok = isinstance(image_size, (tuple, list)) and len(image_size) == 2
    ok = ok and all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in image_size)
    if not ok:
        raise DetLossError.bad_argument(where, "image_size", "two positive numbers (width, height)", repr(image_size))
    return float(image_size[0]), float(image_size[1])


def mpdiou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    image_size: tuple[float, float] | None = None,
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Minimum-points-distance IoU loss: :math:`1 - \mathrm{IoU} + \frac{d_1^2 + d_2^2}{W^2 + H^2}`.

    ``d_1`` and ``d_2`` are the distances between the top-left corners and between the
    bottom-right corners of the two boxes, ``W, H`` the width and height of the INPUT IMAGE
    (``image_size=(W, H)``; only ``W^2 + H^2`` enters, so the order does not matter).
    Reference: Ma and Xu, "MPDIoU: A Loss for Efficient and Accurate Bounding Box
    Regression", arXiv 2307.07662, 2023 (checked against code only). Implementations
    disagree on ``W, H`` (some use the enclosing box), so ``image_size`` has no default: it is
    required, and ``None`` raises a :class:`~detloss.DetLossError` naming it.

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        image_size: ``(W, H)`` of the input image, two positive numbers; required.
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> # top-left corners equal, bottom-right 2 apart: 1 - 0.5 + (0 + 4) / (8^2 + 6^2)
        >>> mpdiou_loss(pred, target, image_size=(8, 6))
        tensor(0.5400)
    """
    where = "mpdiou_loss"
    width, height = _check_image_size(where, image_size)
    p, t = prepare_pair(where, pred, target, box_format, eps)
    _, iou = box_similarity(p, t, "iou", eps)
    corners = (p - t) ** 2  # (x1, y1, x2, y2) offsets squared: d1^2 = [0] + [1], d2^2 = [2] + [3]
    loss = 1.0 - iou + corners.sum(dim=-1) / (width * width + height * height)
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def _shrink(boxes: torch.Tensor, ratio: float) -> torch.Tensor:
    """``xyxy`` boxes scaled by ``ratio`` about their centres (Inner-IoU's auxiliary boxes)."""
    centred = convert(boxes, "xyxy", "cxcywh")
    scale = centred.new_tensor((1.0, 1.0, ratio, ratio))
    return to_xyxy(centred * scale, "cxcywh")


def inner_iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    ratio: float = 0.7,
    kind: IoUKind = "iou",
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Inner-IoU loss: :math:`L_{kind} + \mathrm{IoU} - \mathrm{IoU}^{inner}`.

    :math:`\mathrm{IoU}^{inner}` is the IoU of auxiliary boxes, both boxes scaled by ``ratio``
    about their centres; :math:`L_{kind}` is the loss of ``kind`` (``iou, giou, diou, ciou,
    eiou, siou``, as :func:`iou_loss` ... :func:`siou_loss` with their defaults), so the
    default is :math:`1 - \mathrm{IoU}^{inner}`. A ratio below 1 steepens the gradient for
    high-IoU boxes, above 1 widens the useful range for low-IoU ones. Reference: Zhang, Xu and
    Zhang, "Inner-IoU: More Effective Intersection over Union Loss with Auxiliary Bounding
    Box", arXiv 2311.02877, 2023 (checked against code only; ratio in [0.5, 1.5], 0.7 a
    common choice). ``ratio`` must be ``> 0``.

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        ratio: the scale of the auxiliary boxes about their centres, ``> 0``.
        kind: the base loss, one of ``iou, giou, diou, ciou, eiou, siou``.
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> # inner boxes 1 x 1 centred at (1, 1), 2 x 1 centred at (2, 1): overlap 0.5 x 1, union 2.5
        >>> inner_iou_loss(pred, target, ratio=0.5)  # 1 - 0.5 / 2.5
        tensor(0.8000)
    """
    where = "inner_iou_loss"
    check_range(where, "ratio", ratio, 0.0, low_open=True)
    check_choice(where, "kind", kind, IOU_KINDS)
    p, t = prepare_pair(where, pred, target, box_format, eps)
    similarity, iou = box_similarity(p, t, kind, eps)
    inner, _ = box_similarity(_shrink(p, ratio), _shrink(t, ratio), "iou", eps)
    loss = 1.0 - similarity + iou - inner
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def nwd_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    constant: float = 12.8,
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Normalized Gaussian Wasserstein distance loss: :math:`1 - \exp(-\sqrt{W_2^2} / C)`.

    Each box is the Gaussian :math:`\mathcal{N}((c_x, c_y), \mathrm{diag}(w^2/4, h^2/4))`;
    the squared 2-Wasserstein distance of two such Gaussians is

    .. math::
        W_2^2 = \rho^2 + \frac{(w - w^{gt})^2 + (h - h^{gt})^2}{4}

    with ``rho`` the centre distance. Unlike IoU it is smooth and non-zero for disjoint
    boxes, and less sensitive to a pixel of error on tiny objects. Reference: Wang et al.,
    "A Normalized Gaussian Wasserstein Distance for Tiny Object Detection", arXiv 2110.13389,
    2021; ``C`` (``constant``) is a dataset scale, 12.8 (about the mean object size of
    AI-TOD) in the paper. ``constant`` must be ``> 0``. The distance is floored at ``eps``
    so its gradient is finite (0) for identical boxes.

    Args:
        pred: predicted boxes in ``box_format``, floating (half precision runs in float32).
        target: ground-truth boxes in ``box_format``, broadcasting with ``pred``; needs no gradient.
        constant: ``C``, the dataset's scale in pixels, ``> 0``.
        box_format: the layout of both: ``"xyxy"`` (corners), ``"xywh"`` (left, top, width,
            height) or ``"cxcywh"`` (centre, width, height).
        eps: in ``(0, 1]``, added to the denominators so that degenerate boxes stay finite.
        weight: one weight per pair, of the loss's shape or broadcasting to it; ``(*, 4)`` (one
            per coordinate, as mmdetection's) is averaged over the four, ``(*, 1)`` broadcast.
        reduction: ``"none"`` (one value per pair), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, the divisor instead of the number of pairs (e.g. the number
            of positives); below 1 it counts as 1.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting to ``(*, 4)``.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> # rho^2 = 1, widths 2 and 4: W2^2 = 1 + 4/4 = 2
        >>> nwd_loss(pred, target, constant=1.0)  # 1 - exp(-sqrt 2)
        tensor(0.7569)
    """
    where = "nwd_loss"
    check_range(where, "constant", constant, 0.0, low_open=True)
    p, t = prepare_pair(where, pred, target, box_format, eps)
    pcx, pcy, pw, ph = convert(p, "xyxy", "cxcywh").unbind(-1)
    tcx, tcy, tw, th = convert(t, "xyxy", "cxcywh").unbind(-1)
    dw = pw.clamp(min=0) - tw.clamp(min=0)  # an inverted side counts as 0, as in the kernel
    dh = ph.clamp(min=0) - th.clamp(min=0)
    w2 = (pcx - tcx) ** 2 + (pcy - tcy) ** 2 + 0.25 * (dw * dw + dh * dh)
    loss = 1.0 - torch.exp(-torch.sqrt(w2.clamp(min=eps * eps)) / constant)
    return reduce_box_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)

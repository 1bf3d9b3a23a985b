"""IoU-family box-regression losses: each a few lines over :mod:`detloss.boxes`.

Every function takes ``pred`` and ``target`` boxes of shape ``(..., 4)`` (shapes broadcast)
in ``box_format`` (``xyxy`` by default), returns the loss reduced by
:func:`detloss.reduction.reduce_loss`, and computes in float32 for half inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from detloss._typing import AvgFactor, BoxFormat, Reduction
from detloss.boxes.iou import box_similarity, prepare_pair
from detloss.reduction import reduce_loss

__all__ = ["iou_loss", "giou_loss", "diou_loss", "ciou_loss", "eiou_loss", "box_loss"]


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
    similarity, iou = box_similarity(p, t, kind, eps, **options)
    return 1.0 - similarity, iou


def iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str = "linear",
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""IoU loss: :math:`1 - \mathrm{IoU}` (``mode="linear"``) or :math:`-\ln \mathrm{IoU}` (``"log"``).

    Reference: Yu et al., "UnitBox: An Advanced Object Detection Network", ACM MM 2016
    (the ``log`` form); the linear form is the common one (seed 003, Eq. 12). Its gradient
    vanishes for disjoint boxes. In ``log`` mode the IoU is floored at ``eps`` so a
    disjoint pair gives ``-ln(eps)`` (16.1 for the default), not infinity.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> target = torch.tensor([[2.0, 0.0, 6.0, 2.0]])  # overlap 4, union 12
        >>> iou_loss(pred, target)  # 1 - 1/3
        tensor(0.6667)
        >>> iou_loss(pred, target, mode="log")  # ln 3
        tensor(1.0986)
    """
    from detloss._checks import check_choice

    check_choice("iou_loss", "mode", mode, ("linear", "log"))
    loss, iou = box_loss("iou_loss", "iou", pred, target, box_format, eps)
    if mode == "log":
        loss = -torch.log(iou.clamp(min=eps))
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="iou_loss")


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

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
        >>> target = torch.tensor([[4.0, 0.0, 6.0, 1.0]])  # disjoint: IoU 0
        >>> giou_loss(pred, target)  # enclosing 6 x 1 = 6, union 4: 1 - 0 + 2/6
        tensor(1.3333)
    """
    loss, _ = box_loss("giou_loss", "giou", pred, target, box_format, eps)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="giou_loss")


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

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
        >>> target = torch.tensor([[4.0, 0.0, 6.0, 1.0]])  # centres 4 apart
        >>> diou_loss(pred, target)  # 1 - 0 + 16 / (6^2 + 1^2) = 1 + 16/37
        tensor(1.4324)
    """
    loss, _ = box_loss("diou_loss", "diou", pred, target, box_format, eps)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="diou_loss")


def ciou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha_gate: bool = False,
    grad_mode: str = "exact",
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

    Deviations for safety, both of size ``eps``: ``alpha = v / (1 - IoU + v + eps)`` (finite
    for identical boxes, where mmdetection's gives NaN) and the aspect angle is
    ``atan((w + eps) / (h + eps))`` (finite for zero-height boxes and points).

    Example (non-square boxes, so the aspect term is not zero):
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])  # 2 x 2, centre (1, 1)
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])  # 4 x 2, centre (2, 1)
        >>> # IoU 4/8 = 0.5; rho^2/c^2 = 1/20; v = 4/pi^2 (atan 2 - pi/4)^2 = 0.041956
        >>> # alpha = v / (0.5 + v) = 0.077417; loss = 0.5 + 0.05 + 0.003248
        >>> ciou_loss(pred, target)
        tensor(0.5532)
    """
    from detloss._checks import check_choice

    check_choice("ciou_loss", "grad_mode", grad_mode, ("exact", "paper"))
    loss, _ = box_loss(
        "ciou_loss", "ciou", pred, target, box_format, eps, alpha_gate=bool(alpha_gate), aspect_grad=grad_mode
    )
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="ciou_loss")


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
    r"""Efficient-IoU loss: :math:`1 - \mathrm{IoU} + \frac{\rho^2}{c^2} + \frac{(w - w^{gt})^2}{C_w^2} + \frac{(h - h^{gt})^2}{C_h^2}`.

    ``C_w, C_h`` are the sides of the smallest enclosing box. Reference: Zhang et al.,
    "Focal and Efficient IOU Loss for Accurate Bounding Box Regression", Neurocomputing
    2022 (arXiv 2101.08158), Eq. 16 of seed 003. Not mmdetection's ``EIoULoss``, which is
    a different ("Extended IoU") loss.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> eiou_loss(pred, target)  # 0.5 + 1/20 + (2 - 4)^2 / 4^2 + 0 / 2^2 = 0.8
        tensor(0.8000)
    """
    loss, _ = box_loss("eiou_loss", "eiou", pred, target, box_format, eps)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where="eiou_loss")

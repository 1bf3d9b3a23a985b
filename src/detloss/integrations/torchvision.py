"""Drop-ins for the box and focal losses of ``torchvision.ops``: the same names, arguments and defaults.

``from detloss.integrations.torchvision import complete_box_iou_loss`` in place of
``from torchvision.ops import complete_box_iou_loss``: each function takes torchvision's
arguments, with torchvision's defaults (``reduction="none"`` for the losses, where detloss's own
functions default to ``"mean"``; ``alpha=-1`` for "no alpha", where detloss says ``None``), and
calls detloss's function. Integer boxes are computed in float32, as torchvision does. For
valid boxes (``x1 < x2``, ``y1 < y2``) the values are torchvision's to float rounding (detloss
adds ``eps`` to the union of ``box_iou`` and ``generalized_box_iou`` and to the enclosing area,
which torchvision does not: a relative difference of ``eps / union``). They differ where
torchvision's are not finite or drop an argument:

- a zero-height (or zero-width) box: torchvision's CIoU takes ``atan(w / h)`` and returns NaN
  for ``w = h = 0`` and NaN gradients for ``h = 0``; detloss uses ``atan2(w + eps, h + eps)``;
- two zero-area boxes: torchvision's ``box_iou`` and ``generalized_box_iou`` divide 0 by 0
  (NaN); detloss gives IoU 0 and a finite GIoU (0 for two equal points);
- ``complete_box_iou_loss(..., eps=e)``: torchvision uses ``e`` in its aspect term only and
  ``1e-7`` in the DIoU part; detloss uses ``e`` everywhere;
- ``sigmoid_focal_loss(..., reduction="mean")`` of an empty input: torchvision NaN, detloss 0.

torchvision's ``box_iou`` also takes leading batch dimensions and rotated formats; these take
``(N, 4)`` and ``(M, 4)`` boxes in ``xyxy``, ``xywh`` or ``cxcywh``, and raise a
:class:`~detloss.DetLossError` for anything else.

Example:
    >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    >>> target = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    >>> complete_box_iou_loss(pred, target)  # reduction "none", as torchvision's
    tensor([0.5532])
"""

from __future__ import annotations

import torch

from detloss import functional as F
from detloss.boxes import pairwise_iou

__all__ = [
    "box_iou",
    "complete_box_iou",
    "complete_box_iou_loss",
    "distance_box_iou",
    "distance_box_iou_loss",
    "generalized_box_iou",
    "generalized_box_iou_loss",
    "sigmoid_focal_loss",
]


def _float(boxes: torch.Tensor) -> torch.Tensor:
    """Integer boxes become float32, as in torchvision; floating ones are left to detloss."""
    return boxes if not isinstance(boxes, torch.Tensor) or boxes.is_floating_point() else boxes.float()


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, fmt: str = "xyxy") -> torch.Tensor:
    """``torchvision.ops.box_iou``: :func:`detloss.boxes.pairwise_iou` with ``kind="iou"``, ``box_format=fmt``."""
    return pairwise_iou(_float(boxes1), _float(boxes2), "iou", box_format=fmt)  # type: ignore[arg-type]


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """``torchvision.ops.generalized_box_iou``: :func:`detloss.boxes.pairwise_iou` with ``kind="giou"``."""
    return pairwise_iou(_float(boxes1), _float(boxes2), "giou")


def distance_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``torchvision.ops.distance_box_iou``: :func:`detloss.boxes.pairwise_iou` with ``kind="diou"``."""
    return pairwise_iou(_float(boxes1), _float(boxes2), "diou", eps=eps)


def complete_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``torchvision.ops.complete_box_iou``: :func:`detloss.boxes.pairwise_iou` with ``kind="ciou"``."""
    return pairwise_iou(_float(boxes1), _float(boxes2), "ciou", eps=eps)


def generalized_box_iou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """``torchvision.ops.generalized_box_iou_loss``: :func:`detloss.functional.giou_loss`."""
    return F.giou_loss(_float(boxes1), _float(boxes2), reduction=reduction, eps=eps)  # type: ignore[arg-type]


def distance_box_iou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """``torchvision.ops.distance_box_iou_loss``: :func:`detloss.functional.diou_loss`."""
    return F.diou_loss(_float(boxes1), _float(boxes2), reduction=reduction, eps=eps)  # type: ignore[arg-type]


def complete_box_iou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """``torchvision.ops.complete_box_iou_loss``: :func:`detloss.functional.ciou_loss` (the AAAI 2020
    CIoU, alpha held constant, as torchvision's)."""
    return F.ciou_loss(_float(boxes1), _float(boxes2), reduction=reduction, eps=eps)  # type: ignore[arg-type]


def sigmoid_focal_loss(
    inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2, reduction: str = "none"
) -> torch.Tensor:
    """``torchvision.ops.sigmoid_focal_loss``: :func:`detloss.functional.sigmoid_focal_loss`, ``alpha=-1``
    meaning no alpha (detloss's ``alpha=None``)."""
    return F.sigmoid_focal_loss(
        inputs, targets, alpha=None if alpha == -1 else alpha, gamma=gamma, reduction=reduction  # type: ignore[arg-type]
    )

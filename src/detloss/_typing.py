"""Type aliases shared by the public signatures."""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "AngleUnit",
    "AvgFactor",
    "BoxFormat",
    "GaussianKind",
    "IoUKind",
    "Reduction",
    "RotatedBoxFormat",
    "RotatedIoUKind",
]

#: Box layouts: corners, left-top-width-height (COCO), centre-width-height (YOLO).
BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
#: Rotated box layouts: centre, sides and angle; or the four corners (``detloss.boxes.rotated``).
RotatedBoxFormat = Literal["cxcywha", "xyxyxyxy"]
#: Unit of the angle of ``cxcywha`` boxes.
AngleUnit = Literal["rad", "deg"]
#: Overlap measures of rotated boxes (exact polygon areas).
RotatedIoUKind = Literal["iou", "giou"]
#: Distances between rotated boxes seen as Gaussians.
GaussianKind = Literal["bhattacharyya", "kld", "gwd"]
#: Overlap measures computed by the one geometry kernel in :mod:`detloss.boxes.iou`.
IoUKind = Literal["iou", "giou", "diou", "ciou", "eiou", "siou"]
#: How a loss tensor is reduced.
Reduction = Literal["none", "mean", "sum"]
#: Normaliser for ``reduction="mean"``: a number or a 0-d tensor (e.g. the number of positives).
AvgFactor = float | int | torch.Tensor

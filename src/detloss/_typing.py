"""Type aliases shared by the public signatures."""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["AvgFactor", "BoxFormat", "IoUKind", "Reduction"]

#: Box layouts: corners, left-top-width-height (COCO), centre-width-height (YOLO).
BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
#: Overlap measures computed by the one geometry kernel in :mod:`detloss.boxes.iou`.
IoUKind = Literal["iou", "giou", "diou", "ciou", "eiou", "siou"]
#: How a loss tensor is reduced.
Reduction = Literal["none", "mean", "sum"]
#: Normaliser for ``reduction="mean"``: a number or a 0-d tensor (e.g. the number of positives).
AvgFactor = float | int | torch.Tensor

"""Box formats: ``xyxy`` corners, ``xywh`` (left, top, width, height), ``cxcywh`` centres."""

from __future__ import annotations

from typing import get_args

import torch

from detloss._checks import check_boxes, check_choice
from detloss._typing import BoxFormat

__all__ = ["BOX_FORMATS", "area", "convert", "to_xyxy"]

#: The box layouts, read from the type :data:`detloss._typing.BoxFormat`.
BOX_FORMATS: tuple[str, ...] = get_args(BoxFormat)


def to_xyxy(boxes: torch.Tensor, box_format: str) -> torch.Tensor:
    """Convert ``boxes`` from ``box_format`` to corners; no checks (internal fast path)."""
    if box_format == "xyxy":
        return boxes
    a, b, c, d = boxes.unbind(-1)
    if box_format == "xywh":
        return torch.stack((a, b, a + c, b + d), dim=-1)
    return torch.stack((a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d), dim=-1)


def _from_xyxy(boxes: torch.Tensor, box_format: str) -> torch.Tensor:
    if box_format == "xyxy":
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    if box_format == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    return torch.stack((0.5 * (x1 + x2), 0.5 * (y1 + y2), x2 - x1, y2 - y1), dim=-1)


def convert(boxes: torch.Tensor, in_fmt: BoxFormat, out_fmt: BoxFormat) -> torch.Tensor:
    """Convert boxes of shape ``(..., 4)`` between formats.

    - ``"xyxy"``: ``(x1, y1, x2, y2)``, corners, ``x1 <= x2`` and ``y1 <= y2`` for a valid box;
    - ``"xywh"``: ``(left, top, width, height)``, the format of COCO json (torchvision's ``xywh``);
    - ``"cxcywh"``: ``(centre x, centre y, width, height)``, the format of YOLO.

    Args:
        boxes: boxes, floating, the last dimension the four numbers of ``in_fmt``.
        in_fmt: their format: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.
        out_fmt: the format returned (a copy when it is ``in_fmt``).

    Shape:
        - boxes: ``(*, 4)``; output: ``(*, 4)``.

    Example:
        >>> convert(torch.tensor([120.0, 80.0, 200.0, 150.0]), "xywh", "xyxy")
        tensor([120.,  80., 320., 230.])
        >>> convert(torch.tensor([120.0, 80.0, 320.0, 230.0]), "xyxy", "cxcywh")
        tensor([220., 155., 200., 150.])
    """
    check_boxes("convert", "boxes", boxes)
    check_choice("convert", "in_fmt", in_fmt, BOX_FORMATS)
    check_choice("convert", "out_fmt", out_fmt, BOX_FORMATS)
    if in_fmt == out_fmt:
        return boxes.clone()
    return _from_xyxy(to_xyxy(boxes, in_fmt), out_fmt)


def area(boxes: torch.Tensor, box_format: BoxFormat = "xyxy") -> torch.Tensor:
    """Area of boxes of shape ``(..., 4)``; an inverted side counts as 0 (never negative).

    Args:
        boxes: boxes in ``box_format``, floating.
        box_format: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.

    Shape:
        - boxes: ``(*, 4)``; output: ``(*)``.

    Example:
        >>> area(torch.tensor([[0.0, 0.0, 4.0, 2.0], [3.0, 3.0, 1.0, 5.0]]))
        tensor([8., 0.])
    """
    check_boxes("area", "boxes", boxes)
    check_choice("area", "box_format", box_format, BOX_FORMATS)
    x1, y1, x2, y2 = to_xyxy(boxes, box_format).unbind(-1)
    return (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)

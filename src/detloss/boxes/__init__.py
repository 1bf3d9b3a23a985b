"""Box geometry, no losses: formats, the R-CNN coder, the IoU-family kernel, and rotated boxes."""

from detloss.boxes.coder import BoxCoder
from detloss.boxes.convert import BOX_FORMATS, area, convert
from detloss.boxes.iou import IOU_KINDS, aligned_iou, pairwise_iou
from detloss.boxes.rotated import (
    ANGLE_UNITS,
    ROTATED_FORMATS,
    convert_rotated,
    gaussian_distance,
    kfiou,
    pairwise_rotated_iou,
    rotated_iou,
    rotated_nms,
    rotated_outline,
)

__all__ = [
    "ANGLE_UNITS",
    "BOX_FORMATS",
    "IOU_KINDS",
    "ROTATED_FORMATS",
    "BoxCoder",
    "aligned_iou",
    "area",
    "convert",
    "convert_rotated",
    "gaussian_distance",
    "kfiou",
    "pairwise_iou",
    "pairwise_rotated_iou",
    "rotated_iou",
    "rotated_nms",
    "rotated_outline",
]

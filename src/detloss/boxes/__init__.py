"""Box geometry, no losses: formats, the R-CNN coder, and the IoU-family kernel."""

from detloss.boxes.coder import BoxCoder
from detloss.boxes.convert import BOX_FORMATS, area, convert
from detloss.boxes.iou import IOU_KINDS, aligned_iou, pairwise_iou

__all__ = ["BOX_FORMATS", "IOU_KINDS", "BoxCoder", "aligned_iou", "area", "convert", "pairwise_iou"]

"""Every loss as a pure function of tensors: ``name_loss(pred, target, *, ..., weight, reduction, avg_factor)``."""

from detloss.functional.iou import ciou_loss, diou_loss, eiou_loss, giou_loss, iou_loss

__all__ = ["ciou_loss", "diou_loss", "eiou_loss", "giou_loss", "iou_loss"]

"""Matching costs, Hungarian matching and the dense assigners: the targets every detection loss needs.

- DETR family: :func:`focal_cost`, :func:`class_cost`, :func:`l1_cost`, :func:`iou_cost`, their
  weighted sum :class:`MatchingCost` (presets ``detr()``, ``deformable_detr()``, ``dino()``)
  and :func:`hungarian_match` (scipy: ``pip install detloss[assign]``).
- Dense heads: :class:`TaskAlignedAssigner` (TOOD, YOLOv8), :class:`ATSSAssigner`,
  :class:`SimOTAAssigner` (YOLOX), on the anchors of :func:`make_anchors`, returning an
  :class:`AssignResult`.

Example (a DETR-style match of two queries to one object):
    >>> import torch
    >>> from detloss.assign import MatchingCost, hungarian_match
    >>> logits = torch.tensor([[[-4.0, 3.0], [3.0, -4.0]]])  # sigmoid logits, 2 classes
    >>> boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]])  # cxcywh, normalised
    >>> cost, bad = MatchingCost.dino()(logits, boxes, torch.tensor([[0]]), torch.tensor([[[0.3, 0.3, 0.2, 0.2]]]))
    >>> hungarian_match(cost, [1])  # query 1: class 0 and the same box
    (tensor([0]), tensor([1]), tensor([0]))
"""

from detloss.assign.atss import ATSSAssigner
from detloss.assign.base import Anchors, AssignResult, make_anchors
from detloss.assign.costs import (
    NONFINITE_COST,
    MatchingCost,
    class_cost,
    focal_cost,
    iou_cost,
    l1_cost,
    sanitize_cost,
    target_mask,
)
from detloss.assign.matching import NonFiniteCostWarning, hungarian_match
from detloss.assign.simota import SimOTAAssigner
from detloss.assign.task_aligned import TAL_RULES, TaskAlignedAssigner

__all__ = [
    "NONFINITE_COST",
    "TAL_RULES",
    "ATSSAssigner",
    "Anchors",
    "AssignResult",
    "MatchingCost",
    "NonFiniteCostWarning",
    "SimOTAAssigner",
    "TaskAlignedAssigner",
    "class_cost",
    "focal_cost",
    "hungarian_match",
    "iou_cost",
    "l1_cost",
    "make_anchors",
    "sanitize_cost",
    "target_mask",
]

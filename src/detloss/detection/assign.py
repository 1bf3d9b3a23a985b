"""Target assignment of both heads: YOLOv3's for the anchor-based head, :mod:`detloss.assign` for
the anchor-free one.

YOLOv3 (Redmon and Farhadi, "YOLOv3: An Incremental Improvement", arXiv 1804.02767, Sec.
2.1-2.3): a ground truth is the responsibility of the anchor (over all levels) whose shape,
centred on the box, has the highest IoU with it, at the grid cell of that anchor's level that
contains the box's centre. Predictions that are not responsible for any box but overlap one
with IoU above a threshold (0.5) are neither positives nor negatives: they are ignored.

The anchor-free head (:mod:`detloss.detection.anchor_free`) takes a dense assigner by name
(:data:`ASSIGNERS`, :func:`build_assigner`) and its objects padded per image
(:func:`pad_targets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from detloss import DetLossError
from detloss.assign import ATSSAssigner, SimOTAAssigner, TaskAlignedAssigner
from detloss.assign.base import DenseAssigner
from detloss.boxes import aligned_iou, pairwise_iou
from detloss.detection.model import Priors

__all__ = [
    "ASSIGNERS",
    "ATSS_ANCHOR_SCALE",
    "Assignment",
    "assign_targets",
    "build_assigner",
    "ignore_mask",
    "pad_targets",
    "stack_targets",
]

#: The dense assigners of the anchor-free head, by the name ``--assigner`` takes.
ASSIGNERS = ("tal", "atss", "simota")
#: Side of ATSS's square anchors in strides, for the anchor-free head (see :func:`build_assigner`).
ATSS_ANCHOR_SCALE = 4.0


@dataclass(frozen=True)
class Assignment:
    """Positives of a batch: ``P`` slots, each with the ground truth it must predict."""

    batch_index: torch.Tensor  #: (P,) image of each positive
    slot_index: torch.Tensor  #: (P,) slot (in the layout of :mod:`detloss.detection.model`)
    boxes: torch.Tensor  #: (P, 4) ground-truth boxes, xyxy pixels
    labels: torch.Tensor  #: (P,) ground-truth labels

    @property
    def num_positives(self) -> int:
        return int(self.slot_index.shape[0])


def stack_targets(targets: Sequence[dict[str, Any]], device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """Concatenate per-image targets: ``(batch_index (G,), boxes (G, 4), labels (G,))``."""
    boxes, labels, index = [], [], []
    for b, target in enumerate(targets):
        tb = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        boxes.append(tb)
        labels.append(torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1))
        index.append(torch.full((tb.shape[0],), b, dtype=torch.int64))
    if not boxes:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    out = torch.cat(index), torch.cat(boxes), torch.cat(labels)
    return tuple(t.to(device) for t in out) if device is not None else out


def assign_targets(priors: Priors, targets: Sequence[dict[str, Any]]) -> Assignment:
    """The YOLOv3 assignment of ``targets`` (per image: ``boxes`` xyxy pixels, ``labels``).

    For each ground truth: the anchor ``a*`` (over all levels) of highest IoU between the
    anchor and box shapes, both centred at the origin; the level ``l`` of ``a*``; the cell
    ``(floor(c_x / s_l), floor(c_y / s_l))`` of the centre, clamped to the grid. When two
    ground truths of one image land on the same slot, the one listed later keeps it (as in
    YOLOv3, whose later target overwrites the earlier one). Boxes with a side <= 0 are skipped.

    Example (a 16 x 16 image, one level of stride 8, anchors 4 x 4 and 8 x 2):
        >>> from detloss.detection.model import make_priors
        >>> p = make_priors(torch.tensor([[[4.0, 4.0], [8.0, 2.0]]]), (8,), 16)
        >>> t = [{"boxes": torch.tensor([[9.0, 1.0, 15.0, 3.0]]), "labels": torch.tensor([2])}]
        >>> a = assign_targets(p, t)  # 6 x 2 box: IoU 8/20 with 4 x 4, 12/16 with 8 x 2
        >>> a.slot_index.tolist()  # anchor 1, centre (12, 2) -> cell (1, 0): 1 * 4 + 0 * 2 + 1
        [5]
    """
    device = priors.anchors.device
    batch_index, boxes, labels = stack_targets(targets, device)
    boxes = boxes.to(priors.anchors.dtype)
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = (wh > 0).all(dim=1)
    batch_index, boxes, labels, wh = batch_index[keep], boxes[keep], labels[keep], wh[keep]
    if labels.numel() and (labels.min() < 0):
        raise DetLossError.bad_argument("assign_targets", "targets", "labels >= 0", int(labels.min()))
    level_anchors = priors.level_anchors.to(boxes.dtype)
    per_level = level_anchors.shape[1]
    flat_anchors = level_anchors.reshape(-1, 2)
    centred = torch.cat((-0.5 * wh, 0.5 * wh), dim=-1)
    anchor_boxes = torch.cat((-0.5 * flat_anchors, 0.5 * flat_anchors), dim=-1)
    best = pairwise_iou(centred, anchor_boxes).argmax(dim=1) if wh.shape[0] else wh.new_zeros(0).long()
    level = best // per_level
    anchor = best % per_level
    strides = torch.tensor(priors.level_strides, dtype=boxes.dtype, device=device)[level]
    heights = torch.tensor([g[0] for g in priors.grid_sizes], device=device)[level]
    widths = torch.tensor([g[1] for g in priors.grid_sizes], device=device)[level]
    offsets = torch.tensor(priors.offsets, device=device)[level]
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    gx = torch.minimum(torch.floor(centre[:, 0] / strides).long().clamp(min=0), widths - 1)
    gy = torch.minimum(torch.floor(centre[:, 1] / strides).long().clamp(min=0), heights - 1)
    slot = offsets + anchor * heights * widths + gy * widths + gx
    # one ground truth per (image, slot): the last one listed wins
    key = batch_index * priors.num_slots + slot
    order = torch.arange(key.shape[0], device=device)
    owner = torch.full((int(key.max()) + 1 if key.numel() else 0,), -1, dtype=torch.long, device=device)
    owner.scatter_reduce_(0, key, order, reduce="amax")
    winner = owner[key] == order
    return Assignment(batch_index[winner], slot[winner], boxes[winner], labels[winner])


def ignore_mask(
    decoded: torch.Tensor, targets: Sequence[dict[str, Any]], threshold: float = 0.5
) -> torch.Tensor:
    """``(B, N)`` True where a predicted box overlaps some ground truth of its image with
    IoU above ``threshold`` (computed without gradient). Positives are not removed here.

    Example:
        >>> pred = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 1.0]]])
        >>> ignore_mask(pred, [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 3.0]])}])  # IoU 0.75 and 1/3
        tensor([[ True, False]])
    """
    batch = decoded.shape[0]
    counts = [int(torch.as_tensor(t["boxes"]).reshape(-1, 4).shape[0]) for t in targets]
    most = max(counts, default=0)
    if most == 0:
        return torch.zeros(decoded.shape[:2], dtype=torch.bool, device=decoded.device)
    # pad with empty boxes: their IoU with anything is 0
    gt = decoded.new_zeros((batch, most, 4))
    for b, target in enumerate(targets):
        if counts[b]:
            gt[b, : counts[b]] = torch.as_tensor(target["boxes"]).reshape(-1, 4).to(gt)
    with torch.no_grad():
        iou = aligned_iou(decoded.detach()[:, :, None, :], gt[:, None, :, :])
    return iou.amax(dim=2) > threshold


def build_assigner(name: str, strides: Sequence[int]) -> DenseAssigner:
    """The dense assigner ``name`` (:data:`ASSIGNERS`) for a head of these ``strides``.

    - ``"tal"``: :meth:`TaskAlignedAssigner.yolov8 <detloss.assign.TaskAlignedAssigner.yolov8>`,
      YOLOv8's task-aligned assigner (``topk=10, alpha=0.5, beta=6``, CIoU, ultralytics' rule),
      with ultralytics' widening of object sides below the second stride (here 16 px) for the
      centre-inside test, so that an object smaller than a cell still has candidates;
    - ``"atss"``: :class:`~detloss.assign.ATSSAssigner`, 9 candidates per level as in the
      paper, with square anchors of 4 strides (:data:`ATSS_ANCHOR_SCALE`) where the paper's
      are 8 (for inputs of 800 pixels): on 64-pixel scenes, 8 strides are 64- and 128-pixel
      anchors, larger than every object; each then contains the object, their IoUs tie, and
      mean + std lies above them, so that (measured on 256 training scenes) only 11% of the
      objects got a positive, and none below 12 pixels; with 4 strides, 50%;
    - ``"simota"``: :class:`~detloss.assign.SimOTAAssigner` with YOLOX's defaults (centre
      region of 1.5 strides), on the class probabilities (no objectness).

    Args:
        name: ``"tal"``, ``"atss"`` or ``"simota"``.
        strides: the head's strides in pixels, smallest first.

    Example:
        >>> build_assigner("tal", (8, 16)).min_box_size
        16.0
    """
    if name == "tal":
        return TaskAlignedAssigner.yolov8(min_box_size=float(strides[1] if len(strides) > 1 else strides[0]))
    if name == "atss":
        return ATSSAssigner(anchor_scale=ATSS_ANCHOR_SCALE)
    if name == "simota":
        return SimOTAAssigner()
    raise DetLossError.bad_argument("build_assigner", "name", "one of " + ", ".join(ASSIGNERS), repr(name))


def pad_targets(
    targets: Sequence[dict[str, Any]], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image targets padded to the most objects of an image, as :mod:`detloss.assign` takes
    them: ``labels (B, T)`` int64, ``boxes (B, T, 4)`` xyxy, ``mask (B, T)`` bool. Boxes with a
    side <= 0 are masked out (the YOLOv3 assignment skips them too); padding is label 0, box 0.

    Args:
        targets: one dict per image with ``boxes (T_i, 4)`` xyxy and ``labels (T_i,)``.
        device: where the outputs go (default: that of the boxes).
        dtype: the dtype of the padded boxes.

    Example:
        >>> t = [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 1.0, 5.0]]), "labels": torch.tensor([2, 1])},
        ...      {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
        >>> labels, boxes, mask = pad_targets(t)
        >>> labels.tolist(), mask.tolist()  # the second box has width 0
        ([[2, 1], [0, 0]], [[True, False], [False, False]])
    """
    batch_index, boxes, labels = stack_targets(targets, device)
    batch = len(targets)
    counts = torch.bincount(batch_index, minlength=batch) if batch else batch_index
    most = int(counts.max()) if batch and boxes.shape[0] else 0
    # position of each object within its image: its index minus the first index of its image
    starts = torch.cumsum(counts, 0) - counts if batch else counts
    column = torch.arange(boxes.shape[0], device=boxes.device) - starts[batch_index]
    out_labels = torch.zeros((batch, most), dtype=torch.int64, device=boxes.device)
    out_boxes = torch.zeros((batch, most, 4), dtype=dtype, device=boxes.device)
    mask = torch.zeros((batch, most), dtype=torch.bool, device=boxes.device)
    out_labels[batch_index, column] = labels
    out_boxes[batch_index, column] = boxes.to(dtype)
    mask[batch_index, column] = ((boxes[:, 2:] - boxes[:, :2]) > 0).all(dim=1)
    return out_labels, out_boxes, mask

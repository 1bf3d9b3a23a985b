r"""Adaptive training sample selection (ATSS, Zhang et al., CVPR 2020)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from detloss._checks import check_range
from detloss.assign.base import (
    Anchors,
    AssignResult,
    DenseAssigner,
    DenseInputs,
    build_result,
    gt_blocks,
    keep_better,
    points_inside,
)
from detloss.boxes.iou import box_similarity
from detloss.errors import DetLossError

__all__ = ["ATSSAssigner"]

#: Margin of the centre-inside test, in pixels (the authors' code).
_INSIDE_MARGIN = 0.01


@dataclass(frozen=True)
class ATSSAssigner(DenseAssigner):
    r"""ATSS: positives by an IoU threshold adapted to each object's statistics.

    Reference: Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection
    via Adaptive Training Sample Selection", CVPR 2020, Algorithm 1. For each object ``g``:

    1. on each pyramid level, the ``topk`` anchors whose centres are nearest (L2) to the centre
       of ``g`` are candidates (``min(topk, level size)`` per level);
    2. :math:`t_g = m_g + v_g`, the mean plus the (unbiased) standard deviation of the
       candidates' IoUs with ``g`` (anchor boxes, not predictions; a single candidate has
       :math:`v_g = 0`);
    3. candidates with IoU :math:`\ge t_g` whose centre lies inside ``g`` (by more than 0.01 px,
       as in the authors' code) are positives;
    4. an anchor positive for several objects keeps the one of highest IoU (the first on ties).

    Anchor boxes are ``Anchors.boxes`` when given, else squares of side
    ``anchor_scale * stride`` about the points: the paper's one square anchor per location of
    scale 8S (``anchor_scale=8``); YOLOv6 and PP-YOLOE use 5. The soft target (in ``scores``)
    is the IoU of the anchor's *predicted* box with its object, the quality target of GFL
    (Li et al., NeurIPS 2020), which trains with ATSS. ``scores`` is read only for its shape.

    Memory and syncs as in ``detloss.assign.base``: batched over images, objects in
    bounded blocks, no host sync.

    Args:
        topk: candidates per level, ``>= 1`` (the paper's ``k = 9``).
        anchor_scale: side of the square anchors in strides, ``> 0``.

    Example (a 3 x 3 grid of 4 px cells, anchor boxes = cells; an object about the middle one):
        >>> from detloss.assign import make_anchors
        >>> anchors = make_anchors([(3, 3)], [4])  # centres 2, 6, 10 in x and y
        >>> cells = torch.cat([anchors.points - 2, anchors.points + 2], dim=1)[None]
        >>> gt = torch.tensor([[[3.0, 3.0, 9.0, 9.0]]])  # centre (6, 6)
        >>> r = ATSSAssigner(topk=5, anchor_scale=1.0)(torch.zeros(1, 9, 2), cells, anchors,
        ...                                            torch.tensor([[1]]), gt, torch.tensor([[True]]))
        >>> # candidates: the middle cell (IoU 16/36) and its 4 neighbours (4/48 each):
        >>> # threshold mean + std = 0.156 + 0.161 = 0.317, passed by the middle cell only
        >>> r.fg_mask[0].nonzero().flatten().tolist(), r.labels[0, 4].item()
        ([4], 1)
        >>> r.scores[0, 4]  # IoU of the predicted box (here its cell) with the object
        tensor([0.0000, 0.4444])
    """

    topk: int = 9
    anchor_scale: float = 8.0

    def __post_init__(self) -> None:
        where = "ATSSAssigner"
        if not isinstance(self.topk, int) or isinstance(self.topk, bool) or self.topk < 1:
            raise DetLossError.bad_argument(where, "topk", "an int >= 1", repr(self.topk))
        check_range(where, "anchor_scale", self.anchor_scale, 0.0, low_open=True)

    def assign(self, inp: DenseInputs, anchors: Anchors) -> AssignResult:
        batch, count, _ = inp.scores.shape
        num_gt = inp.gt_boxes.shape[1]
        if anchors.boxes is not None:
            anchor_boxes = anchors.boxes.to(inp.dtype)
        else:
            half = (0.5 * self.anchor_scale * inp.strides)[:, None]
            anchor_boxes = torch.cat([inp.points - half, inp.points + half], dim=1)
        centres = 0.5 * (anchor_boxes[:, :2] + anchor_boxes[:, 2:])
        starts = [0, *itertools.accumulate(anchors.level_sizes)]
        levels = [(s, e) for s, e in itertools.pairwise(starts) if e > s]

        best = torch.full((batch, count), -1.0, dtype=inp.dtype, device=inp.boxes.device)
        best_gt = torch.zeros((batch, count), dtype=torch.long, device=inp.boxes.device)
        for block in gt_blocks(batch, num_gt, count):
            objects = inp.gt_boxes[:, block]  # (B, t, 4)
            centre = 0.5 * (objects[..., :2] + objects[..., 2:])
            dx = centres[:, 0] - centre[..., 0, None]
            dy = centres[:, 1] - centre[..., 1, None]
            distance = dx * dx + dy * dy  # (B, t, A), squared: the same order as L2
            candidates = torch.cat(
                [distance[..., s:e].topk(min(self.topk, e - s), dim=2, largest=False).indices + s for s, e in levels],
                dim=2,
            )  # (B, t, K)
            iou = box_similarity(anchor_boxes[candidates], objects[:, :, None, :], "iou", 1e-7)[0]
            spread = iou.std(dim=2, keepdim=True) if iou.shape[2] > 1 else torch.zeros_like(iou[..., :1])
            threshold = iou.mean(dim=2, keepdim=True) + spread
            cx, cy = centres[candidates].unbind(-1)
            inside = points_inside(cx, cy, objects, _INSIDE_MARGIN)
            pos = (iou >= threshold) & inside & inp.gt_mask[:, block, None]
            # per anchor: the highest positive IoU of this block and the first object reaching it
            value = torch.where(pos, iou, -1.0).flatten(1)
            flat = candidates.flatten(1)
            block_best = torch.full_like(best, -1.0).scatter_reduce_(1, flat, value, "amax")
            owner = torch.arange(block.start, block.stop, device=flat.device)[None, :, None].expand_as(candidates)
            hit = pos.flatten(1) & (value == block_best.gather(1, flat))
            block_gt = torch.full_like(best_gt, num_gt).scatter_reduce_(
                1, flat, torch.where(hit, owner.flatten(1), num_gt), "amin"
            )
            best = keep_better(best, block_best, larger=True, pairs=((best_gt, block_gt),))
        fg = best >= 0
        index = torch.where(fg, best_gt, 0)
        assigned = inp.gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))
        quality = box_similarity(inp.boxes, assigned, "iou", 1e-7)[0]
        return build_result(inp, fg, best_gt, quality)

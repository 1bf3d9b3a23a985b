r"""Task-aligned assignment (TOOD, Feng et al., ICCV 2021), in the author's and in YOLOv8's rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from detloss._checks import check_choice, check_range
from detloss._typing import IoUKind
from detloss.assign._geometry import batched_pairwise
from detloss.assign.base import (
    Anchors,
    AssignResult,
    DenseAssigner,
    DenseInputs,
    build_result,
    gather_scores,
    gt_blocks,
    keep_better,
    points_inside,
    take,
)
from detloss.boxes.convert import convert
from detloss.boxes.iou import IOU_KINDS
from detloss.errors import DetLossError

__all__ = ["TAL_RULES", "TaskAlignedAssigner"]

#: The two readings of TOOD's selection: the authors' (``"tood"``) and YOLOv8's.
TAL_RULES: tuple[str, ...] = ("tood", "ultralytics")
#: Per rule: margin of the centre-inside test, eps of the score normaliser.
_RULE_EPS = {"tood": (0.01, 1e-7), "ultralytics": (1e-9, 1e-9)}


@dataclass(frozen=True)
class TaskAlignedAssigner(DenseAssigner):
    r"""Task-aligned assignment: positives by :math:`t = s^\alpha u^\beta`, soft targets by IoU.

    Reference: Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021,
    Sec. 3.2. For each object and anchor, ``s`` is the predicted probability of the object's
    class and ``u`` the overlap (``iou_kind``, clamped at 0) of the anchor's predicted box with
    the object. For each object:

    1. the ``topk`` anchors of largest ``t`` whose centre lies inside the object are its
       positives;
    2. an anchor positive for several objects keeps the one it overlaps most;
    3. its soft target (in ``scores``) is :math:`\hat t = t \cdot \max u / (\max t + \epsilon)`,
       maxima over the object's final positives: the best-aligned anchor's target is the
       object's best IoU (TOOD Eq. 10 normalisation).

    The two ``rule`` values differ where the authors' code (``"tood"``, also mmdetection's)
    and ultralytics (``"ultralytics"``, YOLOv8) do, on purpose:

    ======================  ===================================== ====================================
    step                     ``"tood"`` (default)                 ``"ultralytics"``
    ======================  ===================================== ====================================
    top-k over               all anchors, then those outside the   anchors inside the object only
                             object (and ``t = 0``) dropped
    inside the object        centre > 0.01 from every side         > 1e-9 (sides shorter than
                                                                   ``min_box_size`` widened first)
    several objects          highest ``u`` among the objects it    highest ``u`` among all objects
                             is positive for                       that contain its centre
    :math:`\epsilon`         1e-7                                  1e-9
    ======================  ===================================== ====================================

    Defaults are YOLOv8's hyper-parameters (``topk=10, alpha=0.5, beta=6``, CIoU). TOOD's are
    ``topk=13, alpha=1, beta=6`` with plain IoU (:meth:`tood`); :meth:`yolov8` is
    ultralytics' assigner as its detection loss builds it (checked against ultralytics
    8.4.190, whose in-box test widens sides below the middle stride, 16 px, to 16 px).

    Memory: objects are handled in blocks (see ``detloss.assign.base``); nothing of size
    ``B x T x A`` outlives a block. No host sync; no Python loop over images or objects.

    Args:
        topk: positives per object, ``>= 1``.
        alpha: exponent of the class score, ``>= 0``.
        beta: exponent of the overlap, ``>= 0``.
        iou_kind: overlap ``u``: ``iou`` (TOOD), ``ciou`` (YOLOv8), ... (clamped at 0).
        rule: ``"tood"`` or ``"ultralytics"`` (table above).
        min_box_size: for the centre-inside test only, object sides shorter than this are
            widened to it about the centre (pixels; 0 = off).

    Call: ``assigner(scores, boxes, anchors, gt_labels, gt_boxes, gt_mask)`` with the shapes
    of ``detloss.assign.base``; returns an :class:`~detloss.assign.base.AssignResult`.

    Example:
        One 8 x 8 object, anchors every 4 px; the predicted boxes are the anchors' cells, so
        the four anchors inside the object overlap it by 16 / 64:

        >>> from detloss.assign import make_anchors
        >>> anchors = make_anchors([(4, 4)], [4])  # 16 points, (2, 2), (6, 2), ... (14, 14)
        >>> cells = torch.cat([anchors.points - 2, anchors.points + 2], dim=1)[None]
        >>> scores = torch.full((1, 16, 3), 0.1)
        >>> scores[0, [0, 1, 4, 5], 1] = torch.tensor([0.9, 0.8, 0.7, 0.6])  # the four inside
        >>> gt = torch.tensor([[[0.0, 0.0, 8.0, 8.0]]])
        >>> r = TaskAlignedAssigner(topk=2, iou_kind="iou")(scores, cells, anchors, torch.tensor([[1]]),
        ...                                                gt, torch.tensor([[True]]))
        >>> r.fg_mask.nonzero()[:, 1].tolist(), r.labels[0, :2].tolist()  # t = s^0.5 0.25^6: top 2
        ([0, 1], [1, 1])
        >>> # t / (max t + 1e-7) * max u: 0.25 and (0.8 / 0.9)^0.5 0.25, less 0.04 % as max t = 2.3e-4
        >>> r.scores[0, :2, 1]
        tensor([0.2499, 0.2356])
    """

    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    iou_kind: IoUKind = "ciou"
    rule: Literal["tood", "ultralytics"] = "tood"
    min_box_size: float = 0.0

    def __post_init__(self) -> None:
        where = "TaskAlignedAssigner"
        if not isinstance(self.topk, int) or isinstance(self.topk, bool) or self.topk < 1:
            raise DetLossError.bad_argument(where, "topk", "an int >= 1", repr(self.topk))
        check_range(where, "alpha", self.alpha, 0.0)
        check_range(where, "beta", self.beta, 0.0)
        check_choice(where, "iou_kind", self.iou_kind, IOU_KINDS)
        check_choice(where, "rule", self.rule, TAL_RULES)
        check_range(where, "min_box_size", self.min_box_size, 0.0)

    @classmethod
    def tood(cls) -> TaskAlignedAssigner:
        """TOOD's assigner: ``topk=13, alpha=1, beta=6``, plain IoU, the authors' rule."""
        return cls(topk=13, alpha=1.0, beta=6.0, iou_kind="iou", rule="tood")

    @classmethod
    def yolov8(cls, min_box_size: float = 16.0) -> TaskAlignedAssigner:
        """YOLOv8's assigner as ultralytics builds it: ``10, 0.5, 6``, CIoU, its rule, sides >= 16 px."""
        return cls(topk=10, alpha=0.5, beta=6.0, iou_kind="ciou", rule="ultralytics", min_box_size=min_box_size)

    def assign(self, inp: DenseInputs, anchors: Anchors) -> AssignResult:
        batch, count, _ = inp.scores.shape
        num_gt = inp.gt_boxes.shape[1]
        ultralytics = self.rule == "ultralytics"
        margin, eps = _RULE_EPS[self.rule]
        k = min(self.topk, count)
        region = inp.gt_boxes
        if self.min_box_size > 0:
            cxcywh = convert(region, "xyxy", "cxcywh")
            cxcywh[..., 2:] = cxcywh[..., 2:].clamp(min=self.min_box_size)
            region = convert(cxcywh, "cxcywh", "xyxy")

        def state(fill: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((batch, count), fill, dtype=dtype, device=inp.boxes.device)

        # best: the highest u so far, among positive objects ("tood") or all objects ("ultralytics")
        best, best_gt, best_t = state(-1.0, inp.dtype), state(0, torch.long), state(0.0, inp.dtype)
        # "ultralytics": how many objects chose the anchor, and the last one that did
        chosen, pos_gt = state(0, torch.long), state(0, torch.long)
        pos_t, pos_u = state(0.0, inp.dtype), state(0.0, inp.dtype)
        for block in gt_blocks(batch, num_gt, count):
            inside = (
                points_inside(inp.points[:, 0], inp.points[:, 1], region[:, block], margin)
                & inp.gt_mask[:, block, None]
            )
            u = batched_pairwise(inp.gt_boxes[:, block], inp.boxes, self.iou_kind, 1e-7).clamp_(min=0)
            t = gather_scores(inp, block).pow_(self.alpha) * u.pow(self.beta)
            if ultralytics:  # overlaps and metrics exist only inside the object
                u, t = torch.where(inside, u, 0.0), torch.where(inside, t, 0.0)
            top = t.topk(k, dim=2).indices
            pos = torch.zeros_like(inside).scatter_(2, top, True) & inside
            if ultralytics:
                chosen += pos.sum(dim=1)
                has = pos.any(dim=1)
                first = pos.to(torch.uint8).argmax(dim=1)
                pos_gt.copy_(torch.where(has, first + block.start, pos_gt))
                pos_t.copy_(torch.where(has, take(t, first), pos_t))
                pos_u.copy_(torch.where(has, take(u, first), pos_u))
                value, index = u.max(dim=1)
            else:
                pos &= t > 0
                value, index = torch.where(pos, u, -1.0).max(dim=1)
            best = keep_better(
                best, value, larger=True, pairs=((best_gt, index + block.start), (best_t, take(t, index)))
            )
        if ultralytics:
            fg, several = chosen > 0, chosen > 1
            gt = torch.where(several, best_gt, pos_gt)
            t_a = torch.where(several, best_t, pos_t)
            u_a = torch.where(several, best, pos_u)
        else:
            fg, gt, t_a, u_a = best >= 0, best_gt, best_t, best
        index = torch.where(fg, gt, 0)
        t_a, u_a = torch.where(fg, t_a, 0.0), torch.where(fg, u_a, 0.0)
        max_t = t_a.new_zeros((batch, num_gt)).scatter_reduce_(1, index, t_a, "amax")
        max_u = u_a.new_zeros((batch, num_gt)).scatter_reduce_(1, index, u_a, "amax")
        quality = t_a * max_u.gather(1, index) / (max_t.gather(1, index) + eps)
        return build_result(inp, fg, gt, quality)

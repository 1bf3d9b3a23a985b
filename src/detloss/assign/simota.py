r"""SimOTA, the simplified optimal-transport assignment of YOLOX (Ge et al., arXiv 2107.08430)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detloss._checks import check_flag, check_range
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
from detloss.errors import DetLossError

__all__ = ["SimOTAAssigner"]

#: Cost added to pairs outside the geometric prior: YOLOX's 1e6 (1e5 before 2023).
_OUTSIDE_PRIOR = 1e6
#: Lower bound of the logarithms of the classification cost, that of ``binary_cross_entropy``.
_LOG_FLOOR = -100.0


def _bce_logs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max(log q, -100), max(log(1 - q), -100))``: the logarithms of
    ``torch.nn.functional.binary_cross_entropy``, whose floor keeps ``q = 0`` or 1 finite."""
    return q.log().clamp_(min=_LOG_FLOOR), torch.log1p(-q).clamp_(min=_LOG_FLOOR)


@dataclass(frozen=True)
class SimOTAAssigner(DenseAssigner):
    r"""SimOTA: each object takes its ``k`` cheapest anchors, ``k`` from its best IoUs.

    Reference: Ge et al., "YOLOX: Exceeding YOLO Series in 2021", arXiv 2107.08430, Sec. 2.2
    (SimOTA), with the rules of the authors' code (``yolox/models/yolo_head.py``):

    1. **Centre prior.** An anchor is a candidate if its point lies within ``center_radius``
       strides of some object's centre (``|x - c_x| < r s`` and ``|y - c_y| < r s``).
    2. **Cost** of object ``g`` and candidate ``a``:
       :math:`c = \mathrm{cls} + 3 (-\log(\mathrm{IoU} + 10^{-8})) + 10^6 [a \notin prior(g)]`,
       :math:`\mathrm{cls} = \sum_c \mathrm{BCE}(\sqrt{p_{a,c}}, [c = c_g])` (logs floored at
       -100), IoU of the predicted box with ``g``.
    3. **Dynamic k**: :math:`k_g = \max(1, \lfloor \sum \text{top-}10\ \mathrm{IoU}_g \rfloor)`
       over the candidates; ``g`` takes its ``k_g`` cheapest candidates. (The IoU carries the
       kernel's ``eps = 1e-7``, so a sum that is an integer exactly, of IoUs of exactly 1,
       truncates to one less than YOLOX's, whose IoU has no eps.)
    4. An anchor taken by several objects keeps the cheapest object (over all objects).
    5. Its soft target (in ``scores``) is its IoU with that object.

    ``scores`` are probabilities: YOLOX's ``sigmoid(cls) * sigmoid(obj)`` (pass the product;
    the square root is taken here), or ``sigmoid(cls)`` of a head without objectness.

    Which YOLOX: the defaults follow the code since its commit of January 2023 (pull request
    1589, "no-candidate anchor issue for tiny objects"): the prior is the centre region alone
    with ``center_radius=1.5``. The code of the paper's release (2021) used ``box_prior=True``
    with ``center_radius=2.5``: candidates inside some object's box *or* centre region, and
    the prior of a pair is "inside the box *and* the centre region" (:meth:`yolox_2021`).

    Batched over images and objects: ``k_g <= 10``, so one ``topk(10)`` of the costs and a mask
    ``rank < k_g`` take every object's cheapest anchors at once; no Python loop over images
    or objects, no host sync.

    Args:
        center_radius: half-side of the centre region, in strides, ``> 0``.
        candidate_topk: how many best IoUs give ``k``, ``>= 1`` (YOLOX: 10).
        iou_weight: weight of the ``-log IoU`` cost, ``>= 0`` (YOLOX: 3).
        box_prior: the 2021 prior (see above).

    Example:
        One object of class 0 at (8, 8), anchors every 4 px; the two predictions near it
        overlap it, the rest do not:

        >>> from detloss.assign import make_anchors
        >>> anchors = make_anchors([(4, 4)], [4])
        >>> boxes = torch.cat([anchors.points - 6, anchors.points + 6], dim=1)[None]  # 12 x 12
        >>> gt = torch.tensor([[[2.0, 2.0, 14.0, 14.0]]])  # 12 x 12 about (8, 8)
        >>> r = SimOTAAssigner()(torch.full((1, 16, 2), 0.25), boxes, anchors, torch.tensor([[0]]),
        ...                      gt, torch.tensor([[True]]))
        >>> r.fg_mask.sum().item()  # 4 candidates at (6 | 10, 6 | 10), IoUs 0.53: k = int(2.1) = 2
        2
        >>> r.scores[r.fg_mask][:, 0]  # 100 / 188
        tensor([0.5319, 0.5319])
    """

    center_radius: float = 1.5
    candidate_topk: int = 10
    iou_weight: float = 3.0
    box_prior: bool = False

    def __post_init__(self) -> None:
        where = "SimOTAAssigner"
        check_range(where, "center_radius", self.center_radius, 0.0, low_open=True)
        if not isinstance(self.candidate_topk, int) or isinstance(self.candidate_topk, bool) or self.candidate_topk < 1:
            raise DetLossError.bad_argument(where, "candidate_topk", "an int >= 1", repr(self.candidate_topk))
        check_range(where, "iou_weight", self.iou_weight, 0.0)
        check_flag(where, "box_prior", self.box_prior)

    @classmethod
    def yolox_2021(cls) -> SimOTAAssigner:
        """The prior of YOLOX's 2021 code: in the box or a 2.5-stride centre region (cost: both)."""
        return cls(center_radius=2.5, box_prior=True)

    def assign(self, inp: DenseInputs, anchors: Anchors) -> AssignResult:
        batch, count, _ = inp.scores.shape
        num_gt = inp.gt_boxes.shape[1]
        x, y = inp.points.unbind(-1)
        reach = self.center_radius * inp.strides

        def regions(block: slice) -> tuple[torch.Tensor, torch.Tensor]:
            """``(near, prior)`` of the objects of ``block``, ``(B, t, A)``: near the object
            (it makes the anchor a candidate) and inside the object's prior."""
            objects = inp.gt_boxes[:, block]
            valid = inp.gt_mask[:, block, None]
            cx = 0.5 * (objects[..., 0] + objects[..., 2])[..., None]
            cy = 0.5 * (objects[..., 1] + objects[..., 3])[..., None]
            centre = ((x - cx).abs() < reach) & ((y - cy).abs() < reach) & valid
            if not self.box_prior:
                return centre, centre
            in_box = points_inside(x, y, objects, 0.0) & valid
            return centre | in_box, centre & in_box

        candidate = torch.zeros((batch, count), dtype=torch.bool, device=inp.boxes.device)
        for block in gt_blocks(batch, num_gt, count):
            candidate |= regions(block)[0].any(dim=1)

        # sum_c BCE(q_c, 0) per anchor, q = sqrt(p): the class cost of every object starts there
        q = inp.scores.to(inp.dtype, copy=True).sqrt_()
        negatives = -(q.neg_().log1p_().clamp_(min=_LOG_FLOOR).sum(dim=2))  # (B, A), in place: one copy
        del q

        k = min(self.candidate_topk, count)
        rank = torch.arange(k, device=inp.boxes.device)
        chosen = torch.zeros((batch, count), dtype=torch.long, device=inp.boxes.device)
        # the object that chose an anchor (and their IoU); column ``count`` takes the unchosen
        chosen_gt = torch.zeros((batch, count + 1), dtype=torch.long, device=inp.boxes.device)
        chosen_iou = torch.zeros((batch, count + 1), dtype=inp.dtype, device=inp.boxes.device)
        cheapest = torch.full((batch, count), torch.inf, dtype=inp.dtype, device=inp.boxes.device)
        cheapest_gt = torch.zeros_like(chosen)
        cheapest_iou = torch.zeros_like(cheapest)
        for block in gt_blocks(batch, num_gt, count):
            prior = regions(block)[1]
            pairs = candidate[:, None, :] & inp.gt_mask[:, block, None]
            iou = batched_pairwise(inp.gt_boxes[:, block], inp.boxes, "iou", 1e-7)
            dynamic_k = torch.where(pairs, iou, 0.0).topk(k, dim=2).values.sum(dim=2).int().clamp_(min=1)
            log_q, log_not_q = _bce_logs(gather_scores(inp, block).sqrt_())
            cost = negatives[:, None, :] - log_q + log_not_q
            cost += self.iou_weight * -(iou + 1e-8).log()
            cost += _OUTSIDE_PRIOR * ~prior
            cost = torch.where(pairs, cost, torch.inf)
            cheap, cheap_index = cost.topk(k, dim=2, largest=False)
            take_it = (rank < dynamic_k[..., None]) & torch.isfinite(cheap)
            chosen.scatter_add_(1, cheap_index.flatten(1), take_it.flatten(1).long())
            target = torch.where(take_it, cheap_index, count).flatten(1)
            owner = torch.arange(block.start, block.stop, device=target.device)[None, :, None].expand_as(cheap_index)
            chosen_gt.scatter_(1, target, owner.flatten(1))
            chosen_iou.scatter_(1, target, iou.gather(2, cheap_index).flatten(1))
            value, index = cost.min(dim=1)
            companions = ((cheapest_gt, index + block.start), (cheapest_iou, take(iou, index)))
            cheapest = keep_better(cheapest, value, larger=False, pairs=companions)
        fg, several = chosen > 0, chosen > 1
        gt = torch.where(several, cheapest_gt, chosen_gt[:, :count])
        quality = torch.where(several, cheapest_iou, chosen_iou[:, :count])
        return build_result(inp, fg, gt, quality)

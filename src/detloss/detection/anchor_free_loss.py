r"""The loss of the anchor-free head: dense assignment, then box, class and DFL terms.

.. math::
    L = \lambda_{box} L_{box} + \lambda_{cls} L_{cls} + \lambda_{dfl} L_{dfl}, \qquad
    L_{box} = \frac{1}{N} \sum_{a \in fg} w_a\, \ell_{box}(\hat b_a, b_a), \quad
    L_{cls} = \frac{1}{N} \sum_{a, c} \ell_{cls}(x_{a,c}, t_{a,c}), \quad
    L_{dfl} = \frac{1}{N} \sum_{a \in fg} w_a\, \tfrac14 \sum_{side} \mathrm{DFL}

as in YOLOv8's detection loss (ultralytics ``v8DetectionLoss``), with the assigner of
:mod:`detloss.assign` chosen by name (:func:`detloss.detection.assign.build_assigner`):

1. the boxes are decoded from the head's distances (:func:`~detloss.detection.anchor_free.decode_points`)
   and, with the class probabilities (detached), given to the assigner, which returns each
   slot's object (``fg`` where there is one) and the IoU-aware soft scores ``t`` ``(B, A, C)``;
2. ``L_cls`` over every slot and class: ``binary_cross_entropy`` (default), ``sigmoid_focal``,
   ``varifocal`` or ``quality_focal`` of the logits against ``t`` (0 for the background);
3. ``L_box`` over ``fg``: an IoU-family loss (``ciou`` default; any registry key on boxes)
   of the decoded box against the object's, weighted by ``w_a = sum_c t_{a,c}``;
4. ``L_dfl`` over ``fg`` (DFL on): :func:`detloss.functional.distribution_focal_loss` of the
   bin logits against the object's distances in strides (clipped to ``[0, R]``), the mean of
   the four sides, weighted by ``w_a``;

each divided by ``N``, the sum of ``t`` over the whole batch and every rank
(:func:`detloss.reduction.global_avg_factor`, at least 1), so that a rank's loss is its share
of the global loss, as for :class:`~detloss.detection.yolo_loss.YOLOLoss`: the trainer
multiplies it by the world size before ``backward`` and ``N`` ranks of batch ``B`` give the
gradient of one rank of batch ``N B``. Default weights are YOLOv8's (box 7.5, class 0.5, DFL
1.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detloss import DetLossError, build_loss
from detloss._checks import check_range
from detloss.assign.base import DenseAssigner
from detloss.detection.anchor_free import PointPriors, decode_points, encode_points
from detloss.detection.assign import ASSIGNERS, build_assigner, pad_targets
from detloss.detection.yolo_loss import resolve_loss_name
from detloss.functional import distribution_focal_loss
from detloss.reduction import global_avg_factor

__all__ = ["AnchorFreeLoss"]


class AnchorFreeLoss(nn.Module):
    """The loss of :mod:`detloss.detection.anchor_free_loss` (see its docstring for the terms).

    ``box_options`` and ``cls_options`` are passed to :func:`detloss.build_loss`.
    ``forward(raw, priors, targets)`` takes the raw output ``(B, A, K + C)`` of
    :class:`~detloss.detection.anchor_free.AnchorFreeYOLO`, its
    :class:`~detloss.detection.anchor_free.PointPriors` (DFL is on when ``priors.reg_max``
    is set) and per-image targets (``boxes`` xyxy pixels, ``labels``), and returns a dict
    with ``"loss"`` (the weighted sum, with gradient), the detached unweighted terms
    ``"box"``, ``"cls"``, ``"dfl"`` (0 with DFL off), and ``"num_pos"`` (local ``fg`` slots).

    Args:
        box_loss: registry key (or alias) of a loss on boxes.
        cls_loss: registry key (or alias) of a loss on binary logits.
        assigner: ``"tal"``, ``"atss"`` or ``"simota"`` (built for the priors' strides by
            :func:`~detloss.detection.assign.build_assigner`), or an assigner object.
        box_weight, cls_weight, dfl_weight: ``>= 0``.
        box_options, cls_options: hyper-parameters of the two losses.

    Example (no objects: only the class term, every logit at the prior -4.595):
        >>> from detloss.detection.anchor_free import make_point_priors
        >>> p = make_point_priors((8,), 16, reg_max=None)
        >>> raw = torch.cat([torch.zeros(1, 4, 4), torch.full((1, 4, 2), -4.595)], dim=-1)
        >>> out = AnchorFreeLoss()(raw, p, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
        >>> round(out["cls"].item(), 4)  # 4 slots x 2 classes x -log(1 - 0.01) / max(0, 1)
        0.0804
    """

    terms = ("loss", "box", "cls", "dfl")

    def __init__(
        self,
        box_loss: str = "ciou",
        cls_loss: str = "binary_cross_entropy",
        *,
        assigner: str | DenseAssigner = "tal",
        box_weight: float = 7.5,
        cls_weight: float = 0.5,
        dfl_weight: float = 1.5,
        box_options: Mapping[str, Any] | None = None,
        cls_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        where = "AnchorFreeLoss"
        self.box_key = resolve_loss_name(box_loss, "box_loss", where, encoded=False)
        self.cls_key = resolve_loss_name(cls_loss, "cls_loss", where)
        for name, value in (("box_weight", box_weight), ("cls_weight", cls_weight), ("dfl_weight", dfl_weight)):
            check_range(where, name, value, 0.0)
        if isinstance(assigner, str):
            if assigner not in ASSIGNERS:
                raise DetLossError.bad_argument(where, "assigner", "one of " + ", ".join(ASSIGNERS), repr(assigner))
        elif not isinstance(assigner, DenseAssigner):
            raise DetLossError.bad_argument(where, "assigner", "a name or a dense assigner", type(assigner).__name__)
        self.assigner = assigner
        self._assigners: dict[tuple[int, ...], DenseAssigner] = {}
        self.box = build_loss(self.box_key, reduction="mean", **dict(box_options or {}))
        self.cls = build_loss(self.cls_key, reduction="mean", **dict(cls_options or {}))
        self.weights = (float(box_weight), float(cls_weight), float(dfl_weight))

    def extra_repr(self) -> str:
        b, c, d = self.weights
        return f"assigner={self.assigner!r}, box_weight={b}, cls_weight={c}, dfl_weight={d}"

    def assigner_for(self, priors: PointPriors) -> DenseAssigner:
        """The assigner object for the strides of ``priors``."""
        if not isinstance(self.assigner, str):
            return self.assigner
        key = priors.level_strides
        if key not in self._assigners:
            self._assigners[key] = build_assigner(self.assigner, key)
        return self._assigners[key]

    def forward(
        self, raw: torch.Tensor, priors: PointPriors, targets: Sequence[Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        where = "AnchorFreeLoss"
        channels = priors.box_channels
        if raw.dim() != 3 or raw.shape[1] != priors.num_slots or raw.shape[2] <= channels:
            expected = f"shape (B, {priors.num_slots}, {channels} + C)"
            raise DetLossError.bad_argument(where, "raw", expected, f"shape {tuple(raw.shape)}")
        if len(targets) != raw.shape[0]:
            raise DetLossError.bad_argument(where, "targets", f"{raw.shape[0]} per-image dicts", len(targets))
        box_raw, cls_raw = raw[..., :channels], raw[..., channels:]
        num_classes = cls_raw.shape[-1]
        labels, gt_boxes, gt_mask = pad_targets(list(targets), raw.device, raw.dtype)  # type: ignore[arg-type]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise DetLossError.bad_argument(where, "targets", f"labels in [0, {num_classes})", bad)

        anchors = priors.anchors
        boxes = decode_points(raw, priors)
        result = self.assigner_for(priors)(
            cls_raw.detach().sigmoid(), boxes.detach(), anchors, labels, gt_boxes, gt_mask
        )
        scores = result.scores.to(raw.dtype)
        n = global_avg_factor(scores.sum())
        cls = self.cls(cls_raw, scores, avg_factor=n)

        fg = result.fg_mask
        weight = scores.sum(-1)[fg]
        target_boxes = result.boxes[fg].to(raw.dtype)
        box = self.box(boxes[fg], target_boxes, weight=weight, avg_factor=n)
        if priors.reg_max is None:
            dfl = raw.new_zeros(())
        else:
            slot = fg.nonzero()[:, 1]
            target = encode_points(target_boxes, anchors.points[slot], anchors.strides[slot])
            bins = box_raw[fg].unflatten(-1, (4, priors.reg_max + 1))
            dfl = distribution_focal_loss(bins, target, weight=weight[:, None], avg_factor=4 * n)

        wb, wc, wd = self.weights
        total = wb * box + wc * cls + wd * dfl
        return {
            "loss": total,
            "box": box.detach(),
            "cls": cls.detach(),
            "dfl": dfl.detach(),
            "num_pos": fg.sum(),
        }

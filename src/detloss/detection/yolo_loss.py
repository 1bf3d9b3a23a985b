r"""The composite YOLO loss, configurable by registry names.

.. math::
    L = \lambda_{box} L_{box} + \lambda_{obj} L_{obj} + \lambda_{cls} L_{cls}

as in the YOLOv3 loss (Redmon and Farhadi, 2018: ``loss_loc + loss_conf + loss_cls`` with an
``obj_mask`` and a ``noobj_mask``), with the YOLOv3 assignment of :mod:`detloss.detection.assign`:

- ``L_box`` over the positives: an IoU-family loss (``iou``, ``giou``, ``diou``, ``ciou``,
  ``eiou``, ... any registry key whose inputs are boxes) on the decoded boxes, or a loss on
  values (``l2``, ``smooth_l1``, ...) on the encoded ``(sigmoid(t_x), sigmoid(t_y), t_w, t_h)``
  against ``(c_x^gt / s - c_x, c_y^gt / s - c_y, log(w^gt / p_w), log(h^gt / p_h))``, weighted
  by YOLOv3's ``2 - w^gt h^gt / S^2`` (small boxes count more), as YOLOv3's baseline;
- ``L_obj`` over every slot except the ignored ones (not positive, IoU with some ground
  truth above ``ignore_thresh``): target 1 on positives and 0 elsewhere for
  ``binary_cross_entropy`` and ``sigmoid_focal`` (where the YOLOv3 report tried focal loss);
  the IoU of the detached decoded box with its ground truth as the soft target for
  ``quality_focal`` and ``varifocal`` (their papers' IoU-aware targets);
- ``L_cls`` over the positives: one-hot targets (times the IoU for the soft-target losses),
  one sigmoid per class as in YOLOv3.

Every term is a sum divided by the number of positives in the whole batch, over all ranks
(:func:`detloss.reduction.global_avg_factor`), so that a rank's loss is its share of the
global loss: the trainer multiplies by the world size before ``backward`` because DDP
averages the gradients of the ranks, and then ``N`` ranks of batch ``B`` give the gradient of
one rank of batch ``N B``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detloss import LOSSES, DetLossError, build_loss
from detloss._checks import check_range
from detloss.boxes import aligned_iou
from detloss.detection.assign import Assignment, assign_targets, ignore_mask
from detloss.detection.model import Priors, decode
from detloss.reduction import global_avg_factor

__all__ = ["ALIASES", "SOFT_TARGET_LOSSES", "YOLOLoss", "resolve_loss_name"]

#: Short names accepted wherever a loss is named (command line included).
ALIASES: dict[str, str] = {
    "bce": "binary_cross_entropy",
    "focal": "sigmoid_focal",
    "qfl": "quality_focal",
    "vfl": "varifocal",
    "mse": "l2",
}
#: Classification losses that take the IoU of the prediction as a soft target.
SOFT_TARGET_LOSSES = frozenset({"quality_focal", "varifocal"})
_BINARY = ("binary_cross_entropy", "sigmoid_focal", "quality_focal", "varifocal")


def resolve_loss_name(name: str, role: str, where: str = "YOLOLoss", *, encoded: bool = True) -> str:
    """Registry key of ``name`` (aliases resolved), checked to exist and to fit ``role``
    (``box_loss``: on boxes, or on encoded values if ``encoded``; ``obj_loss``, ``cls_loss``:
    on binary logits). Errors name ``where``.

    Example:
        >>> resolve_loss_name("ciou", "box_loss")
        'ciou'
    """
    key = ALIASES.get(name, name)
    if key not in LOSSES:
        raise DetLossError.bad_argument(
            where, role, "a registered loss (" + ", ".join(sorted(LOSSES)) + ") or an alias", repr(name)
        )
    kind = LOSSES[key].inputs
    if role == "box_loss" and kind not in (("boxes", "values") if encoded else ("boxes",)):
        expected = "a box loss (on boxes or on encoded values)" if encoded else "a loss on boxes (IoU family)"
        raise DetLossError.bad_argument(where, role, expected, repr(name))
    if role in ("obj_loss", "cls_loss") and kind != "binary_logits":
        expected = "a loss on binary logits (" + ", ".join(_BINARY) + ")"
        raise DetLossError.bad_argument(where, role, expected, repr(name))
    return key


class YOLOLoss(nn.Module):
    """The loss of :mod:`detloss.detection.yolo_loss` (see its docstring for the terms).

    ``box_options``, ``obj_options``, ``cls_options`` are passed to
    :func:`detloss.build_loss` (e.g. ``obj_options={"alpha": 0.25, "gamma": 2.0}`` for
    ``sigmoid_focal``). ``forward(raw, priors, targets)`` returns a dict with ``"loss"``
    (the weighted sum, with gradient) and the detached unweighted terms ``"box"``,
    ``"obj"``, ``"cls"`` and ``"num_pos"`` (local positives).

    Example (no objects: only the objectness term, from the prior bias -4.595):
        >>> from detloss.detection.model import make_priors
        >>> p = make_priors(torch.tensor([[[8.0, 8.0]]]), (8,), 16)
        >>> raw = torch.zeros(1, 4, 6)
        >>> raw[..., 4] = -4.595
        >>> out = YOLOLoss("ciou")(raw, p, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
        >>> round(out["obj"].item(), 4)  # 4 slots x -log(1 - 0.01) / max(0 positives, 1)
        0.0402
    """

    terms = ("loss", "box", "obj", "cls")

    def __init__(
        self,
        box_loss: str = "ciou",
        obj_loss: str = "binary_cross_entropy",
        cls_loss: str = "binary_cross_entropy",
        *,
        box_weight: float = 5.0,
        obj_weight: float = 1.0,
        cls_weight: float = 1.0,
        box_options: Mapping[str, Any] | None = None,
        obj_options: Mapping[str, Any] | None = None,
        cls_options: Mapping[str, Any] | None = None,
        ignore_thresh: float = 0.5,
    ) -> None:
        super().__init__()
        self.box_key = resolve_loss_name(box_loss, "box_loss")
        self.obj_key = resolve_loss_name(obj_loss, "obj_loss")
        self.cls_key = resolve_loss_name(cls_loss, "cls_loss")
        for name, value in (("box_weight", box_weight), ("obj_weight", obj_weight), ("cls_weight", cls_weight)):
            check_range("YOLOLoss", name, value, 0.0)
        check_range("YOLOLoss", "ignore_thresh", ignore_thresh, 0.0, 1.0)
        self.encoded = LOSSES[self.box_key].inputs == "values"
        self.box = build_loss(self.box_key, reduction="mean", **dict(box_options or {}))
        self.obj = build_loss(self.obj_key, reduction="mean", **dict(obj_options or {}))
        self.cls = build_loss(self.cls_key, reduction="mean", **dict(cls_options or {}))
        self.weights = (float(box_weight), float(obj_weight), float(cls_weight))
        self.ignore_thresh = float(ignore_thresh)

    def extra_repr(self) -> str:
        b, o, c = self.weights
        return f"box_weight={b}, obj_weight={o}, cls_weight={c}, ignore_thresh={self.ignore_thresh}"

    def box_term(
        self, raw_pos: torch.Tensor, boxes_pos: torch.Tensor, a: Assignment, priors: Priors, image_size: float, n: Any
    ) -> torch.Tensor:
        """``L_box`` (sum over positives / ``n``)."""
        if not self.encoded:
            return self.box(boxes_pos, a.boxes, avg_factor=n)
        stride = priors.strides[a.slot_index][:, None]
        cells = priors.cells[a.slot_index]
        anchors = priors.anchors[a.slot_index]
        wh = a.boxes[:, 2:] - a.boxes[:, :2]
        centre = 0.5 * (a.boxes[:, :2] + a.boxes[:, 2:])
        target = torch.cat((centre / stride - cells, torch.log(wh / anchors)), dim=-1)
        pred = torch.cat((torch.sigmoid(raw_pos[:, :2]), raw_pos[:, 2:4]), dim=-1)
        weight = (2.0 - wh.prod(dim=-1) / image_size**2)[:, None].expand(-1, 4)
        return self.box(pred, target, weight=weight, avg_factor=n)

    def forward(
        self, raw: torch.Tensor, priors: Priors, targets: Sequence[Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        if raw.dim() != 3 or raw.shape[1] != priors.num_slots or raw.shape[2] < 6:
            raise DetLossError.bad_argument(
                "YOLOLoss", "raw", f"shape (B, {priors.num_slots}, 5 + C)", f"shape {tuple(raw.shape)}"
            )
        if len(targets) != raw.shape[0]:
            raise DetLossError.bad_argument("YOLOLoss", "targets", f"{raw.shape[0]} per-image dicts", len(targets))
        num_classes = raw.shape[2] - 5
        decoded = decode(raw, priors)
        a = assign_targets(priors, list(targets))  # type: ignore[arg-type]
        if a.labels.numel() and int(a.labels.max()) >= num_classes:
            raise DetLossError.bad_argument("YOLOLoss", "targets", f"labels < {num_classes}", int(a.labels.max()))
        n = global_avg_factor(a.num_positives)
        raw_pos = raw[a.batch_index, a.slot_index]
        boxes_pos = decoded[a.batch_index, a.slot_index]
        with torch.no_grad():
            iou_pos = aligned_iou(boxes_pos.detach(), a.boxes).clamp(min=0.0)
        image_size = float(priors.level_strides[0] * priors.grid_sizes[0][1])
        box = self.box_term(raw_pos, boxes_pos, a, priors, image_size, n)

        positive = torch.zeros(raw.shape[:2], dtype=torch.bool, device=raw.device)
        positive[a.batch_index, a.slot_index] = True
        ignored = ignore_mask(decoded, list(targets), self.ignore_thresh) & ~positive  # type: ignore[arg-type]
        soft = self.obj_key in SOFT_TARGET_LOSSES
        obj_target = torch.zeros(raw.shape[:2], dtype=raw.dtype, device=raw.device)
        obj_target[a.batch_index, a.slot_index] = iou_pos.to(raw.dtype) if soft else 1.0
        obj = self.obj(raw[..., 4], obj_target, weight=(~ignored).to(raw.dtype), avg_factor=n)

        cls_target = torch.zeros_like(raw_pos[:, 5:])
        soft_cls = self.cls_key in SOFT_TARGET_LOSSES
        value = iou_pos.to(raw.dtype) if soft_cls else torch.ones_like(iou_pos, dtype=raw.dtype)
        cls_target[torch.arange(a.num_positives, device=raw.device), a.labels] = value
        cls = self.cls(raw_pos[:, 5:], cls_target, avg_factor=n)

        wb, wo, wc = self.weights
        total = wb * box + wo * obj + wc * cls
        return {
            "loss": total,
            "box": box.detach(),
            "obj": obj.detach(),
            "cls": cls.detach(),
            "num_pos": torch.tensor(a.num_positives),
        }

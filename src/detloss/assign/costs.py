r"""Pairwise matching costs of the DETR family: ``(B, Q, T)`` matrices for ``Q`` queries, ``T`` objects.

Every image of a batch is padded to the same number of objects ``T``; ``num_targets`` (one
count per image, objects first and padding last) says which columns are real. A cost is
computed for every (query, object) pair of the same image, never across images, so the
matrix is ``(B, Q, T)`` and not ``(B Q, sum T)``.

- :func:`focal_cost`: the focal loss of the query as a positive of the object's class minus
  its focal loss as a negative (Deformable DETR, DINO, RT-DETR);
- :func:`class_cost`: ``-p[c]``, the probability of the object's class (DETR);
- :func:`l1_cost`: the L1 distance of the boxes in ``cxcywh`` (normalised coordinates in
  DETR);
- :func:`iou_cost`: ``-similarity`` of any IoU kind of :mod:`detloss.boxes` (``giou`` in
  DETR), through the same kernel as :func:`detloss.boxes.pairwise_iou`;
- :class:`MatchingCost`: their weighted sum, with presets of the papers.

The four cost functions return raw values: a non-finite input gives non-finite entries (the
caller's, as everywhere in detloss). :func:`sanitize_cost`, which :class:`MatchingCost` and
:func:`detloss.assign.hungarian_match` call, replaces them by :data:`NONFINITE_COST` and
counts them, so that no NaN or infinity reaches the solver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch

from detloss._checks import check_boxes, check_choice, check_floating, check_range, check_same_device, upcast
from detloss._typing import BoxFormat, IoUKind
from detloss.assign._geometry import batched_pairwise
from detloss.boxes.convert import BOX_FORMATS, convert
from detloss.boxes.iou import IOU_KINDS
from detloss.errors import DetLossError
from detloss.functional.classification import sigmoid_focal_loss

__all__ = [
    "CLASS_COSTS",
    "NONFINITE_COST",
    "MatchingCost",
    "class_cost",
    "focal_cost",
    "iou_cost",
    "l1_cost",
    "sanitize_cost",
    "target_mask",
]

#: What a non-finite cost entry (and a padded column) becomes: finite, and larger than any
#: real cost, so the solver prefers every real pair to it.
NONFINITE_COST = 1e8
#: Classification costs of :class:`MatchingCost`.
CLASS_COSTS: tuple[str, ...] = ("focal", "softmax", "sigmoid")

ClassCost = Literal["focal", "softmax", "sigmoid"]
NumTargets = torch.Tensor | Sequence[int]


# ---------------------------------------------------------------------------- checks


def _check_tensor_dim(where: str, name: str, t: torch.Tensor, dim: int, layout: str) -> None:
    if t.dim() != dim:
        raise DetLossError.bad_argument(where, name, f"shape {layout}", f"shape {tuple(t.shape)}")


def _check_labels(where: str, labels: object, logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        got = f"dtype {labels.dtype}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise DetLossError.bad_argument(where, "labels", "an integer tensor (B, T)", got)
    if labels.dim() != 2 or labels.shape[0] != logits.shape[0]:
        raise DetLossError.bad_argument(
            where, "labels", f"shape (B, T) with B = {logits.shape[0]}", f"shape {tuple(labels.shape)}"
        )
    check_same_device(where, "logits", logits, "labels", labels)
    return labels.long()


def _check_logits(where: str, logits: object) -> torch.Tensor:
    check_floating(where, "logits", logits)
    x = cast(torch.Tensor, logits)
    _check_tensor_dim(where, "logits", x, 3, "(B, Q, C)")
    return upcast(x)


def _class_logits(where: str, logits: object, labels: object, num_targets: NumTargets | None) -> torch.Tensor:
    """The logit of each query at each object's class: ``(B, Q, T)``."""
    x = _check_logits(where, logits)
    lab = _check_labels(where, labels, x)
    if num_targets is not None:  # padded labels may be anything (-1, 255): read class 0 there
        lab = torch.where(target_mask(num_targets, lab.shape[1], lab.device, where), lab, 0)
    return x.gather(2, lab[:, None, :].expand(-1, x.shape[1], -1))


def _box_pair(where: str, pred: object, target: object, box_format: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked ``(B, Q, 4)`` and ``(B, T, 4)`` boxes, as given, in one float dtype of >= 32 bits."""
    check_boxes(where, "pred", pred)
    check_boxes(where, "target", target)
    pred, target = cast(torch.Tensor, pred), cast(torch.Tensor, target)
    _check_tensor_dim(where, "pred", pred, 3, "(B, Q, 4)")
    _check_tensor_dim(where, "target", target, 3, "(B, T, 4)")
    if target.shape[0] != pred.shape[0]:
        raise DetLossError.bad_argument(
            where, "target", f"shape (B, T, 4) with B = {pred.shape[0]}", f"shape {tuple(target.shape)}"
        )
    check_same_device(where, "pred", pred, "target", target)
    check_choice(where, "box_format", box_format, BOX_FORMATS)
    dtype = torch.promote_types(upcast(pred).dtype, upcast(target).dtype)
    return pred.to(dtype), target.to(dtype)


def target_mask(
    num_targets: NumTargets, num_columns: int, device: torch.device | None = None, where: str = "target_mask"
) -> torch.Tensor:
    """``(B, T)`` bool mask of the real objects: ``mask[b, j] = j < num_targets[b]``.

    ``num_targets`` is a sequence of ints or an integer tensor ``(B,)``; reading a tensor's
    values is left to the device (no host sync).

    Example:
        >>> target_mask([2, 0, 3], 3)
        tensor([[ True,  True, False],
                [False, False, False],
                [ True,  True,  True]])
    """
    if isinstance(num_targets, torch.Tensor):
        if num_targets.is_floating_point() or num_targets.dim() != 1:
            raise DetLossError.bad_argument(
                where,
                "num_targets",
                "an integer tensor (B,)",
                f"{num_targets.dtype} of shape {tuple(num_targets.shape)}",
            )
        counts = num_targets.to(device=device)
    else:
        values = list(num_targets)
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= num_columns for n in values):
            raise DetLossError.bad_argument(where, "num_targets", f"counts in [0, {num_columns}]", values)
        counts = torch.tensor(values, dtype=torch.long, device=device)
    return torch.arange(num_columns, device=counts.device) < counts[:, None]


# ---------------------------------------------------------------------------- costs


def focal_cost(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    num_targets: NumTargets | None = None,
) -> torch.Tensor:
    r"""Focal matching cost: :math:`\mathrm{FL}(x, 1) - \mathrm{FL}(x, 0)` at each object's class.

    With ``x = logits[b, q, labels[b, t]]``, ``p = sigmoid(x)``:

    .. math::
        C_{qt} = \alpha (1 - p)^\gamma (-\log p) - (1 - \alpha)\, p^\gamma (-\log(1 - p)),

    the focal loss (Lin et al., ICCV 2017, Eq. 5) of the query as a positive of the object's
    class minus its focal loss as a negative: the change of the classification loss if the
    query is matched to the object. This is the class cost of Deformable DETR (Zhu et al.,
    ICLR 2021), DINO (Zhang et al., ICLR 2023) and RT-DETR (Zhao et al., CVPR 2024), with
    their ``alpha = 0.25, gamma = 2``. The logarithms are exact log-sigmoids (through
    :func:`detloss.functional.sigmoid_focal_loss`); the authors' code writes
    ``-log(p + 1e-8)``, which agrees to 1e-6 relative for logits above -12 and saturates at
    18.4 below about -18.

    Args:
        logits: ``(B, Q, C)`` class logits of the queries (sigmoid, no background column).
        labels: ``(B, T)`` integer class of each object, in ``[0, C)``.
        alpha: weight of the positive term, in ``[0, 1]``.
        gamma: focusing exponent, ``>= 0``.
        num_targets: objects per image; padded labels are then not read.

    Returns:
        ``(B, Q, T)``, float32 for half-precision logits.

    Example:
        >>> logits = torch.log(torch.tensor([[[3.0, 1 / 3]]]))  # one query, p = 3/4 and 1/4
        >>> # class 0: 0.25 (1/4)^2 (-ln 3/4) - 0.75 (3/4)^2 (-ln 1/4) = 0.0045 - 0.5848
        >>> # class 1: 0.25 (3/4)^2 (-ln 1/4) - 0.75 (1/4)^2 (-ln 3/4) = 0.1949 - 0.0135
        >>> focal_cost(logits, torch.tensor([[0, 1]]))
        tensor([[[-0.5803,  0.1815]]])
    """
    where = "focal_cost"
    check_range(where, "alpha", alpha, 0.0, 1.0)
    check_range(where, "gamma", gamma, 0.0)
    x = _class_logits(where, logits, labels, num_targets)
    positive = sigmoid_focal_loss(x, torch.ones_like(x), alpha=alpha, gamma=gamma, reduction="none")
    negative = sigmoid_focal_loss(x, torch.zeros_like(x), alpha=alpha, gamma=gamma, reduction="none")
    return positive - negative


def class_cost(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    activation: Literal["softmax", "sigmoid"] = "softmax",
    num_targets: NumTargets | None = None,
) -> torch.Tensor:
    r"""Probability matching cost :math:`C_{qt} = -p_q[c_t]` (DETR, Carion et al., ECCV 2020).

    ``activation="softmax"`` (DETR): ``p = softmax(logits)`` over the last dimension, which
    holds the "no object" column too (DETR's ``C + 1`` logits); ``"sigmoid"``: ``p =
    sigmoid(logits)`` per class. DETR drops the constant 1 of ``1 - p``: it does not change
    the matching.

    Args:
        logits: ``(B, Q, C)`` class logits of the queries.
        labels: ``(B, T)`` integer class of each object, in ``[0, C)``.
        activation: ``"softmax"`` or ``"sigmoid"``.
        num_targets: objects per image; padded labels are then not read.

    Returns:
        ``(B, Q, T)``, float32 for half-precision logits.

    Example:
        >>> logits = torch.log(torch.tensor([[[1.0, 3.0]]]))  # softmax: 1/4, 3/4
        >>> class_cost(logits, torch.tensor([[1, 0]]))
        tensor([[[-0.7500, -0.2500]]])
    """
    where = "class_cost"
    check_choice(where, "activation", activation, ("softmax", "sigmoid"))
    x = _check_logits(where, logits)
    prob = x.softmax(dim=-1) if activation == "softmax" else x.sigmoid()
    return -_class_logits(where, prob, labels, num_targets)


def l1_cost(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    box_format: BoxFormat = "cxcywh",
) -> torch.Tensor:
    r"""L1 matching cost :math:`C_{qt} = \lVert b_q - b_t \rVert_1` on ``(cx, cy, w, h)``.

    DETR's box cost (Carion et al., ECCV 2020): the L1 distance of the boxes in ``cxcywh``,
    coordinates normalised by the image size (that is what makes the weight 5 of the
    presets comparable with the class and GIoU costs). Boxes in another ``box_format`` are
    converted to ``cxcywh`` first, so the cost is always the one on centres and sizes.

    Args:
        pred: ``(B, Q, 4)`` predicted boxes.
        target: ``(B, T, 4)`` object boxes (padding: anything finite or not, never read by
            the matcher).
        box_format: format of both, ``"cxcywh"`` (DETR's), ``"xyxy"`` or ``"xywh"``.

    Returns:
        ``(B, Q, T)``, float32 for half-precision boxes.

    Example:
        >>> pred = torch.tensor([[[0.5, 0.5, 0.2, 0.4]]])
        >>> l1_cost(pred, torch.tensor([[[0.4, 0.5, 0.2, 0.1]]]))  # 0.1 + 0 + 0 + 0.3
        tensor([[[0.4000]]])
    """
    p, t = _box_pair("l1_cost", pred, target, box_format)
    if box_format != "cxcywh":
        p, t = convert(p, box_format, "cxcywh"), convert(t, box_format, "cxcywh")
    return torch.cdist(p, t, p=1.0)


def iou_cost(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: IoUKind = "giou",
    box_format: BoxFormat = "cxcywh",
    eps: float = 1e-7,
) -> torch.Tensor:
    r"""IoU-family matching cost :math:`C_{qt} = -\mathrm{sim}_{kind}(b_q, b_t)`.

    DETR's box-overlap cost is ``-GIoU`` (Carion et al., ECCV 2020; Rezatofighi et al., CVPR
    2019); any ``kind`` of :data:`detloss.boxes.IOU_KINDS` works, computed by the kernel of
    :func:`detloss.boxes.pairwise_iou` (formulas in ``detloss.boxes.iou.box_similarity``)
    on each image's pairs. ``1 - GIoU`` (as some frameworks write it) differs by a constant
    and gives the same matching.

    Args:
        pred: ``(B, Q, 4)`` predicted boxes.
        target: ``(B, T, 4)`` object boxes.
        kind: ``iou, giou, diou, ciou, eiou`` or ``siou``.
        box_format: format of both boxes (``"cxcywh"``: DETR's).
        eps: the kernel's ``eps``, in ``(0, 1]``.

    Returns:
        ``(B, Q, T)``, float32 for half-precision boxes.

    Example:
        >>> pred = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]])
        >>> target = torch.tensor([[[0.0, 0.0, 2.0, 2.0]]])
        >>> iou_cost(pred, target, kind="iou", box_format="xyxy")  # overlap 1, union 7
        tensor([[[-1.0000],
                 [-0.1429]]])
    """
    where = "iou_cost"
    check_choice(where, "kind", kind, IOU_KINDS)
    check_range(where, "eps", eps, 0.0, 1.0, low_open=True)
    p, t = _box_pair(where, pred, target, box_format)
    return -batched_pairwise(p, t, kind, eps, box_format)


def sanitize_cost(cost: torch.Tensor, num_targets: NumTargets | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace non-finite entries of a ``(B, Q, T)`` cost by :data:`NONFINITE_COST` and count them.

    With ``num_targets``, padded columns are set to :data:`NONFINITE_COST` too and only the
    real columns are counted (garbage in the padding is not an error). The count is a 0-d
    int64 tensor on the cost's device: reading it (``int(count)``) is the caller's choice,
    as it waits for the device.

    Example:
        >>> cost = torch.tensor([[[1.0, float("nan"), 7.0], [float("inf"), 2.0, float("nan")]]])
        >>> clean, bad = sanitize_cost(cost, num_targets=[2])  # column 2 is padding
        >>> clean
        tensor([[[1.0000e+00, 1.0000e+08, 1.0000e+08],
                 [1.0000e+08, 2.0000e+00, 1.0000e+08]]])
        >>> int(bad)
        2
    """
    where = "sanitize_cost"
    check_floating(where, "cost", cost)
    _check_tensor_dim(where, "cost", cost, 3, "(B, Q, T)")
    finite = torch.isfinite(cost)
    if num_targets is None:
        count = (~finite).sum()
        return torch.where(finite, cost, NONFINITE_COST), count
    valid = target_mask(num_targets, cost.shape[2], cost.device, where)[:, None, :]
    count = (~finite & valid).sum()
    return torch.where(finite & valid, cost, NONFINITE_COST), count


# ---------------------------------------------------------------------------- weighted sum


@dataclass(frozen=True)
class MatchingCost:
    r"""Weighted sum of matching costs, the matrix a DETR-style matcher solves.

    .. math::
        C = w_{cls}\, C_{cls} + w_{L1}\, C_{L1} + w_{iou}\, C_{iou}

    with :math:`C_{cls}` one of :func:`focal_cost` (``class_cost="focal"``),
    :func:`class_cost` with softmax (``"softmax"``) or sigmoid (``"sigmoid"``), :math:`C_{L1}`
    :func:`l1_cost` and :math:`C_{iou}` :func:`iou_cost` of ``iou_kind``. Calling it returns
    ``(cost, num_nonfinite)``: the ``(B, Q, T)`` matrix, cleaned by :func:`sanitize_cost`
    (non-finite entries and padded columns are :data:`NONFINITE_COST`), and the number of
    non-finite entries among the real columns, a 0-d tensor (no host sync).

    Presets (the papers' matcher weights, read from the authors' code):

    ================================  ======  =====  =====  ==========================
    preset                             class   L1     GIoU   class cost
    ================================  ======  =====  =====  ==========================
    :meth:`detr`                       1       5      2      softmax probability
    :meth:`deformable_detr` / dino     2       5      2      focal, alpha .25, gamma 2
    ================================  ======  =====  =====  ==========================

    DETR: Carion et al., ECCV 2020. Deformable DETR: Zhu et al., ICLR 2021. DINO (Zhang et
    al., ICLR 2023) and RT-DETR (Zhao et al., CVPR 2024) keep Deformable DETR's matcher.
    Boxes are ``cxcywh`` in coordinates normalised by the image size in all of them.

    Args:
        class_weight: weight of the classification cost, ``>= 0``.
        l1_weight: weight of the L1 box cost, ``>= 0``.
        iou_weight: weight of the IoU-family cost, ``>= 0``.
        class_cost: ``"focal"``, ``"softmax"`` or ``"sigmoid"``.
        alpha: focal ``alpha`` (``class_cost="focal"`` only), in ``[0, 1]``.
        gamma: focal ``gamma`` (``class_cost="focal"`` only), ``>= 0``.
        iou_kind: the IoU kind of the box-overlap cost.

    Example (one image, two queries, one object of class 1; the second query is right):
        >>> cost_fn = MatchingCost.detr()
        >>> logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])  # 2 classes + no-object
        >>> boxes = torch.tensor([[[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]]])  # cxcywh
        >>> cost, bad = cost_fn(logits, boxes, torch.tensor([[1]]), torch.tensor([[[0.5, 0.5, 0.4, 0.4]]]))
        >>> # query 0: -1/(e^2 + 2) + 5 (0.3 + 0.3 + 0.2 + 0.2) + 2 (0.16 / 0.36): corners touch
        >>> # query 1: -e^2/(e^2 + 2) + 5 * 0 - 2 * 1
        >>> cost
        tensor([[[ 5.7824],
                 [-2.7870]]])
        >>> int(bad)
        0
    """

    class_weight: float = 2.0
    l1_weight: float = 5.0
    iou_weight: float = 2.0
    class_cost: ClassCost = "focal"
    alpha: float = 0.25
    gamma: float = 2.0
    iou_kind: IoUKind = "giou"

    def __post_init__(self) -> None:
        where = "MatchingCost"
        for name in ("class_weight", "l1_weight", "iou_weight"):
            check_range(where, name, getattr(self, name), 0.0)
        check_choice(where, "class_cost", self.class_cost, CLASS_COSTS)
        check_range(where, "alpha", self.alpha, 0.0, 1.0)
        check_range(where, "gamma", self.gamma, 0.0)
        check_choice(where, "iou_kind", self.iou_kind, IOU_KINDS)

    @classmethod
    def detr(cls) -> MatchingCost:
        """DETR's matcher: ``1 * (-softmax p[c]) + 5 * L1 + 2 * (-GIoU)``."""
        return cls(class_weight=1.0, l1_weight=5.0, iou_weight=2.0, class_cost="softmax")

    @classmethod
    def deformable_detr(cls) -> MatchingCost:
        """Deformable DETR's matcher: ``2 * focal + 5 * L1 + 2 * (-GIoU)``, alpha 0.25, gamma 2."""
        return cls(class_weight=2.0, l1_weight=5.0, iou_weight=2.0, class_cost="focal", alpha=0.25, gamma=2.0)

    @classmethod
    def dino(cls) -> MatchingCost:
        """DINO's matcher (also RT-DETR's): the same as :meth:`deformable_detr`."""
        return cls.deformable_detr()

    def __call__(
        self,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        labels: torch.Tensor,
        target_boxes: torch.Tensor,
        num_targets: NumTargets | None = None,
        *,
        box_format: BoxFormat = "cxcywh",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cost (B, Q, T), num_nonfinite)`` for ``(B, Q, C)`` logits and ``(B, Q, 4)`` boxes
        against ``(B, T)`` labels and ``(B, T, 4)`` boxes; ``num_targets`` objects per image
        (all ``T`` when omitted)."""
        if self.class_cost == "focal":
            cls_cost = focal_cost(logits, labels, alpha=self.alpha, gamma=self.gamma, num_targets=num_targets)
        else:
            cls_cost = class_cost(logits, labels, activation=self.class_cost, num_targets=num_targets)
        total = self.class_weight * cls_cost
        if self.l1_weight:
            total = total + self.l1_weight * l1_cost(pred_boxes, target_boxes, box_format=box_format)
        if self.iou_weight:
            total = total + self.iou_weight * iou_cost(
                pred_boxes, target_boxes, kind=self.iou_kind, box_format=box_format
            )
        return sanitize_cost(total, num_targets)

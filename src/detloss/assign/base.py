"""What the dense assigners share: anchors, the result, input checks and the batched steps.

A dense head predicts at ``A`` anchor points (all pyramid levels, concatenated level by
level). An assigner takes, for a batch of ``B`` images padded to ``T`` objects,

- ``scores`` ``(B, A, C)``: predicted class probabilities (sigmoid of detached logits);
- ``boxes`` ``(B, A, 4)``: predicted boxes decoded to ``xyxy`` in the units of the anchors
  (pixels);
- ``anchors``: an :class:`Anchors` (points, strides, level sizes);
- ``gt_labels`` ``(B, T)`` integer classes, ``gt_boxes`` ``(B, T, 4)`` ``xyxy`` and
  ``gt_mask`` ``(B, T)`` bool (``False`` = padding; padded labels and boxes are never read
  for a result),

and returns an :class:`AssignResult`: at most one object per anchor. Every step is a batched
tensor operation over all images; objects are processed in blocks of at most
:data:`detloss.assign._geometry.PAIR_BLOCK` (anchor, object) pairs, so memory stays bounded
for any ``B x A x T``, and nothing reads a tensor's values on the host (no device sync).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

import torch

from detloss._checks import check_boxes, check_floating, check_same_device, upcast
from detloss.assign._geometry import PAIR_BLOCK
from detloss.errors import DetLossError

__all__ = ["Anchors", "AssignResult", "DenseAssigner", "make_anchors"]


@dataclass(frozen=True)
class Anchors:
    """Anchor points of a dense head, all levels concatenated (level 0 first).

    Attributes:
        points: ``(A, 2)`` centres ``(x, y)`` in pixels.
        strides: ``(A,)`` stride of each point's level, in pixels.
        level_sizes: number of points of each level (sums to ``A``).
        boxes: optional ``(A, 4)`` ``xyxy`` anchor boxes of an anchor-based head; ATSS
            builds squares of ``anchor_scale * stride`` about the points when absent.
    """

    points: torch.Tensor
    strides: torch.Tensor
    level_sizes: tuple[int, ...]
    boxes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        where = "Anchors"
        check_floating(where, "points", self.points)
        if self.points.dim() != 2 or self.points.shape[1] != 2:
            raise DetLossError.bad_argument(where, "points", "shape (A, 2)", f"shape {tuple(self.points.shape)}")
        count = self.points.shape[0]
        check_floating(where, "strides", self.strides)
        if self.strides.shape != (count,):
            raise DetLossError.bad_argument(where, "strides", f"shape ({count},)", f"shape {tuple(self.strides.shape)}")
        sizes = tuple(self.level_sizes)
        if not all(isinstance(n, int) and n >= 0 for n in sizes) or sum(sizes) != count:
            raise DetLossError.bad_argument(where, "level_sizes", f"counts >= 0 summing to {count}", sizes)
        if self.boxes is not None:
            check_boxes(where, "boxes", self.boxes)
            if self.boxes.shape != (count, 4):
                raise DetLossError.bad_argument(
                    where, "boxes", f"shape ({count}, 4)", f"shape {tuple(self.boxes.shape)}"
                )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Anchors:
        """A copy on ``device`` in floating ``dtype``."""
        boxes = None if self.boxes is None else self.boxes.to(device=device, dtype=dtype)
        return Anchors(
            self.points.to(device=device, dtype=dtype),
            self.strides.to(device=device, dtype=dtype),
            self.level_sizes,
            boxes,
        )


def make_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[float],
    *,
    offset: float = 0.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Anchors:
    """Anchor points at the cell centres of each feature map: ``((i + offset) s, (j + offset) s)``.

    Points run row by row (``y`` outer, ``x`` inner) within a level, levels in the order
    given, as a head flattens its ``(H, W)`` maps.

    Args:
        feature_sizes: ``(H, W)`` of each level.
        strides: the stride of each level, in pixels.
        offset: position within the cell, ``0.5`` = its centre.
        device: where the tensors live.
        dtype: floating dtype of points and strides.

    Example (a 64 x 64 image, strides 32 and 64):
        >>> a = make_anchors([(2, 2), (1, 1)], [32, 64])
        >>> a.points.tolist()
        [[16.0, 16.0], [48.0, 16.0], [16.0, 48.0], [48.0, 48.0], [32.0, 32.0]]
        >>> a.strides.tolist(), a.level_sizes
        ([32.0, 32.0, 32.0, 32.0, 64.0], (4, 1))
    """
    where = "make_anchors"
    if len(feature_sizes) != len(strides):
        raise DetLossError.bad_argument(where, "strides", f"{len(feature_sizes)} strides (one per level)", len(strides))
    points, level_strides, sizes = [], [], []
    for (h, w), s in zip(feature_sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + offset) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + offset) * s
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2))
        level_strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
        sizes.append(h * w)
    empty = torch.zeros(0, device=device, dtype=dtype)
    return Anchors(
        torch.cat(points) if points else empty.reshape(0, 2),
        torch.cat(level_strides) if level_strides else empty,
        tuple(sizes),
    )


class AssignResult(NamedTuple):
    """Targets of every anchor (``B`` images, ``A`` anchors, ``C`` classes).

    Attributes:
        labels: ``(B, A)`` int64 class of the assigned object; ``C`` (background) elsewhere.
        boxes: ``(B, A, 4)`` ``xyxy`` box of the assigned object; 0 elsewhere.
        scores: ``(B, A, C)`` soft classification targets: the assigner's IoU-aware quality
            in the assigned class's column, 0 elsewhere (the target of BCE, QFL, VFL).
        fg_mask: ``(B, A)`` bool, True where an object is assigned.
        gt_index: ``(B, A)`` int64 column of the assigned object in ``gt_*``; -1 elsewhere.
    """

    labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    fg_mask: torch.Tensor
    gt_index: torch.Tensor


@dataclass(frozen=True)
class DenseInputs:
    """Checked assigner inputs; floats in one compute dtype of at least 32 bits."""

    scores: torch.Tensor  # (B, A, C), as given (gathered before any upcast: no (B, A, C) copy)
    boxes: torch.Tensor  # (B, A, 4)
    points: torch.Tensor  # (A, 2)
    strides: torch.Tensor  # (A,)
    labels: torch.Tensor  # (B, T) int64, padding read as class 0
    gt_boxes: torch.Tensor  # (B, T, 4)
    gt_mask: torch.Tensor  # (B, T) bool

    @property
    def dtype(self) -> torch.dtype:
        return self.boxes.dtype


def _shape_error(where: str, name: str, layout: str, t: torch.Tensor) -> DetLossError:
    return DetLossError.bad_argument(where, name, f"shape {layout}", f"shape {tuple(t.shape)}")


def check_inputs(
    where: str,
    scores: object,
    boxes: object,
    anchors: object,
    gt_labels: object,
    gt_boxes: object,
    gt_mask: object,
) -> DenseInputs:
    """Check shapes, dtypes and devices (no values are read) and bring boxes to one dtype."""
    check_floating(where, "scores", scores)
    s = cast(torch.Tensor, scores)
    if s.dim() != 3:
        raise _shape_error(where, "scores", "(B, A, C)", s)
    batch, count, _ = s.shape
    check_boxes(where, "boxes", boxes)
    b = cast(torch.Tensor, boxes)
    if b.shape != (batch, count, 4):
        raise _shape_error(where, "boxes", f"({batch}, {count}, 4)", b)
    if not isinstance(anchors, Anchors):
        raise DetLossError.bad_argument(where, "anchors", "an Anchors (see make_anchors)", type(anchors).__name__)
    if anchors.points.shape[0] != count:
        raise _shape_error(where, "anchors", f"{count} points (that of `scores`)", anchors.points)
    check_boxes(where, "gt_boxes", gt_boxes)
    g = cast(torch.Tensor, gt_boxes)
    if g.dim() != 3 or g.shape[0] != batch:
        raise _shape_error(where, "gt_boxes", f"({batch}, T, 4)", g)
    num_gt = g.shape[1]
    if not isinstance(gt_labels, torch.Tensor) or gt_labels.is_floating_point() or gt_labels.dtype == torch.bool:
        got = f"dtype {gt_labels.dtype}" if isinstance(gt_labels, torch.Tensor) else type(gt_labels).__name__
        raise DetLossError.bad_argument(where, "gt_labels", "an integer tensor (B, T)", got)
    if gt_labels.shape != (batch, num_gt):
        raise _shape_error(where, "gt_labels", f"({batch}, {num_gt})", gt_labels)
    if not isinstance(gt_mask, torch.Tensor) or gt_mask.dtype != torch.bool or gt_mask.shape != (batch, num_gt):
        mask_got = f"{gt_mask.dtype} of shape {tuple(gt_mask.shape)}" if isinstance(gt_mask, torch.Tensor) else gt_mask
        raise DetLossError.bad_argument(where, "gt_mask", f"a bool tensor ({batch}, {num_gt})", mask_got)
    for name, t in (("boxes", b), ("gt_labels", gt_labels), ("gt_boxes", g), ("gt_mask", gt_mask)):
        check_same_device(where, "scores", s, name, t)
    check_same_device(where, "scores", s, "anchors", anchors.points)
    dtype = torch.promote_types(torch.promote_types(upcast(s).dtype, upcast(b).dtype), upcast(g).dtype)
    dtype = torch.promote_types(dtype, upcast(anchors.points).dtype)
    return DenseInputs(
        scores=s,
        boxes=b.to(dtype),
        points=anchors.points.to(dtype),
        strides=anchors.strides.to(dtype),
        labels=torch.where(gt_mask, gt_labels.long(), 0),
        gt_boxes=g.to(dtype),
        gt_mask=gt_mask,
    )


def gt_blocks(batch: int, num_gt: int, num_anchors: int) -> Iterator[slice]:
    """Slices of the object axis with at most ``PAIR_BLOCK`` (image, object, anchor) triples each.

    A memory bound, not a loop over objects: one block when ``B T A <= PAIR_BLOCK``.
    """
    step = max(1, PAIR_BLOCK // max(batch * num_anchors, 1))
    for start in range(0, num_gt, step):
        yield slice(start, min(start + step, num_gt))


def gather_scores(inputs: DenseInputs, block: slice) -> torch.Tensor:
    """``s[b, t, a] = scores[b, a, labels[b, t]]`` for the objects of ``block``: ``(B, t, A)``."""
    labels = inputs.labels[:, block]
    index = labels[:, :, None].expand(-1, -1, inputs.scores.shape[1])
    return inputs.scores.transpose(1, 2).gather(1, index).to(inputs.dtype)


def points_inside(x: torch.Tensor, y: torch.Tensor, boxes: torch.Tensor, margin: float) -> torch.Tensor:
    """Point ``(x, y)`` lies inside the box by more than ``margin`` on every side.

    ``boxes`` ``(B, t, 4)`` against coordinates that broadcast with ``(B, t, n)``: ``(A,)``
    (every anchor against every object) or ``(B, t, K)`` (each object's own candidates).
    """
    x1, y1, x2, y2 = (c[..., None] for c in boxes.unbind(-1))
    return (x - x1 > margin) & (y - y1 > margin) & (x2 - x > margin) & (y2 - y > margin)


def keep_better(
    best: torch.Tensor, new: torch.Tensor, *, larger: bool, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Running best over object blocks: where ``new`` beats ``best`` strictly, take it and its
    companions (``(kept, candidate)`` pairs, updated in place). Strictness keeps the first
    object on ties, like ``max(dim)``. Returns the updated ``best``."""
    better = new > best if larger else new < best
    for kept, candidate in pairs:
        kept.copy_(torch.where(better, candidate, kept))
    return torch.where(better, new, best)


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, a]]`` for ``(B, t, A)`` values and a ``(B, A)`` index into ``t``."""
    return values.gather(1, index[:, None, :]).squeeze(1)


def build_result(
    inputs: DenseInputs, fg_mask: torch.Tensor, gt_index: torch.Tensor, quality: torch.Tensor
) -> AssignResult:
    """Targets from the assigned object of each anchor (``gt_index`` read only where ``fg_mask``)."""
    num_classes = inputs.scores.shape[2]
    index = torch.where(fg_mask, gt_index, 0)
    labels = inputs.labels.gather(1, index)
    boxes = inputs.gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))
    quality = torch.where(fg_mask, quality, 0.0).to(inputs.dtype)
    scores = quality.new_zeros(inputs.scores.shape).scatter_(2, labels[..., None], quality[..., None])
    return AssignResult(
        labels=torch.where(fg_mask, labels, num_classes),
        boxes=torch.where(fg_mask[..., None], boxes, 0.0),
        scores=scores,
        fg_mask=fg_mask,
        gt_index=torch.where(fg_mask, gt_index, -1),
    )


def empty_result(inputs: DenseInputs) -> AssignResult:
    """Every anchor background (no objects, or no anchors)."""
    batch, count, num_classes = inputs.scores.shape
    like = inputs.boxes
    return AssignResult(
        labels=torch.full((batch, count), num_classes, dtype=torch.long, device=like.device),
        boxes=torch.zeros_like(like),
        scores=like.new_zeros((batch, count, num_classes)),
        fg_mask=torch.zeros((batch, count), dtype=torch.bool, device=like.device),
        gt_index=torch.full((batch, count), -1, dtype=torch.long, device=like.device),
    )


class DenseAssigner:
    """The call every dense assigner shares: checks, the empty case, then :meth:`assign`."""

    @torch.no_grad()
    def __call__(
        self,
        scores: torch.Tensor,
        boxes: torch.Tensor,
        anchors: Anchors,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_mask: torch.Tensor,
    ) -> AssignResult:
        """Targets for ``(B, A, C)`` scores and ``(B, A, 4)`` boxes at ``anchors`` from padded
        ``(B, T)`` labels, ``(B, T, 4)`` boxes and their ``(B, T)`` mask (see the module)."""
        inp = check_inputs(type(self).__name__, scores, boxes, anchors, gt_labels, gt_boxes, gt_mask)
        if inp.gt_boxes.shape[1] == 0 or inp.boxes.shape[1] == 0:
            return empty_result(inp)
        return self.assign(inp, anchors)

    def assign(self, inp: DenseInputs, anchors: Anchors) -> AssignResult:
        """The assignment proper, on checked inputs with at least one object and one anchor."""
        raise NotImplementedError

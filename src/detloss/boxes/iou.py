"""One geometry kernel for every IoU kind, for aligned pairs and all-pairs matrices.

Intersection, union, enclosing box, centre distance and aspect angles are computed once, in
``box_similarity``, on tensors that broadcast: ``(N, 4)`` against ``(N, 4)`` gives the
aligned ``(N,)``; ``(n, 1, 4)`` against ``(1, M, 4)`` gives an ``(n, M)`` block of the pairwise
matrix. Every IoU-family loss in :mod:`detloss.functional` is a few lines over this kernel.

Box convention: ``xyxy`` with ``x1 <= x2`` and ``y1 <= y2``. An inverted side (``x2 < x1``)
counts as length 0, so an inverted box has area 0 and every value stays finite; the
enclosing box spans the inverted box's corners, so it still holds both centres.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

from detloss._checks import check_boxes, check_broadcasts_with, check_choice, check_range, check_same_device, upcast
from detloss._typing import BoxFormat, IoUKind
from detloss.boxes.convert import BOX_FORMATS, to_xyxy
from detloss.errors import DetLossError

__all__ = [
    "FOUR_OVER_PI2",
    "IOU_KINDS",
    "aligned_iou",
    "box_similarity",
    "ciou_gate",
    "extent",
    "pairwise_blocks",
    "pairwise_iou",
    "prepare_pair",
]

#: The kinds of :func:`aligned_iou` and :func:`pairwise_iou`: the one list, read from the type.
IOU_KINDS: tuple[str, ...] = get_args(IoUKind)
#: What ``box_similarity`` computes: the public kinds and Wise-IoU v1's similarity.
_KERNEL_KINDS: tuple[str, ...] = (*IOU_KINDS, "wiou")
#: Elements of one pairwise block (rows x columns): bounds the memory of ``pairwise_iou``.
PAIRWISE_BLOCK = 1 << 22
#: CIoU's constant in ``v = 4 / pi^2 (atan(w_t / h_t) - atan(w / h))^2``.
FOUR_OVER_PI2 = 4.0 / math.pi**2

AspectGrad = Literal["exact", "paper"]


def aspect_angle(w: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """``atan((w + eps) / (h + eps))``: the aspect angle of CIoU's ``v``, defined (pi/4) for a
    point and with a gradient bounded by ``1/eps`` for zero-width or zero-height boxes."""
    return torch.atan2(w + eps, h + eps)


def extent(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` sorted, choosing by ``hi >= lo`` so a valid side keeps its gradients."""
    valid = hi >= lo
    return torch.where(valid, lo, hi), torch.where(valid, hi, lo)


def ciou_gate(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Where the journal CIoU keeps its aspect term: ``IoU >= 0.5``, decided as ``2 I >= U > 0``.

    ``inter`` and ``union`` are the areas WITHOUT the ``eps`` that the IoU's denominator
    carries: that ``eps`` is lost to rounding in float32 but not in float64, so deciding on
    ``I / (U + eps)`` would put a pair with IoU exactly 0.5 on different sides in different
    dtypes. Doubling is exact, so the decision is exact for the computed areas (and the same
    in every dtype whenever the areas are, e.g. for integer coordinates). ``I > 0`` keeps two
    empty boxes (``I = U = 0``, IoU 0) out.
    """
    return (2 * inter >= union) & (inter > 0)


def box_similarity(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    eps: float,
    *,
    alpha_gate: bool = False,
    aspect_grad: AspectGrad = "exact",
    siou_theta: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The kernel: ``(similarity, iou)`` for boxes in ``xyxy`` that broadcast (no checks).

    Inputs must already be float32 or float64. With ``w, h`` the clamped sides, ``C_w, C_h``
    the enclosing box, ``rho^2`` the squared centre distance and ``c^2 = C_w^2 + C_h^2``:

    - ``iou``:  ``I / (U + eps)``
    - ``giou``: ``iou - (C - U) / C``, ``C = C_w C_h + eps`` (Rezatofighi et al., CVPR 2019)
    - ``diou``: ``iou - rho^2 / (c^2 + eps)`` (Zheng et al., AAAI 2020, Eq. 6)
    - ``ciou``: ``diou - alpha v``, ``v = 4/pi^2 (atan(w_t/h_t) - atan(w/h))^2``,
      ``alpha = v / (1 - iou + v + eps)`` without gradient (AAAI 2020, Eqs. 8-11);
      ``alpha_gate`` zeroes alpha where ``IoU < 0.5`` (journal version, arXiv 2005.03572),
      decided by :func:`ciou_gate` on the areas without ``eps``;
      ``aspect_grad="paper"`` scales the gradient of ``v`` by ``w^2 + h^2`` (the paper's
      replacement of ``1/(w^2 + h^2)`` by 1)
    - ``eiou``: ``diou - (w - w_t)^2 / (C_w^2 + eps) - (h - h_t)^2 / (C_h^2 + eps)``
      (Zhang et al., Neurocomputing 2022)
    - ``siou``: ``iou - (Delta + Omega) / 2`` with angle cost ``Lambda = sin(2 alpha) =
      2 |dx dy| / rho^2``, ``Delta = sum_t 1 - exp(-(2 - Lambda) (d_t / C_t)^2)`` and
      ``Omega = sum_t (1 - exp(-|w - w_t| / max(w, w_t)))^theta`` (Gevorgyan, arXiv 2205.12740)
    - ``wiou`` (for ``wiou_loss`` only, not in ``IOU_KINDS``): ``1 - R (1 - iou)``,
      ``R = exp(rho^2 / c^2*)`` with ``c^2`` detached (Wise-IoU v1, Tong et al., arXiv 2301.10051)

    Args:
        pred: ``xyxy`` boxes, float32 or float64.
        target: ``xyxy`` boxes of ``pred``'s dtype, broadcasting with it.
        kind: one of ``IOU_KINDS`` or ``"wiou"``; anything else raises.
        eps: added to the denominators.
        alpha_gate: CIoU's journal gate (:func:`ciou_gate`).
        aspect_grad: CIoU's gradient of ``v``: ``"exact"`` or ``"paper"``.
        siou_theta: SIoU's shape exponent.

    Shape:
        - pred, target: ``(*, 4)``, broadcasting; both outputs: ``(*)``.
    """
    check_choice("box_similarity", "kind", kind, _KERNEL_KINDS)
    # the two corners of each box as (x, y) pairs: one op on a pair does the work of two on
    # single coordinates, with the same arithmetic per element (views, nothing copied)
    p1, p2 = pred.unflatten(-1, (2, 2)).unbind(-2)
    t1, t2 = target.unflatten(-1, (2, 2)).unbind(-2)
    # (an in-place clamp would not save memory where autograd records it: it keeps a copy of
    # its input; the target's, recorded only if the target needs a gradient, is in place)
    pwh, twh = (p2 - p1).clamp(min=0), (t2 - t1).clamp_(min=0)
    iwh = (torch.minimum(p2, t2) - torch.maximum(p1, t1)).clamp(min=0)
    (pw, ph), (tw, th), (iw, ih) = pwh.unbind(-1), twh.unbind(-1), iwh.unbind(-1)
    inter = iw * ih
    union_area = (pw * ph + tw * th).sub_(inter)  # the sum has the broadcast shape
    union = union_area + eps
    iou = inter / union
    if kind == "iou":
        return iou, iou
    # the enclosing box spans each box's extent, an inverted side's too, so that it holds
    # both centres: rho <= c, and every penalty keeps its valid-box bound (WIoU's exp(rho^2 /
    # c^2) <= e, not inf). For valid boxes (x1 <= x2) values and gradients are unchanged.
    (plo, phi), (tlo, thi) = extent(p1, p2), extent(t1, t2)
    cwh = torch.maximum(phi, thi) - torch.minimum(plo, tlo)
    cw, ch = cwh.unbind(-1)
    if kind == "giou":
        enclosing = cw * ch + eps
        return iou - (enclosing - union) / enclosing, iou
    d = 0.5 * ((t1 + t2) - (p1 + p2))  # the centre offset (dx, dy)
    dx, dy = d.unbind(-1)
    rho2 = (dx * dx).add_(dy * dy)
    if kind == "siou":
        angle = 2.0 * (dx * dy).abs() / (rho2 + eps)
        gamma = 2.0 - angle
        distance = (1 - torch.exp(-gamma * (dx / (cw + eps)) ** 2)) + (1 - torch.exp(-gamma * (dy / (ch + eps)) ** 2))
        omega_w = (pw - tw).abs() / (torch.maximum(pw, tw) + eps)
        omega_h = (ph - th).abs() / (torch.maximum(ph, th) + eps)
        shape = (1 - torch.exp(-omega_w)) ** siou_theta + (1 - torch.exp(-omega_h)) ** siou_theta
        return iou - 0.5 * (distance + shape), iou
    cwh2 = cwh * cwh
    cw2, ch2 = cwh2.unbind(-1)
    c2 = cw2 + ch2
    if kind == "wiou":
        return 1.0 - torch.exp(rho2 / (c2 + eps).detach()) * (1.0 - iou), iou
    diou = iou - rho2 / (c2 + eps)
    if kind == "diou":
        return diou, iou
    if kind == "eiou":
        side = (pwh - twh) ** 2 / (cwh * cwh + eps)
        return diou - side[..., 0] - side[..., 1], iou
    # ciou (the kind was checked on entry)
    v = FOUR_OVER_PI2 * (aspect_angle(tw, th, eps) - aspect_angle(pw, ph, eps)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
        if alpha_gate:
            alpha = torch.where(ciou_gate(inter, union_area), alpha, torch.zeros_like(alpha))
    if aspect_grad == "paper":
        scale = (pw * pw + ph * ph).detach()
        v = v.detach() + scale * (v - v.detach())
    return diou - alpha * v, iou


_COMPUTE_DTYPES = (torch.float32, torch.float64)


def _compute_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    return torch.promote_types(upcast(a).dtype, upcast(b).dtype)


def prepare_pair(
    where: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    box_format: str,
    eps: float,
    *,
    names: tuple[str, str] = ("pred", "target"),
    broadcast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two box tensors and return them in ``xyxy``, float32 or wider, same dtype."""
    check_boxes(where, names[0], pred)
    check_boxes(where, names[1], target)
    check_same_device(where, names[0], pred, names[1], target)
    check_choice(where, "box_format", box_format, BOX_FORMATS)
    check_range(where, "eps", eps, 0.0, 1.0, low_open=True)
    if broadcast:
        check_broadcasts_with(where, names[0], pred, names[1], target)
    dtype = pred.dtype
    if dtype != target.dtype or dtype not in _COMPUTE_DTYPES:  # else nothing to promote or cast
        dtype = _compute_dtype(pred, target)
        pred, target = pred.to(dtype), target.to(dtype)
    return to_xyxy(pred, box_format), to_xyxy(target, box_format)


def aligned_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: IoUKind = "iou",
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
) -> torch.Tensor:
    """IoU-family similarity of aligned pairs: boxes ``(..., 4)`` give ``(...,)``.

    ``kind`` is one of ``iou, giou, diou, ciou, eiou, siou`` (formulas in
    ``box_similarity``). Shapes broadcast. Half-precision inputs are computed and
    returned in float32 (300-pixel boxes overflow float16 areas).

    Args:
        pred: boxes in ``box_format``, floating.
        target: boxes in ``box_format``, broadcasting with ``pred``.
        kind: ``"iou"``, ``"giou"``, ``"diou"``, ``"ciou"``, ``"eiou"`` or ``"siou"``.
        box_format: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.
        eps: in ``(0, 1]``, added to the denominators (union, enclosing box, diagonal).

    Shape:
        - pred, target: ``(*, 4)``, broadcasting; output: ``(*)``.

    Example (``xywh`` boxes: left, top, width, height):
        >>> gt = torch.tensor([0.0, 0.0, 4.0, 2.0])
        >>> pred = torch.tensor([2.0, 0.0, 4.0, 2.0])
        >>> aligned_iou(pred, gt, "iou", "xywh")  # overlap 2 x 2 = 4, union 8 + 8 - 4 = 12
        tensor(0.3333)
        >>> aligned_iou(pred, gt, "giou", "xywh")  # enclosing 6 x 2 = 12: GIoU = IoU
        tensor(0.3333)
        >>> aligned_iou(pred, gt, "diou", "xywh")  # centres 2 apart, diagonal^2 = 36 + 4
        tensor(0.2333)
    """
    where = "aligned_iou"
    check_choice(where, "kind", kind, IOU_KINDS)
    p, t = prepare_pair(where, pred, target, box_format, eps)
    return box_similarity(p, t, kind, eps)[0]


def pairwise_iou(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    kind: IoUKind = "iou",
    box_format: BoxFormat = "xyxy",
    eps: float = 1e-7,
) -> torch.Tensor:
    """IoU-family similarity of every pair: ``(N, 4)`` and ``(M, 4)`` give ``(N, M)``.

    Entry ``[i, j]`` equals ``aligned_iou(boxes1[i], boxes2[j], kind)``: the same kernel
    runs on blocks of rows, so memory stays bounded (about ``PAIRWISE_BLOCK`` pairs per
    block beyond the ``N x M`` result) for any ``N x M``. On CPU with the native backend and
    no gradient needed, the native kernel computes it (each box's own terms once, the pairs
    in cache-sized blocks of columns; beyond the result, 11 numbers per box).

    Args:
        boxes1: ``N`` boxes in ``box_format``, floating.
        boxes2: ``M`` boxes in ``box_format``.
        kind: ``"iou"``, ``"giou"``, ``"diou"``, ``"ciou"``, ``"eiou"`` or ``"siou"``.
        box_format: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.
        eps: in ``(0, 1]``, added to the denominators.

    Shape:
        - boxes1: ``(N, 4)``; boxes2: ``(M, 4)``; output: ``(N, M)``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
        >>> pairwise_iou(a, a)  # overlap 1, union 4 + 4 - 1 = 7
        tensor([[1.0000, 0.1429],
                [0.1429, 1.0000]])
    """
    where = "pairwise_iou"
    check_choice(where, "kind", kind, IOU_KINDS)
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        check_boxes(where, name, b)
        if b.dim() != 2:
            raise DetLossError.bad_argument(where, name, "shape (N, 4)", f"shape {tuple(b.shape)}")
    b1, b2 = prepare_pair(where, boxes1, boxes2, box_format, eps, names=("boxes1", "boxes2"), broadcast=False)
    if not (torch.is_grad_enabled() and (b1.requires_grad or b2.requires_grad)):
        from detloss import _backend  # here: the dispatch's operators import this module

        fast = _backend.pairwise(b1, b2, kind, eps)  # None: not the native backend on CPU
        if fast is not None:
            return fast
    right = b2[None, :, :]

    def block(rows: slice) -> torch.Tensor:
        return box_similarity(b1[rows, None, :], right, kind, eps)[0]

    grad = b1.requires_grad or b2.requires_grad
    return pairwise_blocks(block, b1.shape[0], b2.shape[0], PAIRWISE_BLOCK, like=b1, grad=grad)


def pairwise_blocks(
    block: Callable[[slice], torch.Tensor], n: int, m: int, pairs: int, *, like: torch.Tensor, grad: bool
) -> torch.Tensor:
    """The ``(n, m)`` matrix from ``block(rows)``, the ``(rows, m)`` entries of a slice of rows,
    computed about ``pairs`` pairs at a time: written into one preallocated result, or
    concatenated when autograd needs the blocks (``grad`` and gradients enabled)."""
    rows = max(1, pairs // max(m, 1))
    starts = range(0, n, rows)
    if torch.is_grad_enabled() and grad:
        return torch.cat([block(slice(i, i + rows)) for i in starts], dim=0) if n else like.new_zeros((0, m))
    out = like.new_empty((n, m))
    for i in starts:
        out[i : i + rows] = block(slice(i, i + rows))
    return out

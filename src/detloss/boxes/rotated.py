r"""Rotated boxes: formats, the exact rotated IoU and GIoU, Gaussian distances, rotated NMS.

Formats (``box_format``):

- ``"cxcywha"``: ``(cx, cy, w, h, a)``, shape ``(..., 5)``. The corners are
  ``c + R(a) (+-w/2, +-h/2)`` with ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` in the
  input's own coordinates (with the y axis pointing down, as in images, a positive ``a``
  turns the box clockwise on screen). ``angle_unit="rad"`` (default, as ultralytics'
  ``xywhr``) or ``"deg"``. A negative side counts as 0, as an inverted side of an ``xyxy`` box.
- ``"xyxyxyxy"``: the four corners ``(x1, y1, ..., x4, y4)``, shape ``(..., 8)``, in the order
  ``c + R(a)(w/2, h/2)``, ``c + R(a)(w/2, -h/2)``, ``c + R(a)(-w/2, -h/2)``,
  ``c + R(a)(-w/2, h/2)`` (that of ultralytics' ``xywhr2xyxyxyxy``). Read back as the
  rectangle with the corners' mean as centre, ``w = |(p1 - p4) + (p2 - p3)| / 2``,
  ``h = |(p1 - p2) + (p4 - p3)| / 2`` and the direction of the longer of these two vectors:
  exact for a rectangle in either orientation, a best-fit rectangle for any other
  quadrilateral. Differences of adjacent corners come first, and a box is kept as its first
  corner plus the (exact) offset of its centre, so thin boxes far from the origin keep their
  sides and the offset between two boxes its precision.

The overlap of two rectangles (:func:`rotated_box_similarity`) is exact: the intersection
is the convex polygon bounded by the parts of each box's edges that lie inside the other
box (at most 8 vertices), and its area is the sum, over those boundary segments, of
``cross(start, end) / 2`` (Green's theorem). Each of the 8 edges is clipped against the 4
lines of the other box in one fixed-size, vectorised step (no sorting, no Python loop over
pairs); the 16 points where an edge of one box meets a line of the other are computed once
and shared by both segments that end there, so the boundary always closes. Coordinates are
taken relative to the midpoint of the two centres, so far-away boxes lose no precision, and
the cross products relative to a point of the polygon, so thin boxes crossing far from
their centres lose none either.

Degenerate configurations are decided by one rule each, so that every piece of the
boundary is counted exactly once: an edge parallel to a line of the other box (``|sin| <=
2^-40`` between their normals) is wholly inside or wholly outside it; where two such edges
coincide with the same outward normal (identical boxes, a shared side of nested boxes) the
prediction's edge counts and the target's does not; coincident edges with opposite normals
(boxes that touch along a side) both count and cancel. So identical boxes give 1, boxes
sharing a side from outside 0, zero-area boxes 0, and near-identical boxes their exact IoU
(the failures of other implementations: 1/3 for identical or touching boxes, 0.58 for
near-identical ones, -1e7 for tiny ones).

The gradient of the intersection area is its shape derivative (Reynolds' transport
theorem): moving a line of a box by a normal velocity ``v_n`` changes the area by
``sum over the boundary segments on that line of  integral v_n ds``, i.e. ``L (do - dn . M)``
for a segment of length ``L`` and midpoint ``M`` on the line ``n . x = o``. It needs only
the segments' lengths and midpoints, never the derivative of an intersection point, so it
is exact where the area is differentiable, bounded (by the perimeter) everywhere, and
finite for identical, nested, touching, collinear, zero-area and nearly parallel boxes
alike (differentiating through the intersection points instead gives errors that grow as
``1 / sin`` of the angle between nearly parallel edges). At a kink (coincident edges) it is
one of the one-sided derivatives.

The GIoU's enclosing shape is the convex hull of the eight corners, found by gift wrapping
over a table of their cross products written as ``+-d + alpha u + beta v`` (half sides in
each box's frame): the crosses of the unit vectors are 0, 1, ``cos`` or ``sin``, and every
comparison between corners of one box uses their exact side coordinates, so float32 keeps a
needle's width next to its length and two tiny boxes far apart their widths (corners formed
first would lose both to rounding).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from detloss._checks import (
    check_choice,
    check_floating,
    check_range,
    check_rotated_boxes,
    check_same_device,
    upcast,
)
from detloss._typing import AngleUnit, GaussianKind, RotatedBoxFormat, RotatedIoUKind
from detloss.boxes.iou import pairwise_blocks
from detloss.errors import DetLossError

__all__ = [
    "ANGLE_UNITS",
    "GAUSSIAN_KINDS",
    "ROTATED_FORMATS",
    "ROTATED_IOU_KINDS",
    "Frames",
    "centre_offset",
    "convert_rotated",
    "gaussian_distance",
    "kfiou",
    "pairwise_rotated_iou",
    "prepare_rotated_pair",
    "rotated_box_similarity",
    "rotated_frames",
    "rotated_iou",
    "rotated_nms",
    "rotated_outline",
    "rotated_similarity",
]

#: The rotated box layouts: ``cxcywha`` (centre, sides, angle) and ``xyxyxyxy`` (four corners).
ROTATED_FORMATS: tuple[str, ...] = ("cxcywha", "xyxyxyxy")
#: The values of ``angle_unit``: radians (the default, as ultralytics' ``xywhr``) or degrees.
ANGLE_UNITS: tuple[str, ...] = ("rad", "deg")
ROTATED_IOU_KINDS: tuple[str, ...] = ("iou", "giou")
GAUSSIAN_KINDS: tuple[str, ...] = ("bhattacharyya", "kld", "gwd")
#: Pairs per block of :func:`pairwise_rotated_iou` (the kernel holds about 150 numbers per pair).
ROTATED_PAIRWISE_BLOCK = 1 << 16
#: ``|sin|`` of the angle between two normals at or below which an edge and a line are parallel.
_PARALLEL = 2.0**-40
#: Covariance scale ``k`` of ``Sigma = R diag(w^2, h^2) R^T / k``: ProbIoU uses the variance
#: of a uniform distribution over the box (12), KLD, GWD and KFIoU the half sides as standard
#: deviations (4).
_GAUSSIAN_K = {"bhattacharyya": 12.0, "kld": 4.0, "gwd": 4.0}


class Frames(NamedTuple):
    """A box as centre ``anchor + offset`` ``(..., 2)``, sides ``(w, h)`` ``(..., 2)`` (>= 0) and
    the unit vector ``u = (cos a, sin a)`` of its ``w`` side ``(..., 2)``.

    For ``cxcywha`` the anchor is the centre and the offset 0; for corners the anchor is the
    first corner and the offset the centre's from it (differences of nearby corners: exact),
    so that the offset between two boxes, :func:`centre_offset`, keeps its precision far
    from the origin."""

    anchor: torch.Tensor
    offset: torch.Tensor
    sides: torch.Tensor
    u: torch.Tensor

    @property
    def centre(self) -> torch.Tensor:
        return self.anchor + self.offset

    def select(self, index: Any) -> Frames:
        return Frames(*(t[index] for t in self))


def centre_offset(pred: Frames, target: Frames) -> torch.Tensor:
    """``c_pred - c_target``, anchors subtracted first: ``(..., 2)``."""
    return (pred.anchor - target.anchor) + (pred.offset - target.offset)


# ------------------------------------------------------------------ small vector algebra


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]


def _rot90(a: torch.Tensor) -> torch.Tensor:
    """``a`` turned by +90 degrees: ``(-a_y, a_x)``."""
    return torch.stack((-a[..., 1], a[..., 0]), dim=-1)


def _norm(a: torch.Tensor) -> torch.Tensor:
    """``|a|`` with a zero (not NaN) gradient at ``a = 0``."""
    sq = _dot(a, a)
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))


# ------------------------------------------------------------------ formats


def _angle_scale(angle_unit: str) -> float:
    return math.pi / 180.0 if angle_unit == "deg" else 1.0


def rotated_frames(boxes: torch.Tensor, box_format: str, angle_unit: str = "rad") -> Frames:
    """Centre, sides (negative ones count as 0) and direction of ``boxes``; no checks."""
    if box_format == "cxcywha":
        angle = boxes[..., 4] * _angle_scale(angle_unit)
        u = torch.stack((torch.cos(angle), torch.sin(angle)), dim=-1)
        centre = boxes[..., :2]
        return Frames(centre, torch.zeros_like(centre), boxes[..., 2:4].clamp(min=0), u)
    p = boxes.reshape(*boxes.shape[:-1], 4, 2)
    # differences of adjacent corners first (as long as a side: a short side stays exact far
    # from the origin): w u = ((p1 - p4) + (p2 - p3)) / 2, h v = ((p1 - p2) + (p4 - p3)) / 2
    s12, s43 = p[..., 0, :] - p[..., 1, :], p[..., 3, :] - p[..., 2, :]
    s14, s23 = p[..., 0, :] - p[..., 3, :], p[..., 1, :] - p[..., 2, :]
    along_w = 0.5 * (s14 + s23)  # w u
    along_h = 0.5 * (s12 + s43)  # h v (or -h v, mirrored)
    w, h = _norm(along_w), _norm(along_h)
    by_w = w >= h
    side = torch.where(by_w[..., None], along_w, torch.stack((along_h[..., 1], -along_h[..., 0]), dim=-1))
    length = torch.where(by_w, w, h)
    safe = torch.where(length > 0, length, torch.ones_like(length))
    unit_x = torch.zeros_like(side)
    unit_x[..., 0] = 1.0
    u = torch.where((length > 0)[..., None], side / safe[..., None], unit_x)
    # the corners' mean, from p1: ((p2 - p1) + (p3 - p1) + (p4 - p1)) / 4
    return Frames(p[..., 0, :], -0.25 * (2 * s12 + s23 + s14), torch.stack((w, h), dim=-1), u)


def convert_rotated(
    boxes: torch.Tensor, in_fmt: RotatedBoxFormat, out_fmt: RotatedBoxFormat, *, angle_unit: AngleUnit = "rad"
) -> torch.Tensor:
    """Convert rotated boxes between ``"cxcywha"`` ``(..., 5)`` and ``"xyxyxyxy"`` ``(..., 8)``.

    ``angle_unit`` is the unit of the ``cxcywha`` side. Corners come in the order of the
    module docstring; ``xyxyxyxy -> cxcywha`` gives ``w, h >= 0`` and the angle in
    ``(-pi, pi]`` of the corners' ``w`` side. The sides are written as they are (a negative
    ``w`` gives the mirrored corners, which are the same rectangle).

    Args:
        boxes: rotated boxes in ``in_fmt``, floating.
        in_fmt: ``"cxcywha"`` or ``"xyxyxyxy"``.
        out_fmt: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"``, the unit of the ``cxcywha`` angle (in or out).

    Shape:
        - boxes: ``(*, 5)`` (``cxcywha``) or ``(*, 8)`` (``xyxyxyxy``); output: ``(*, 8)`` or ``(*, 5)``.

    Example (a 4 x 2 box turned by 90 degrees):
        >>> box = torch.tensor([10.0, 20.0, 4.0, 2.0, 90.0])
        >>> convert_rotated(box, "cxcywha", "xyxyxyxy", angle_unit="deg")
        tensor([ 9., 22., 11., 22., 11., 18.,  9., 18.])
        >>> convert_rotated(torch.tensor([9.0, 22.0, 11.0, 22.0, 11.0, 18.0, 9.0, 18.0]), "xyxyxyxy", "cxcywha")
        tensor([10.0000, 20.0000,  4.0000,  2.0000,  1.5708])
    """
    where = "convert_rotated"
    check_choice(where, "in_fmt", in_fmt, ROTATED_FORMATS)
    check_choice(where, "out_fmt", out_fmt, ROTATED_FORMATS)
    check_choice(where, "angle_unit", angle_unit, ANGLE_UNITS)
    check_rotated_boxes(where, "boxes", boxes, in_fmt)
    if in_fmt == out_fmt:
        return boxes.clone()
    if in_fmt == "cxcywha":
        angle = boxes[..., 4] * _angle_scale(angle_unit)
        u = torch.stack((torch.cos(angle), torch.sin(angle)), dim=-1)
        a = 0.5 * boxes[..., 2:3] * u
        b = 0.5 * boxes[..., 3:4] * _rot90(u)
        c = boxes[..., :2]
        return torch.cat((c + a + b, c + a - b, c - a - b, c - a + b), dim=-1)
    f = rotated_frames(boxes, "xyxyxyxy")
    angle = torch.atan2(f.u[..., 1], f.u[..., 0]) / _angle_scale(angle_unit)
    return torch.cat((f.centre, f.sides, angle[..., None]), dim=-1)


# ------------------------------------------------------------------ the exact overlap


class _Lines(NamedTuple):
    """The four edges of a box, counter-clockwise; edge ``k`` runs from ``corners[k]`` to
    ``corners[k + 1]`` on the line ``normal . x = offset`` (outward unit normal), with
    midpoint ``mid``, unit direction of travel ``tangent`` and half-length ``half``."""

    normal: torch.Tensor  # (..., 4, 2)
    offset: torch.Tensor  # (..., 4)
    mid: torch.Tensor  # (..., 4, 2)
    tangent: torch.Tensor  # (..., 4, 2)
    half: torch.Tensor  # (..., 4)
    corners: torch.Tensor  # (..., 4, 2)


def _lines(centre: torch.Tensor, sides: torch.Tensor, u: torch.Tensor) -> _Lines:
    v = _rot90(u)
    hw, hh = 0.5 * sides[..., 0], 0.5 * sides[..., 1]
    normal = torch.stack((v, -u, -v, u), dim=-2)
    reach = torch.stack((hh, hw, hh, hw), dim=-1)  # distance of each edge from the centre
    half = torch.stack((hw, hh, hw, hh), dim=-1)
    offset = _dot(normal, centre[..., None, :]) + reach
    mid = centre[..., None, :] + reach[..., None] * normal
    tangent = _rot90(normal)
    corners = mid - half[..., None] * tangent
    return _Lines(normal, offset, mid, tangent, half, corners)


def _gather_points(points: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``points`` (``(..., 2)`` last) at ``index`` (size 1 along ``dim``), ``dim`` squeezed."""
    shape = [*index.shape, 2]
    return points.gather(dim, index.unsqueeze(-1).expand(shape)).squeeze(dim)


class _Boundary(NamedTuple):
    """The intersection polygon's area and its boundary segments on each box's lines."""

    area: torch.Tensor  # (...)
    length_a: torch.Tensor  # (..., 4): segment length on each line of box A (0: none)
    mid_a: torch.Tensor  # (..., 4, 2): its midpoint
    length_b: torch.Tensor
    mid_b: torch.Tensor
    starts: torch.Tensor  # (..., 8, 2): where each segment starts (A's lines, then B's), counter-clockwise
    valid: torch.Tensor  # (..., 8): the segment exists


def _intersection(a: _Lines, b: _Lines) -> _Boundary:
    """Area of the intersection of two boxes, and its boundary segments (no gradient).

    Indices: ``i`` an edge of A (dimension -2 of the ``(..., 4, 4)`` tables), ``j`` a line of
    B (dimension -1). ``det[i, j] = cross(n_i, n_j)`` is the rate at which B's constraint
    ``j`` grows along A's edge ``i`` (and minus the rate of A's ``i`` along B's edge ``j``).
    """
    n_a, n_b = a.normal[..., :, None, :], b.normal[..., None, :, :]
    det = _cross(n_a, n_b)
    # signed distance of A's edge midpoint beyond B's line (> 0: outside); also decides the
    # parallel pairs from B's side, so that the two decisions can never both count an edge
    gap = _dot(n_b, a.mid[..., :, None, :]) - b.offset[..., None, :]
    same = _dot(n_a, n_b) > 0
    parallel = det.abs() <= _PARALLEL
    safe = torch.where(parallel, torch.ones_like(det), det)
    t_a = torch.where(parallel, torch.zeros_like(det), -gap / safe)  # along A's edge, from its midpoint
    cross_pt = a.mid[..., :, None, :] + t_a[..., None] * a.tangent[..., :, None, :]  # shared by both edges
    t_b = _dot(b.tangent[..., None, :, :], cross_pt - b.mid[..., None, :, :])  # along B's edge

    # A's edges: B's line j is entered where det < 0, left where det > 0
    inside_a = torch.where(parallel, gap <= 0, torch.ones_like(parallel)).all(dim=-1)
    crossing = ~parallel
    s_t, s_pt = -a.half, a.corners  # running latest entry and earliest exit, and their points
    e_t, e_pt = a.half, a.corners.roll(-1, dims=-2)
    for j in range(4):
        t_j, pt_j, det_j = t_a[..., j], cross_pt[..., :, j, :], det[..., j]
        later = crossing[..., j] & (det_j < 0) & (t_j > s_t)
        s_t, s_pt = torch.where(later, t_j, s_t), torch.where(later[..., None], pt_j, s_pt)
        earlier = crossing[..., j] & (det_j > 0) & (t_j < e_t)
        e_t, e_pt = torch.where(earlier, t_j, e_t), torch.where(earlier[..., None], pt_j, e_pt)
    valid_a = inside_a & (s_t < e_t)
    segments_a = (s_pt, e_pt, valid_a)
    length_a = torch.where(valid_a, e_t - s_t, torch.zeros_like(s_t))
    mid_a = a.mid + (0.5 * (s_t + e_t))[..., None] * a.tangent

    # B's edges: A's line i is entered where det > 0, left where det < 0; parallel ties go to A
    inside_b = torch.where(parallel, torch.where(same, gap > 0, gap <= 0), torch.ones_like(parallel)).all(dim=-2)
    s_t, s_pt = -b.half, b.corners
    e_t, e_pt = b.half, b.corners.roll(-1, dims=-2)
    for i in range(4):
        t_i, pt_i, det_i = t_b[..., i, :], cross_pt[..., i, :, :], det[..., i, :]
        later = crossing[..., i, :] & (det_i > 0) & (t_i > s_t)
        s_t, s_pt = torch.where(later, t_i, s_t), torch.where(later[..., None], pt_i, s_pt)
        earlier = crossing[..., i, :] & (det_i < 0) & (t_i < e_t)
        e_t, e_pt = torch.where(earlier, t_i, e_t), torch.where(earlier[..., None], pt_i, e_pt)
    valid_b = inside_b & (s_t < e_t)
    length_b = torch.where(valid_b, e_t - s_t, torch.zeros_like(s_t))
    mid_b = b.mid + (0.5 * (s_t + e_t))[..., None] * b.tangent

    # the shoelace sum about a point of the polygon (the mean of its segments' ends), not the
    # origin: the boundary is closed, so the area is the same, and thin boxes crossing far
    # from the midpoint of their centres lose no precision to cancelling cross products
    starts = torch.cat((segments_a[0], s_pt), dim=-2)
    ends = torch.cat((segments_a[1], e_pt), dim=-2)
    valid = torch.cat((segments_a[2], valid_b), dim=-1)
    weight = valid.to(starts.dtype)[..., None]
    anchor = ((starts + ends) * weight).sum(dim=-2) / (2 * weight.sum(dim=-2)).clamp(min=1)
    parts = _cross(starts - anchor[..., None, :], ends - anchor[..., None, :])
    area = torch.where(valid, parts, torch.zeros_like(parts)).sum(dim=-1)
    return _Boundary(0.5 * area, length_a, mid_a, length_b, mid_b, starts, valid)


def _shape_derivative_term(lines: _Lines, length: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """``sum_k L_k (o_k - n_k . M_k)`` with ``L, M`` constants: its gradient is the area's."""
    return (length * (lines.offset - _dot(lines.normal, mid))).sum(dim=-1)


#: The eight corners of a pair, box A's then box B's, as ``(+-hw, +-hh)`` in their box's frame.
_CORNER_SIGNS = ((1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0))


class _CrossTable(NamedTuple):
    """The eight corners ``P_i = side_i d + L_i`` of boxes A (centre ``d``) and B (``-d``),
    ``L_i = alpha_i u + beta_i v`` in their own box's frame, as what their cross products
    need: ``cross(P_i, P_j) = side_i reach_j - side_j reach_i + local_ij`` with
    ``reach_j = cross(d, L_j)`` and ``local_ij = cross(L_i, L_j)`` (``cross(d, d) = 0``). The
    crosses of the boxes' unit vectors are 0, 1, ``cos`` or ``sin`` of the angle between the
    boxes, so no large and small numbers are ever added: a needle keeps its width next to
    its length, two tiny boxes far apart keep theirs."""

    side: torch.Tensor  # (8,): +1 for A's corners, -1 for B's
    alpha: torch.Tensor  # (..., 8)
    beta: torch.Tensor  # (..., 8)
    du: torch.Tensor  # (..., 8): cross(d, u) and cross(d, v) of the corner's box
    dv: torch.Tensor
    reach: torch.Tensor  # (..., 8)
    local: torch.Tensor  # (..., 8, 8)

    def cross(self) -> torch.Tensor:
        """``cross(P_i, P_j)`` ``(..., 8, 8)``."""
        side = self.side
        return side[:, None] * self.reach[..., None, :] - side[None, :] * self.reach[..., :, None] + self.local


def _cross_table(d: torch.Tensor, a: Frames, b: Frames) -> _CrossTable:
    signs = d.new_tensor(_CORNER_SIGNS)
    alpha = torch.cat((0.5 * a.sides[..., :1] * signs[:, 0], 0.5 * b.sides[..., :1] * signs[:, 0]), dim=-1)
    beta = torch.cat((0.5 * a.sides[..., 1:] * signs[:, 1], 0.5 * b.sides[..., 1:] * signs[:, 1]), dim=-1)
    four = (*d.shape[:-1], 4)
    du = torch.cat((_cross(d, a.u)[..., None].expand(four), _cross(d, b.u)[..., None].expand(four)), dim=-1)
    va, vb = _rot90(a.u), _rot90(b.u)
    dv = torch.cat((_cross(d, va)[..., None].expand(four), _cross(d, vb)[..., None].expand(four)), dim=-1)
    cos, sin = _dot(a.u, b.u)[..., None, None], _cross(a.u, b.u)[..., None, None]
    same = torch.zeros(8, 8, dtype=d.dtype, device=d.device)
    same[:4, :4] = same[4:, 4:] = 1.0
    turn = torch.zeros_like(same)  # cross(u_i, u_j) / sin: +1 from A to B, -1 from B to A
    turn[:4, 4:], turn[4:, :4] = 1.0, -1.0
    ai, aj, bi, bj = alpha[..., :, None], alpha[..., None, :], beta[..., :, None], beta[..., None, :]
    mixing = same + cos * (1 - same)
    local = sin * turn * (ai * aj + bi * bj) + (ai * bj - bi * aj) * mixing
    side = d.new_tensor([1.0] * 4 + [-1.0] * 4)
    return _CrossTable(side, alpha, beta, du, dv, alpha * du + beta * dv, local)


def _frame_cross(
    a1: torch.Tensor, b1: torch.Tensor, box1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor, box2: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cross(a1 u_1 + b1 v_1, a2 u_2 + b2 v_2)`` for vectors in the frames of boxes ``box1``,
    ``box2`` (0: A, 1: B; ``cos``, ``sin`` of the angle from A to B), and the sum of its terms'
    magnitudes. In one frame it is ``a1 b2 - b1 a2``; across, ``+-sin (a1 a2 + b1 b2) +
    cos (a1 b2 - b1 a2)``."""
    same = box1 == box2
    toward = torch.where(box1 < box2, sin, -sin)  # cross(u_1, u_2)
    spin = torch.where(same, torch.ones_like(cos), cos)
    tilt = torch.where(same, torch.zeros_like(sin), toward)
    value = tilt * (a1 * a2 + b1 * b2) + spin * (a1 * b2 - b1 * a2)
    size = tilt.abs() * ((a1 * a2).abs() + (b1 * b2).abs()) + spin.abs() * ((a1 * b2).abs() + (b1 * a2).abs())
    return value, size


def _turns(
    inside_b: torch.Tensor, inside_r: torch.Tensor, box_b: torch.Tensor, box_r: torch.Tensor, box_c: torch.Tensor,
    corner_b: tuple[torch.Tensor, torch.Tensor], corner_r: tuple[torch.Tensor, torch.Tensor],
    corner_c: tuple[torch.Tensor, torch.Tensor], reach_b: tuple[torch.Tensor, torch.Tensor],
    reach_c: tuple[torch.Tensor, torch.Tensor], s_b: torch.Tensor, s_r: torch.Tensor, cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cross(P_b - P_c, P_r - P_c)`` from the current corner ``c``, elementwise over tensors of
    entries, and the sum of the magnitudes of its terms (what rounding can do, in units of u).

    Each corner comes as ``(alpha, beta)`` in its box's frame, with ``(cross(d, u), cross(d, v))``
    of its box (``reach``) and ``s = side - side_c`` (0 in c's box). With ``P_x - P_c = s_x d +
    L_x - L_c``, differences of corners of one box are taken on their exact side coordinates
    before anything is multiplied:

    - ``b, r`` in c's box: ``cross(dL_b, dL_r)``;
    - ``b`` in c's box, ``r`` not: ``-s_r cross(d, dL_b) + cross(dL_b, L_r) - cross(dL_b, L_c)``
      (and the other way round, antisymmetric);
    - neither: ``s cross(d, L_r - L_b) + cross(L_b, L_r) + cross(L_c, L_b - L_r)``.
    """
    (ab, bb), (ar, br), (ac, bc) = corner_b, corner_r, corner_c
    (du_b, dv_b), (du_c, dv_c) = reach_b, reach_c
    dab, dbb, dar, dbr = ab - ac, bb - bc, ar - ac, br - bc  # exact for the corners of c's box

    def one_inside(da: torch.Tensor, db: torch.Tensor, s_o: torch.Tensor, ao: torch.Tensor, bo: torch.Tensor,
                   box_o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cross(P_i - P_c, P_o - P_c) for i in c's box (side differences da, db), o not
        far, far_size = _frame_cross(da, db, box_c, ao, bo, box_o, cos, sin)
        value = -s_o * (da * du_c + db * dv_c) + far - (da * bc - db * ac)
        size = s_o.abs() * ((da * du_c).abs() + (db * dv_c).abs()) + far_size + (da * bc).abs() + (db * ac).abs()
        return value, size

    ss = dab * dbr - dbb * dar
    ss_size = (dab * dbr).abs() + (dbb * dar).abs()
    so, so_size = one_inside(dab, dbb, s_r, ar, br, box_r)
    os_, os_size = one_inside(dar, dbr, s_b, ab, bb, box_b)
    da, db = ab - ar, bb - br  # L_b - L_r, in the other box's frame
    mixed, mixed_size = _frame_cross(ac, bc, box_c, da, db, box_b, cos, sin)
    oo = -s_b * (da * du_b + db * dv_b) + (ab * br - bb * ar) + mixed
    oo_size = s_b.abs() * ((da * du_b).abs() + (db * dv_b).abs()) + (ab * br).abs() + (bb * ar).abs() + mixed_size
    turn = torch.where(inside_b & inside_r, ss, torch.where(inside_b, so, torch.where(inside_r, -os_, oo)))
    both = inside_b & inside_r
    size = torch.where(both, ss_size, torch.where(inside_b, so_size, torch.where(inside_r, os_size, oo_size)))
    return turn, size


def _hull_area(d: torch.Tensor, a: Frames, b: Frames, corners: torch.Tensor) -> torch.Tensor:
    """Area of the convex hull of the eight corners of boxes A and B (:func:`_hull_order`): the
    shoelace sum of :meth:`_CrossTable.cross` over the hull's corners, differentiable."""
    batch = d.shape[:-1]
    index, table = _hull_order(d, a, b, corners)
    pairs = index[..., :-1] * 8 + index[..., 1:]
    return (0.5 * table.cross().flatten(-2).gather(-1, pairs).sum(dim=-1)).reshape(batch)


def _hull_order(d: torch.Tensor, a: Frames, b: Frames, corners: torch.Tensor) -> tuple[torch.Tensor, _CrossTable]:
    """The convex hull of the eight corners of boxes A and B by gift wrapping: the corners'
    indices ``(B, 10)`` (A's 0-3, B's 4-7; ``B`` the flattened batch) counter-clockwise from
    the start back to it, the last vertex repeated once the hull is closed, and the cross table.

    The wrap starts at the corner farthest along a fixed direction (a hull vertex, found box
    by box) and takes, at most 8 times, the next one by one scan of the candidates: a
    candidate replaces the best so far when it lies to the right of the edge towards it, or
    on it (within rounding) and beyond it, so collinear corners are skipped. Each turn comes
    from the difference vectors with a bound on what rounding does to it; a turn within its
    bound is recomputed exactly by :func:`_turns`. Corners within rounding of one another
    count once (identical boxes, a square turned by pi/2: two copies of a vertex would let
    the wrap take a second lap), and visited corners are not candidates again. Every
    comparison between corners of one box uses their exact side coordinates; ``corners``
    serve only to compare corners of different boxes. The selection carries no gradient.
    """
    # flattened here, so that entries can be picked by index
    d, corners = d.reshape(-1, 2), corners.reshape(-1, 8, 2)
    a, b = (Frames(*(t.reshape(-1, 2) for t in f)) for f in (a, b))
    table = _cross_table(d, a, b)
    count = 8
    unit = torch.finfo(d.dtype).eps
    with torch.no_grad():
        alpha, beta, du, dv = table.alpha.detach(), table.beta.detach(), table.du.detach(), table.dv.detach()
        side = table.side
        p = corners.detach()
        extent = 2 * d.detach().abs().sum(dim=-1) + a.sides.detach().sum(dim=-1) + b.sides.detach().sum(dim=-1)
        box = torch.arange(count, device=p.device) // 4
        same_box = box[:, None] == box[None, :]
        # corners within rounding of one another (identical boxes, a square turned by pi/2,
        # shared corners, zero sides) are one vertex: the lowest-numbered copy stays, the
        # others are left out (two copies would let the wrap take a second lap). Within a
        # box the test is exact, across boxes on the corners' coordinates.
        gap = (p[..., :, None, :] - p[..., None, :, :]).abs().amax(dim=-1)
        # within a box, alpha and beta are exact (half sides with signs): equal, or distinct
        local_same = (alpha[..., :, None] == alpha[..., None, :]) & (beta[..., :, None] == beta[..., None, :])
        same_point = torch.where(same_box, local_same, gap <= 16 * unit * extent[..., None, None])
        earlier = torch.ones(count, count, dtype=torch.bool, device=p.device).triu(diagonal=1)  # [i, j]: i < j
        repeated = (same_point & earlier).any(dim=-2)
        # the start: the corner farthest along -e for a fixed direction e (a hull vertex; ties
        # lie on one edge), the box from the coordinates, the corner within it exactly
        e = p.new_tensor([math.cos(1.0), math.sin(1.0)])
        first = torch.where(repeated, torch.full_like(gap[..., 0], torch.inf), _dot(p, e)).argmin(dim=-1)
        four = (*first.shape, 4)
        u_a, u_b = a.u.detach(), b.u.detach()
        u_e = torch.cat((_dot(u_a, e)[..., None].expand(four), _dot(u_b, e)[..., None].expand(four)), dim=-1)
        v_e = torch.cat((_cross(u_a, e)[..., None].expand(four), _cross(u_b, e)[..., None].expand(four)), dim=-1)
        along = alpha * u_e + beta * v_e  # (alpha u + beta v) . e, exact within a box (v . e = cross(u, e))
        mine = (box == (first // 4)[..., None]) & ~repeated
        start = torch.where(mine, along, torch.full_like(along, torch.inf)).argmin(dim=-1)
        is_start = torch.nn.functional.one_hot(start, count).bool()
        visited = is_start | repeated
        current, done = start, torch.zeros_like(start, dtype=torch.bool)
        order = [start]
        u_pt = torch.cat((u_a[..., None, :].expand(*four, 2), u_b[..., None, :].expand(*four, 2)), dim=-2)
        cos_ab, sin_ab = _dot(u_a, u_b), _cross(u_a, u_b)
        v_pt = _rot90(u_pt)
        for _ in range(count):
            at = current[..., None]
            box_c = current // 4
            inside = box == box_c[..., None]  # (..., 8): the corners of c's box
            d_alpha, d_beta = alpha - alpha.gather(-1, at), beta - beta.gather(-1, at)  # exact in c's box
            # P_j - P_c: in c's box from the side differences (exact), else from the corners
            to = torch.where(
                inside[..., None],
                d_alpha[..., None] * u_pt + d_beta[..., None] * v_pt,
                p - _gather_points(p, at, -2)[..., None, :],
            )
            dist = _dot(to, to)
            # each turn from the difference vectors, with a bound on what their rounding does
            # (exact within c's box, the corners' rounding across boxes); the bound is 0 for
            # the current corner itself, and a turn that it does not decide (nearly straight)
            # is computed exactly by _turns
            size = to.abs().sum(dim=-1)
            error = torch.where(inside, 4 * unit * (d_alpha.abs() + d_beta.abs()), 8 * unit * extent[..., None])
            s_all = side - side[current][..., None]
            candidate = ~visited | is_start
            best, best_dist, best_to = current, torch.zeros_like(dist[..., 0]), torch.zeros_like(to[..., 0, :])
            best_size, best_error = torch.zeros_like(best_dist), torch.zeros_like(best_dist)
            for r in range(count):
                to_r, dist_r, size_r, error_r = to[..., r, :], dist[..., r], size[..., r], error[..., r]
                turn = _cross(best_to, to_r)
                tol = best_size * error_r + size_r * best_error + best_error * error_r + 2 * unit * best_size * size_r
                unsure = (turn.abs() <= tol) & (tol > 0) & (best != r)
                if bool(unsure.any()):
                    n = unsure.nonzero(as_tuple=True)[0]
                    b_n, c_n = best[n], current[n]
                    exact, exact_size = _turns(
                        inside[n, b_n], inside[n, r], box[b_n], box[r], box[c_n],
                        (alpha[n, b_n], beta[n, b_n]), (alpha[n, r], beta[n, r]), (alpha[n, c_n], beta[n, c_n]),
                        (du[n, b_n], dv[n, b_n]), (du[n, c_n], dv[n, c_n]), s_all[n, b_n], s_all[n, r],
                        cos_ab[n], sin_ab[n],
                    )
                    turn, tol = turn.index_put((n,), exact), tol.index_put((n,), 16 * unit * exact_size)
                farther = (dist_r > best_dist) & (_dot(best_to, to_r) >= 0)  # on, and beyond, the best
                take = candidate[..., r] & ((turn < -tol) | ((turn <= tol) & farther))
                best = torch.where(take, r, best)
                best_dist = torch.where(take, dist_r, best_dist)
                best_to = torch.where(take[..., None], to_r, best_to)
                best_size, best_error = torch.where(take, size_r, best_size), torch.where(take, error_r, best_error)
            step = torch.where(done, current, best)
            visited = visited | torch.nn.functional.one_hot(step, count).bool()
            done = done | (step == start) | (step == current)
            current = step
            order.append(step)
        order.append(start)
    return torch.stack(order, dim=-1), table


def rotated_box_similarity(pred: Frames, target: Frames, kind: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The kernel: ``(similarity, iou)`` of rotated boxes given as :class:`Frames` that
    broadcast, float32 or float64 (no checks).

    - ``iou``: ``I / (U + eps)``, ``I`` the exact intersection area, ``U = |A| + |B| - I``;
    - ``giou``: ``iou - (C - U) / C`` with ``C = |hull(A u B)| + eps``, the convex hull of the
      eight corners (Rezatofighi et al., CVPR 2019, for convex shapes).
    """
    batch = (*torch.broadcast_shapes(pred.centre.shape[:-1], target.centre.shape[:-1]), 2)
    pred = Frames(*(t.expand(batch) for t in pred))
    target = Frames(*(t.expand(batch) for t in target))
    # both boxes relative to the midpoint of their centres: c_pred = d, c_target = -d
    d = 0.5 * centre_offset(pred, target)
    a = _lines(d, pred.sides, pred.u)
    b = _lines(-d, target.sides, target.u)
    area_a = pred.sides[..., 0] * pred.sides[..., 1]
    area_b = target.sides[..., 0] * target.sides[..., 1]
    with torch.no_grad():
        bound = _intersection(_Lines(*(t.detach() for t in a)), _Lines(*(t.detach() for t in b)))
        exact = torch.minimum(bound.area.clamp(min=0), torch.minimum(area_a, area_b))
    shape = _shape_derivative_term(a, bound.length_a, bound.mid_a) + _shape_derivative_term(
        b, bound.length_b, bound.mid_b
    )
    inter = exact + (shape - shape.detach())
    union = area_a + area_b - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou, iou
    enclosing = _hull_area(d, pred, target, torch.cat((a.corners, b.corners), dim=-2)) + eps
    return iou - (enclosing - union) / enclosing, iou


# ------------------------------------------------------------------ public overlap functions


def prepare_rotated_pair(
    where: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    box_format: str,
    angle_unit: str,
    eps: float,
    *,
    names: tuple[str, str] = ("pred", "target"),
    broadcast: bool = True,
) -> tuple[Frames, Frames]:
    """Check two rotated box tensors and return their frames, float32 or wider, one dtype."""
    dtype = check_rotated_pair(where, pred, target, box_format, angle_unit, eps, names=names, broadcast=broadcast)
    return pair_frames(pred, target, dtype, box_format, angle_unit)


def pair_frames(
    pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype, box_format: str, angle_unit: str
) -> tuple[Frames, Frames]:
    """The frames of two checked box tensors (:func:`check_rotated_pair`) in ``dtype``."""
    p, t = (rotated_frames(b.to(dtype), box_format, angle_unit) for b in (pred, target))
    return p, t


def check_rotated_pair(
    where: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    box_format: str,
    angle_unit: str,
    eps: float,
    *,
    names: tuple[str, str] = ("pred", "target"),
    broadcast: bool = True,
) -> torch.dtype:
    """Check two rotated box tensors (:func:`prepare_rotated_pair`); their common dtype, float32 or wider."""
    check_choice(where, "box_format", box_format, ROTATED_FORMATS)
    check_choice(where, "angle_unit", angle_unit, ANGLE_UNITS)
    check_rotated_boxes(where, names[0], pred, box_format)
    check_rotated_boxes(where, names[1], target, box_format)
    check_same_device(where, names[0], pred, names[1], target)
    check_range(where, "eps", eps, 0.0, 1.0, low_open=True)
    if broadcast:
        try:
            torch.broadcast_shapes(pred.shape, target.shape)
        except RuntimeError:
            raise DetLossError.bad_argument(
                where, names[1], f"a shape that broadcasts with `{names[0]}` {tuple(pred.shape)}", tuple(target.shape)
            ) from None
    return torch.promote_types(upcast(pred).dtype, upcast(target).dtype)


def _native_ready(*boxes: torch.Tensor, box_format: str) -> bool:
    """Whether the native operators take these boxes: ``cxcywha`` on CPU under the native backend."""
    if box_format != "cxcywha" or any(b.device.type != "cpu" for b in boxes):
        return False
    from detloss import _backend  # here: the dispatch imports detloss.boxes

    return _backend.resolve(boxes[0].device) == "native"


def native_rotated_pair(
    pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype, box_format: str, angle_unit: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Size] | None:
    """Checked boxes as the native operators take them: ``(pred, target, shape)``, both
    ``(N, 5)`` contiguous ``cxcywha`` in radians of ``dtype``, ``shape`` the shape they broadcast
    to; ``None`` where the native operators do not run them (another format or device, or
    another backend)."""
    if not _native_ready(pred, target, box_format=box_format):
        return None
    from detloss import _backend

    return _backend._flat_pair(_radians(pred, dtype, angle_unit), _radians(target, dtype, angle_unit), 5)


def _radians(boxes: torch.Tensor, dtype: torch.dtype, angle_unit: str) -> torch.Tensor:
    boxes = boxes.to(dtype)
    if angle_unit == "rad":
        return boxes
    return torch.cat((boxes[..., :4], boxes[..., 4:] * _angle_scale(angle_unit)), dim=-1)


def rotated_similarity(
    where: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    box_format: str,
    angle_unit: str,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked ``(similarity, iou)`` of :func:`rotated_box_similarity` for raw box tensors that
    broadcast: by the native operator ``torch.ops.detloss.rotated_box_iou`` (``cxcywha`` on CPU
    under the native backend: forward and backward in C++, in double), else the reference."""
    check_choice(where, "kind", kind, ROTATED_IOU_KINDS)
    dtype = check_rotated_pair(where, pred, target, box_format, angle_unit, eps)
    native = native_rotated_pair(pred, target, dtype, box_format, angle_unit)
    if native is not None:
        p, t, shape = native
        similarity, iou = torch.ops.detloss.rotated_box_iou(p, t, kind, float(eps))
        if len(shape) == 2:
            return similarity, iou
        return similarity.reshape(shape[:-1]), iou.reshape(shape[:-1])
    return rotated_box_similarity(*pair_frames(pred, target, dtype, box_format, angle_unit), kind, eps)


def rotated_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: RotatedIoUKind = "iou",
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
    eps: float = 1e-7,
) -> torch.Tensor:
    """Exact IoU or GIoU of aligned pairs of rotated boxes: ``(..., 5)`` give ``(...,)``.

    ``kind="iou"``: the area of the intersection polygon over the union. ``kind="giou"``:
    ``IoU - (C - U) / C`` with ``C`` the convex hull of the eight corners, the enclosing
    convex shape of Rezatofighi et al.'s definition. For upright boxes (``a = 0``) the IoU
    equals :func:`detloss.boxes.aligned_iou`, but the GIoU does not in general: the hull of
    two upright boxes is smaller than their enclosing upright box (unless one box holds the
    other or they share a side's span), so its penalty is smaller. Shapes broadcast;
    half-precision inputs are computed and returned in float32. See the module docstring
    for the method, the degenerate cases and the gradient.

    Args:
        pred: rotated boxes in ``box_format``, floating (half precision runs in float32).
        target: rotated boxes in ``box_format``, broadcasting with ``pred``.
        kind: ``"iou"`` or ``"giou"``.
        box_format: ``"cxcywha"`` (centre, sides, angle) or ``"xyxyxyxy"`` (the four corners).
        angle_unit: ``"rad"`` or ``"deg"``, for ``cxcywha``.
        eps: in ``(0, 1]``, added to the union and to the hull area.

    Shape:
        - pred, target: ``(*, 5)`` or ``(*, 8)``, broadcasting; output: ``(*)``.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 2.0, 2.0, 0.0])
        >>> b = torch.tensor([0.0, 0.0, 2.0, 2.0, math.pi / 4])  # the same square turned 45 degrees
        >>> rotated_iou(a, b)  # an octagon of area 8 (sqrt 2 - 1) = 3.3137, union 8 - 3.3137
        tensor(0.7071)
        >>> rotated_iou(a, a.clone()), rotated_iou(a, torch.tensor([2.0, 0.0, 2.0, 2.0, 0.0]))  # identical, touching
        (tensor(1.), tensor(0.))
        >>> rotated_iou(a, torch.tensor([3.0, 0.0, 2.0, 2.0, 0.0]), kind="giou")  # hull 5 x 2, union 8: -2/10
        tensor(-0.2000)
    """
    return rotated_similarity("rotated_iou", pred, target, kind, box_format, angle_unit, eps)[0]


def pairwise_rotated_iou(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    kind: RotatedIoUKind = "iou",
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
    eps: float = 1e-7,
) -> torch.Tensor:
    """IoU or GIoU of every pair of rotated boxes: ``(N, 5)`` and ``(M, 5)`` give ``(N, M)``.

    Entry ``[i, j]`` equals ``rotated_iou(boxes1[i], boxes2[j], kind)``: the same kernel runs
    on blocks of rows, about ``ROTATED_PAIRWISE_BLOCK`` pairs at a time, so memory beyond the
    ``N x M`` result stays bounded for any ``N x M``.

    Args:
        boxes1: ``N`` rotated boxes in ``box_format``, floating.
        boxes2: ``M`` rotated boxes in ``box_format``.
        kind: ``"iou"`` or ``"giou"``.
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"``, for ``cxcywha``.
        eps: in ``(0, 1]``, added to the union and to the hull area.

    Shape:
        - boxes1: ``(N, 5)`` or ``(N, 8)``; boxes2: ``(M, 5)`` or ``(M, 8)``; output: ``(N, M)``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0], [1.0, 0.0, 2.0, 2.0, 0.0]])
        >>> pairwise_rotated_iou(a, a)  # overlap 1 x 2, union 6
        tensor([[1.0000, 0.3333],
                [0.3333, 1.0000]])
    """
    where = "pairwise_rotated_iou"
    check_choice(where, "kind", kind, ROTATED_IOU_KINDS)
    check_choice(where, "box_format", box_format, ROTATED_FORMATS)
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        check_rotated_boxes(where, name, b, box_format)
        if b.dim() != 2:
            size = boxes1.shape[-1] if isinstance(boxes1, torch.Tensor) else 5
            raise DetLossError.bad_argument(where, name, f"shape (N, {size})", f"shape {tuple(b.shape)}")
    grad = boxes1.requires_grad or boxes2.requires_grad
    if not grad and _native_ready(boxes1, boxes2, box_format=box_format):
        dtype = check_rotated_pair(
            where, boxes1, boxes2, box_format, angle_unit, eps, names=("boxes1", "boxes2"), broadcast=False
        )
        b1, b2 = _radians(boxes1, dtype, angle_unit), _radians(boxes2, dtype, angle_unit)
        return torch.ops.detloss.pairwise_rotated_iou(b1, b2, kind, float(eps))  # type: ignore[no-any-return]
    f1, f2 = prepare_rotated_pair(
        where, boxes1, boxes2, box_format, angle_unit, eps, names=("boxes1", "boxes2"), broadcast=False
    )
    right = f2.select((None, slice(None)))

    def block(rows: slice) -> torch.Tensor:
        return rotated_box_similarity(f1.select((rows, None)), right, kind, eps)[0]

    n, m = f1.sides.shape[0], f2.sides.shape[0]
    return pairwise_blocks(block, n, m, ROTATED_PAIRWISE_BLOCK, like=f1.sides, grad=grad)


def rotated_outline(
    pred: torch.Tensor,
    target: torch.Tensor,
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The intersection polygon and the convex hull of one pair of rotated boxes, as
    :func:`rotated_iou` finds them (for drawing; no gradient).

    Args:
        pred: one rotated box, ``(5,)`` (``cxcywha``) or ``(8,)`` (``xyxyxyxy``).
        target: one rotated box, same layout.
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"``, for ``cxcywha``.

    Returns:
        ``(intersection, hull)``: vertices ``(K, 2)``, ``K <= 8`` (``K = 0`` for disjoint
        boxes), and ``(M, 2)``, ``M <= 8``, counter-clockwise (in coordinates where y points
        up), in the boxes' coordinates.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 2.0, 2.0, 0.0])
        >>> inter, hull = rotated_outline(a, torch.tensor([1.0, 0.0, 2.0, 2.0, 0.0]))
        >>> sorted(map(tuple, inter.tolist()))  # the square [0, 1] x [-1, 1]
        [(0.0, -1.0), (0.0, 1.0), (1.0, -1.0), (1.0, 1.0)]
        >>> hull.shape  # the rectangle [-1, 2] x [-1, 1]: collinear corners are not vertices
        torch.Size([4, 2])
    """
    where = "rotated_outline"
    for name, box in (("pred", pred), ("target", target)):
        if isinstance(box, torch.Tensor) and box.dim() != 1:
            raise DetLossError.bad_argument(where, name, "one box, a 1-d tensor", f"shape {tuple(box.shape)}")
    p, t = prepare_rotated_pair(where, pred, target, box_format, angle_unit, 1.0)
    with torch.no_grad():
        p, t = (Frames(*(x.detach()[None] for x in f)) for f in (p, t))
        d = 0.5 * centre_offset(p, t)  # both boxes about the midpoint of their centres, as rotated_iou
        a, b = _lines(d, p.sides, p.u), _lines(-d, t.sides, t.u)
        bound = _intersection(a, b)
        inter = bound.starts[bound.valid]
        if len(inter):  # a convex polygon: its vertices in order of angle about their mean
            around = inter - inter.mean(dim=0)
            inter = inter[torch.atan2(around[:, 1], around[:, 0]).argsort()]
        corners = torch.cat((a.corners, b.corners), dim=-2)
        index, _ = _hull_order(d, p, t, corners)
        order = torch.unique_consecutive(index[0])
        order = order[:-1] if len(order) > 1 and order[-1] == order[0] else order
        hull = corners[0, order]
        mid = t.centre[0] + d[0]
    return inter + mid, hull + mid


def rotated_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    *,
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
) -> torch.Tensor:
    """Greedy non-maximum suppression on the exact rotated IoU.

    Boxes are taken by decreasing score (ties: the earlier index first); each kept box
    removes every later box whose IoU with it is above ``iou_threshold``. Returns the indices
    (int64) of the kept boxes, by decreasing score, as ``torchvision.ops.nms`` does for
    upright boxes. One IoU row per kept box, so memory is ``O(N)``.

    Args:
        boxes: rotated boxes in ``box_format``, floating.
        scores: one floating score per box.
        iou_threshold: in ``[0, 1]``; a later box whose IoU with a kept one exceeds it is removed.
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"``, for ``cxcywha``.

    Shape:
        - boxes: ``(N, 5)`` or ``(N, 8)``; scores: ``(N,)``; output: ``(K,)``, ``K <= N``.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0], [0.2, 0.0, 4.0, 2.0, 0.05], [10.0, 0.0, 4.0, 2.0, 0.0]])
        >>> rotated_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)  # box 1 overlaps box 0 (IoU 0.86)
        tensor([0, 2])
    """
    where = "rotated_nms"
    check_choice(where, "box_format", box_format, ROTATED_FORMATS)
    check_choice(where, "angle_unit", angle_unit, ANGLE_UNITS)
    check_rotated_boxes(where, "boxes", boxes, box_format)
    if boxes.dim() != 2:
        raise DetLossError.bad_argument(where, "boxes", f"shape (N, {boxes.shape[-1]})", f"shape {tuple(boxes.shape)}")
    check_floating(where, "scores", scores)
    if scores.shape != boxes.shape[:1]:
        raise DetLossError.bad_argument(where, "scores", f"shape ({boxes.shape[0]},), one per box", tuple(scores.shape))
    check_same_device(where, "boxes", boxes, "scores", scores)
    check_range(where, "iou_threshold", iou_threshold, 0.0, 1.0)
    with torch.no_grad():
        order = torch.sort(scores.detach(), descending=True, stable=True).indices
        n = order.shape[0]
        ordered = upcast(boxes.detach())[order]
        if _native_ready(boxes, box_format=box_format):  # one native IoU row per kept box
            radians = _radians(ordered, ordered.dtype, angle_unit).contiguous()

            def row(i: int) -> torch.Tensor:
                return torch.ops.detloss.pairwise_rotated_iou(radians[i : i + 1], radians[i + 1 :], "iou", 1e-7)[0]

        else:
            frames = rotated_frames(ordered, box_format, angle_unit)

            def row(i: int) -> torch.Tensor:
                best, rest = frames.select((slice(i, i + 1),)), frames.select((slice(i + 1, None),))
                return rotated_box_similarity(best, rest, "iou", 1e-7)[0]

        removed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
        keep: list[int] = []
        for i in range(n):
            if bool(removed[i]):
                continue
            keep.append(i)
            if i + 1 < n:
                removed[i + 1 :] |= row(i) > iou_threshold
        return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


# ------------------------------------------------------------------ Gaussian distances


class _GaussianPair(NamedTuple):
    """What every Gaussian distance of two boxes needs, with sides ``w + eps``, ``h + eps``."""

    delta: torch.Tensor  # (..., 2): c_pred - c_target
    wp: torch.Tensor
    hp: torch.Tensor
    wt: torch.Tensor
    ht: torch.Tensor
    cos: torch.Tensor  # cos and sin of the angle between the boxes, and their squares
    sin: torch.Tensor
    cos2: torch.Tensor
    sin2: torch.Tensor
    up: torch.Tensor  # (..., 2) the boxes' w directions
    ut: torch.Tensor


def _gaussian_pair(pred: Frames, target: Frames, eps: float) -> _GaussianPair:
    cos = _dot(pred.u, target.u)
    sin = _cross(pred.u, target.u)
    wp, hp = (pred.sides + eps).unbind(-1)
    wt, ht = (target.sides + eps).unbind(-1)
    delta = centre_offset(pred, target)
    return _GaussianPair(delta, wp, hp, wt, ht, cos, sin, cos * cos, sin * sin, pred.u, target.u)


def _log_volume_ratio(g: _GaussianPair) -> torch.Tensor:
    r"""``ln psi`` with :math:`\psi = \det(\Sigma_p + \Sigma_t) / (4 \sqrt{\det\Sigma_p \det\Sigma_t})`
    (independent of ``k``), from log-ratios of the sides so that nothing cancels or overflows:
    ``psi = (cosh A + cos^2 cosh B + sin^2 cosh C) / 2`` with ``A = ln(w_p h_p / (w_t h_t))``,
    ``B = ln(h_p w_t / (w_p h_t))``, ``C = ln(h_p h_t / (w_p w_t))``, so
    ``psi - 1 = sinh^2(A/2) + cos^2 sinh^2(B/2) + sin^2 sinh^2(C/2) >= 0``, accurate to a few
    units of rounding even where it is tiny (near-identical boxes; ProbIoU's square root of
    ``B`` would turn an absolute error ``u`` into ``sqrt(u)``)."""
    lwp, lhp, lwt, lht = (torch.log(s) for s in (g.wp, g.hp, g.wt, g.ht))
    # differences of logs of sides first: exactly 0 where the sides are equal
    excess = (
        torch.sinh(0.5 * ((lwp - lwt) + (lhp - lht))) ** 2
        + g.cos2 * torch.sinh(0.5 * ((lhp - lht) + (lwt - lwp))) ** 2
        + g.sin2 * torch.sinh(0.5 * ((lhp - lwp) + (lht - lwt))) ** 2
    )
    return torch.log1p(excess)


def _scaled_norm(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``sqrt(sum p^2)`` without squaring tiny or huge numbers: scaled by the largest ``|p|``."""
    stacked = torch.stack(torch.broadcast_tensors(*parts), dim=-1)
    scale = stacked.detach().abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(stacked.dtype).tiny)
    return scale.squeeze(-1) * torch.sqrt(((stacked / scale) ** 2).sum(dim=-1))


def _bhattacharyya(g: _GaussianPair) -> torch.Tensor:
    k = _GAUSSIAN_K["bhattacharyya"]
    vp, vt = _rot90(g.up), _rot90(g.ut)
    # sqrt(k^2 det(Sigma_p + Sigma_t)): the root of a sum of squares of side products
    cos, sin = g.cos, g.sin
    root_det = _scaled_norm(
        (g.wp * g.hp, g.wt * g.ht, cos * g.hp * g.wt, cos * g.wp * g.ht, sin * g.hp * g.ht, sin * g.wp * g.wt)
    )
    # delta^T (Sigma_p + Sigma_t)^-1 delta = k sum_i (c_i / root_det)^2, the c_i the components of
    # adj(Sigma_p + Sigma_t) in the boxes' frames; each ratio is formed before it is squared
    components = (
        g.hp * _dot(g.up, g.delta), g.wp * _dot(vp, g.delta), g.ht * _dot(g.ut, g.delta), g.wt * _dot(vt, g.delta)
    )
    mahalanobis = sum((c / root_det) ** 2 for c in components)
    return 0.25 * k * mahalanobis + 0.5 * _log_volume_ratio(g)


def _excess(log_z: torch.Tensor) -> torch.Tensor:
    """``z - 1 - ln z`` (>= 0) for ``z = exp(log_z)``."""
    return (torch.expm1(log_z) - log_z).clamp(min=0)


def _kl_target_pred(g: _GaussianPair) -> torch.Tensor:
    k = _GAUSSIAN_K["kld"]
    vp = _rot90(g.up)
    lwp, lhp, lwt, lht = (torch.log(s) for s in (g.wp, g.hp, g.wt, g.ht))
    # tr(Sigma_p^-1 Sigma_t) - 2 - ln det(Sigma_p^-1 Sigma_t), as sums of z - 1 - ln z >= 0
    shape = g.cos2 * (_excess(2 * (lwt - lwp)) + _excess(2 * (lht - lhp))) + g.sin2 * (
        _excess(2 * (lht - lwp)) + _excess(2 * (lwt - lhp))
    )
    centre = k * ((_dot(g.up, g.delta) / g.wp) ** 2 + (_dot(vp, g.delta) / g.hp) ** 2)
    return 0.5 * (shape + centre)


def _power_of_two_scale(*sides: torch.Tensor) -> torch.Tensor:
    """``2^e``, ``e`` the binary exponent of the largest side (detached): dividing the sides by
    it is exact, so a term homogeneous in the sides keeps every bit where nothing overflowed."""
    largest = torch.stack(torch.broadcast_tensors(*sides), dim=-1).detach().amax(dim=-1)
    _, exponent = torch.frexp(largest)
    return torch.ldexp(torch.ones_like(largest), exponent)


def _wasserstein2(g: _GaussianPair) -> torch.Tensor:
    # Tr S_p + Tr S_t - 2 Tr (S_p^1/2 S_t S_p^1/2)^1/2 = (X - 2 sqrt(c^2 P^2 + s^2 Q^2)) / 4,
    # written as a quotient of non-negative terms (no cancellation for near-identical boxes).
    # The quotient is of degree 2 in the sides and its parts of degree 4: computed on the sides
    # over a power of two (exact) and scaled back, so float32 sides up to ~1e19 do not overflow.
    scale = _power_of_two_scale(g.wp, g.hp, g.wt, g.ht)
    wp, hp, wt, ht = g.wp / scale, g.hp / scale, g.wt / scale, g.ht / scale
    x = wp**2 + hp**2 + wt**2 + ht**2
    p = wp * wt + hp * ht
    q = wp * ht + hp * wt
    aligned = (wp - wt) ** 2 + (hp - ht) ** 2  # x - 2p
    crossed = (wp - ht) ** 2 + (hp - wt) ** 2  # x - 2q
    root = torch.sqrt(g.cos2 * p * p + g.sin2 * q * q)
    shape = (g.cos2 * aligned * (x + 2 * p) + g.sin2 * crossed * (x + 2 * q)) / (x + 2 * root)
    return _dot(g.delta, g.delta) + 0.25 * shape * scale * scale


def gaussian_distance(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: GaussianKind = "bhattacharyya",
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
    eps: float = 1e-7,
) -> torch.Tensor:
    r"""Distance of rotated boxes seen as Gaussians :math:`\mathcal{N}(c, \Sigma)`,
    :math:`\Sigma = R(a)\, \mathrm{diag}(w^2, h^2)\, R(a)^T / k`: ``(..., 5)`` give ``(...,)``.

    - ``"bhattacharyya"`` (``k = 12``, the covariance of the uniform distribution over the
      box; ProbIoU, Llerena et al., arXiv 2106.06072):
      :math:`B = \frac18 \Delta^T \Sigma^{-1} \Delta + \frac12 \ln \frac{\det\Sigma}{\sqrt{\det\Sigma_p \det\Sigma_t}}`,
      :math:`\Sigma = (\Sigma_p + \Sigma_t) / 2`, :math:`\Delta = c_p - c_t`;
    - ``"kld"`` (``k = 4``): :math:`KL(\mathcal{N}_t \| \mathcal{N}_p) = \frac12 \big(\mathrm{tr}(\Sigma_p^{-1}\Sigma_t)
      + \Delta^T \Sigma_p^{-1} \Delta - 2 + \ln \frac{\det\Sigma_p}{\det\Sigma_t}\big)`, the
      direction of the KLD authors' code (Yang et al., NeurIPS 2021) and of mmrotate's
      ``GDLoss``: the prediction's covariance is inverted, so the centre offset is measured in
      units of the predicted box. The paper prints :math:`D_{kl}(\mathcal{N}_p \| \mathcal{N}_t)`
      with the target's covariance inverted; the code's own comment marks its choice
      ``D(Nt||Np)``, and the other direction is commented out there;
    - ``"gwd"`` (``k = 4``): the squared 2-Wasserstein distance :math:`\|\Delta\|^2 + \mathrm{Tr}\,\Sigma_p
      + \mathrm{Tr}\,\Sigma_t - 2\,\mathrm{Tr}(\Sigma_p^{1/2}\Sigma_t\Sigma_p^{1/2})^{1/2}`
      (Yang et al., ICML 2021).

    Each is computed in closed form from the sides, the angle between the boxes and the
    centre offset in each box's frame, as sums of non-negative terms (nothing cancels for
    near-identical boxes, nothing overflows for sides from 1e-6 to 1e6). Sides enter as
    ``w + eps``, ``h + eps``: a zero-area box is a thin Gaussian, never a singular one, so
    every distance and its gradient is finite for every finite input. All three are 0 for
    identical boxes and depend on the angle only modulo pi (and, for squares, modulo pi/2).

    Args:
        pred: rotated boxes in ``box_format``, floating (half precision runs in float32).
        target: rotated boxes in ``box_format``, broadcasting with ``pred``.
        kind: ``"bhattacharyya"``, ``"kld"`` or ``"gwd"``.
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"``, for ``cxcywha``.
        eps: in ``(0, 1]``, added to every side.

    Shape:
        - pred, target: ``(*, 5)`` or ``(*, 8)``, broadcasting; output: ``(*)``.

    Example (a 4 x 2 box and the same box moved by 1 along its w side):
        >>> a = torch.tensor([0.0, 0.0, 4.0, 2.0, 0.0])
        >>> b = torch.tensor([1.0, 0.0, 4.0, 2.0, 0.0])
        >>> # Sigma (k = 12) = diag(16, 4) / 12: B = 1/8 * 1 / (16/12) = 0.09375
        >>> gaussian_distance(b, a, "bhattacharyya", eps=1e-12)
        tensor(0.0938)
        >>> # KL: 1/2 * 1 / (16/4) = 0.125; W^2: the squared offset 1
        >>> gaussian_distance(b, a, "kld", eps=1e-12), gaussian_distance(b, a, "gwd", eps=1e-12)
        (tensor(0.1250), tensor(1.))
    """
    where = "gaussian_distance"
    check_choice(where, "kind", kind, GAUSSIAN_KINDS)
    p, t = prepare_rotated_pair(where, pred, target, box_format, angle_unit, eps)
    return gaussian_core(p, t, kind, eps)


def gaussian_core(pred: Frames, target: Frames, kind: str, eps: float) -> torch.Tensor:
    """:func:`gaussian_distance` on frames (no checks): the elementwise core."""
    g = _gaussian_pair(pred, target, eps)
    if kind == "bhattacharyya":
        return _bhattacharyya(g)
    if kind == "kld":
        return _kl_target_pred(g)
    return _wasserstein2(g)


def kfiou_core(pred: Frames, target: Frames, eps: float) -> torch.Tensor:
    """:func:`kfiou` on frames (no checks)."""
    g = _gaussian_pair(pred, target, eps)
    vol_p, vol_t = g.wp * g.hp, g.wt * g.ht
    # V = 4 sqrt(det Sigma) is the box area for k = 4; the overlap Gaussian of the Kalman
    # update has det = det S_p det S_t / det(S_p + S_t): V_overlap = sqrt(V_p V_t / (4 psi))
    # (the roots taken apart: the product of two areas overflows float32 from sides of ~1e10)
    overlap = torch.sqrt(vol_p) * torch.sqrt(vol_t) * torch.exp(-0.5 * _log_volume_ratio(g)) * 0.5
    return overlap / (vol_p + vol_t - overlap)


def kfiou(
    pred: torch.Tensor,
    target: torch.Tensor,
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
    eps: float = 1e-7,
) -> torch.Tensor:
    r"""KFIoU of aligned pairs (Yang et al., "The KFIoU Loss for Rotated Object Detection",
    ICLR 2023): ``(..., 5)`` give ``(...,)``, in ``(0, 1/3]``.

    .. math::
        \mathrm{KFIoU} = \frac{V_\cap}{V_p + V_t - V_\cap}, \quad V(\Sigma) = 4\sqrt{\det\Sigma},
        \quad \Sigma_\cap = \Sigma_p - K \Sigma_p, \quad K = \Sigma_p (\Sigma_p + \Sigma_t)^{-1}

    with the boxes as Gaussians of ``k = 4`` (:func:`gaussian_distance`), so ``V`` of a box is
    its area ``w h``. It does not depend on the centres (the loss adds a centre term), and is
    1/3 for identical boxes (:math:`\Sigma_\cap = \Sigma / 2`, :math:`V_\cap = V/2`). Sides
    enter as ``w + eps``, ``h + eps``. Computed as
    :math:`V_\cap = \sqrt{V_p V_t / (4 \psi)}`, :math:`\psi` as in :func:`gaussian_distance`.

    Args:
        pred: rotated boxes in ``box_format``, floating (half precision runs in float32).
        target: rotated boxes in ``box_format``, broadcasting with ``pred``.
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"``, for ``cxcywha``.
        eps: in ``(0, 1]``, added to every side.

    Shape:
        - pred, target: ``(*, 5)`` or ``(*, 8)``, broadcasting; output: ``(*)``.

    Example:
        >>> a = torch.tensor([0.0, 0.0, 4.0, 2.0, 0.0])
        >>> kfiou(a, a.clone(), eps=1e-12)
        tensor(0.3333)
        >>> # turned by 90 degrees: Sigma_p + Sigma_t = 5 I (det 25), det Sigma_p = det Sigma_t = 4:
        >>> # V_overlap = 4 sqrt(4 * 4 / 25) = 3.2, areas 8 and 8
        >>> kfiou(torch.tensor([0.0, 0.0, 4.0, 2.0, math.pi / 2]), a, eps=1e-12)  # 3.2 / (16 - 3.2)
        tensor(0.2500)
    """
    where = "kfiou"
    p, t = prepare_rotated_pair(where, pred, target, box_format, angle_unit, eps)
    return kfiou_core(p, t, eps)

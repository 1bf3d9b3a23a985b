r"""The anchor-free head: points, distances to the four sides, class scores without objectness.

YOLOv8-style (Jocher et al., ultralytics 2023; the DFL branch of Generalized Focal Loss, Li et
al., NeurIPS 2020): every cell centre of every level is one prediction slot, a *point*
``(x, y) = ((i + 0.5) s, (j + 0.5) s)`` of the grid of stride ``s``. A slot predicts

- four distances ``(l, t, r, b)`` from its point to the box sides, in strides, so that the box
  is ``(x - l s, y - t s, x + r s, y + b s)`` (``xyxy`` pixels);
- one logit per class; the score of a class is its sigmoid (no objectness: the class score
  itself is trained towards the assigner's IoU-aware target).

With DFL (``reg_max = R``) each distance is a distribution over the ``R + 1`` bins
``0, 1, ..., R`` (GFL's convention: ``R + 1`` logits per side, the largest distance ``R``
itself; ultralytics' ``reg_max = 16`` means 16 bins ``0..15`` instead), decoded as its
expectation :math:`\hat d = \sum_{i=0}^{R} i\,\mathrm{softmax}(x)_i`
(:func:`detloss.functional.distribution_expectation`); DFL trains it. Without DFL
(``reg_max = None``) the branch has one output per side, ``d = softplus(x)``: the same
distances regressed directly, positive and finite for every finite output.

Layout of the raw output ``(B, A, K + C)``: the levels in order of stride, within a level the
rows then the columns (as :func:`detloss.assign.make_anchors` lays out its points), ``K =
4 (R + 1)`` box logits (side-major: ``l`` bins first) or ``K = 4`` with DFL off, then ``C``
class logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from detloss import DetLossError
from detloss._checks import check_integer
from detloss.assign import Anchors, make_anchors
from detloss.detection.model import TinyBackbone, _conv
from detloss.functional import distribution_expectation

__all__ = [
    "INITIAL_DISTANCE",
    "PointPriors",
    "AnchorFreeYOLO",
    "decode_distances",
    "decode_points",
    "encode_points",
    "make_point_priors",
]

#: Distance (in strides) every side starts from, with DFL on and off: boxes 4 strides wide.
INITIAL_DISTANCE = 2.0


@dataclass(frozen=True)
class PointPriors:
    """The fixed part of every slot of the anchor-free head (``A`` of them)."""

    anchors: Anchors  #: points ``(A, 2)`` and strides ``(A,)`` in pixels, per level
    reg_max: int | None  #: ``R``: bins ``0..R`` per side; None: DFL off, one distance per side
    level_strides: tuple[int, ...]
    grid_sizes: tuple[tuple[int, int], ...]  #: (H_l, W_l) per level

    @property
    def num_slots(self) -> int:
        return int(self.anchors.points.shape[0])

    @property
    def box_channels(self) -> int:
        """Box outputs per slot: ``4 (R + 1)``, or 4 with DFL off."""
        return 4 if self.reg_max is None else 4 * (self.reg_max + 1)

    def to(self, device: torch.device | str) -> PointPriors:
        """The same priors on ``device``."""
        return replace(self, anchors=self.anchors.to(device))


def make_point_priors(strides: Sequence[int], image_size: int, reg_max: int | None = 16) -> PointPriors:
    """The :class:`PointPriors` of a square ``image_size`` input (a multiple of every stride).

    Args:
        strides: the stride of each level in pixels, smallest first.
        image_size: the side of the square input in pixels, a multiple of every stride.
        reg_max: ``R``, the last bin of each side's distribution (bins ``0..R``, ``>= 1``), or
            None for DFL off (one distance per side).

    Example:
        >>> p = make_point_priors((8, 16), 32, reg_max=16)
        >>> p.num_slots, p.grid_sizes, p.box_channels  # 4 x 4 + 2 x 2 points, 4 sides x 17 bins
        (20, ((4, 4), (2, 2)), 68)
        >>> p.anchors.points[[0, 1, 16]].tolist(), p.anchors.strides[16].item()
        ([[4.0, 4.0], [12.0, 4.0], [8.0, 8.0]], 16.0)
    """
    if reg_max is not None:
        check_integer("make_point_priors", "reg_max", reg_max, 1)
    grids = []
    for s in strides:
        if image_size % s:
            raise DetLossError.bad_argument("make_point_priors", "image_size", f"a multiple of {s}", image_size)
        grids.append((image_size // s, image_size // s))
    return PointPriors(make_anchors(grids, [int(s) for s in strides]), reg_max, tuple(int(s) for s in strides),
                       tuple(grids))


def decode_distances(box_raw: torch.Tensor, priors: PointPriors) -> torch.Tensor:
    """Distances ``(..., 4)`` (``l, t, r, b`` in strides) from the box outputs ``(..., K)``.

    DFL on: the expectation of each side's softmax over the bins ``0..R``; off: ``softplus``.

    Args:
        box_raw: the box outputs ``(..., K)``, ``K = priors.box_channels`` (side-major bins with
            DFL on: the ``R + 1`` logits of ``l``, then those of ``t``, ``r``, ``b``).
        priors: the slots of the head; ``priors.reg_max`` says whether DFL is on.

    Example (R = 2; logits ``log w``: each side is ``(0 w_0 + 1 w_1 + 2 w_2) / (w_0 + w_1 + w_2)``):
        >>> p = make_point_priors((8,), 8, reg_max=2)
        >>> w = torch.tensor([[1.0, 2.0, 1.0], [2.0, 1.0, 1.0], [1.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
        >>> decode_distances(w.log().flatten(), p)
        tensor([1.0000, 0.7500, 1.2500, 1.0000])
    """
    if box_raw.shape[-1] != priors.box_channels:
        raise DetLossError.bad_argument(
            "decode_distances", "box_raw", f"last dimension {priors.box_channels}", tuple(box_raw.shape)
        )
    if priors.reg_max is None:
        return nn.functional.softplus(box_raw)
    return distribution_expectation(box_raw.unflatten(-1, (4, priors.reg_max + 1)))


def decode_points(raw: torch.Tensor, priors: PointPriors) -> torch.Tensor:
    """Boxes ``(B, A, 4)`` in ``xyxy`` pixels from the raw output ``(B, A, K + C)``.

    Args:
        raw: the head's output ``(B, A, K + C)``; only its first ``K`` channels are read.
        priors: the ``A`` slots (points and strides) the output belongs to.

    Example (DFL off, one point at (4, 4) of stride 8; softplus(0.5413) = 1 stride, softplus(1.8546) = 2):
        >>> p = make_point_priors((8,), 8, reg_max=None)
        >>> decode_points(torch.tensor([[[0.5413, 0.5413, 1.8546, 0.5413, 0.0]]]), p).round(decimals=3)
        tensor([[[-4., -4., 20., 12.]]])
    """
    ltrb = decode_distances(raw[..., : priors.box_channels], priors) * priors.anchors.strides[:, None]
    points = priors.anchors.points
    return torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), dim=-1)


def encode_points(boxes: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """The distances ``(..., 4)`` in strides from ``points (..., 2)`` to the sides of ``boxes
    (..., 4)`` (``xyxy``): the inverse of :func:`decode_points` (negative outside the box).

    Args:
        boxes: ``(..., 4)`` boxes, ``xyxy`` pixels.
        points: ``(..., 2)`` points ``(x, y)`` in pixels.
        strides: ``(...)`` the stride of each point in pixels.

    Example:
        >>> encode_points(torch.tensor([[0.0, 2.0, 12.0, 6.0]]), torch.tensor([[4.0, 4.0]]), torch.tensor([8.0]))
        tensor([[0.5000, 0.2500, 1.0000, 0.2500]])
    """
    ltrb = torch.cat((points - boxes[..., :2], boxes[..., 2:] - points), dim=-1)
    return ltrb / strides[..., None]


class AnchorFreeYOLO(TinyBackbone):
    """The trunk of :class:`~detloss.detection.model.TinyBackbone` with a decoupled head per
    level, as YOLOv8's: a box branch and a class branch, each two 3 x 3 convolutions of
    ``2 width`` channels and a 1 x 1 output convolution (``K`` box logits, ``C`` class
    logits; see the module for ``K``).

    Biases: the class logits start at ``-log((1 - pi) / pi)``, ``pi = 0.01`` (Lin et al., ICCV
    2017, Sec. 4.1); every side starts at :data:`INITIAL_DISTANCE` strides, with DFL on
    (bin logits ``-(i - d0)^2 / 2``, whose expectation is 2.01 for ``R = 16``) and off
    (``softplus^-1(d0)``), so both variants begin from the same boxes. With ``width=16``
    and strides ``(8, 16)``: about 0.5 M parameters.

    Args:
        num_classes: ``C``, class logits per slot (``>= 1``).
        strides: the output strides, one level each (the trunk's: ``(8, 16)``).
        width: channels of the trunk's first stage; each branch has ``2 width``.
        reg_max: ``R`` (bins ``0..R`` per side, ``>= 1``), or None for DFL off.

    Example:
        >>> model = AnchorFreeYOLO(4, strides=(8, 16), reg_max=16)
        >>> model(torch.zeros(2, 3, 64, 64)).shape  # 8 x 8 + 4 x 4 points, 4 x 17 + 4 outputs
        torch.Size([2, 80, 72])
    """

    def __init__(
        self, num_classes: int, strides: Sequence[int] = (8, 16), width: int = 16, reg_max: int | None = 16
    ) -> None:
        super().__init__(strides, width, where="AnchorFreeYOLO")
        check_integer("AnchorFreeYOLO", "num_classes", num_classes, 1)
        if reg_max is not None:  # None: DFL off
            check_integer("AnchorFreeYOLO", "reg_max", reg_max, 1)
        self.num_classes = num_classes
        self.reg_max = reg_max
        branch = 2 * width

        box_bias = torch.full((4,), math.log(math.expm1(INITIAL_DISTANCE)))
        if reg_max is not None:
            bins = torch.arange(reg_max + 1, dtype=torch.float32)
            box_bias = (-0.5 * (bins - INITIAL_DISTANCE) ** 2).repeat(4)
        cls_bias = torch.full((num_classes,), -math.log((1 - 0.01) / 0.01))

        def tower(cin: int, bias: torch.Tensor) -> nn.Sequential:
            first, second = _conv(cin, branch), _conv(branch, branch)
            out = nn.Conv2d(branch, bias.shape[0], 1)
            with torch.no_grad():
                out.bias.copy_(bias)  # type: ignore[union-attr]  # Conv2d(bias=True)
            return nn.Sequential(first, second, out)

        self.box_heads = nn.ModuleList(tower(ch, box_bias) for ch in self.channels)
        self.cls_heads = nn.ModuleList(tower(ch, cls_bias) for ch in self.channels)
        self._priors: dict[tuple[int, str], PointPriors] = {}
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def priors(self, image_size: int) -> PointPriors:
        """The slots of a square input of ``image_size`` pixels (cached per size and device)."""
        device = next(self.parameters()).device
        key = (int(image_size), str(device))
        if key not in self._priors:
            self._priors[key] = make_point_priors(self.strides, int(image_size), self.reg_max).to(device)
        return self._priors[key]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw predictions ``(B, A, K + C)`` for images ``(B, 3, S, S)``."""
        outputs = []
        for feat, box_head, cls_head in zip(self.features(images), self.box_heads, self.cls_heads):
            out = torch.cat((box_head(feat), cls_head(feat)), dim=1)
            outputs.append(out.flatten(2).transpose(1, 2))
        return torch.cat(outputs, dim=1)

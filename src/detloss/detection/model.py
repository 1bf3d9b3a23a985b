"""A tiny YOLO-style detector: k-means anchors, the prediction grid, decoding, the network.

Layout of the predictions (every function of :mod:`detloss.detection` shares it): the
levels in order of stride, and within a level the anchors, then the rows, then the columns,
flattened into ``N = sum_l A * H_l * W_l`` slots. The raw output is ``(B, N, 5 + C)``: ``t_x,
t_y, t_w, t_h``, the objectness logit and ``C`` class logits. A slot at cell ``(c_x, c_y)``
of a level with stride ``s`` and anchor ``(p_w, p_h)`` decodes as in YOLOv3 (Redmon and
Farhadi, arXiv 1804.02767, Sec. 2.1)::

    b_x = (sigmoid(t_x) + c_x) s,   b_w = p_w exp(t_w)   (likewise y, h)

with ``t_w, t_h`` clamped at ``MAX_LOG_SCALE`` before the exponential.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from detloss import DetLossError
from detloss.boxes import pairwise_iou

__all__ = ["MAX_LOG_SCALE", "Priors", "make_priors", "decode", "kmeans_anchors", "TinyBackbone", "TinyYOLO"]

#: Largest ``t_w, t_h`` used by :func:`decode`: a box at most e^4 = 55 times its anchor.
MAX_LOG_SCALE = 4.0


@dataclass(frozen=True)
class Priors:
    """The fixed part of every prediction slot (``N`` of them, in the layout above)."""

    cells: torch.Tensor  #: (N, 2) grid column and row of each slot
    anchors: torch.Tensor  #: (N, 2) anchor width and height in pixels
    strides: torch.Tensor  #: (N,) stride in pixels
    level_anchors: torch.Tensor  #: (L, A, 2) the anchors per level
    level_strides: tuple[int, ...]
    grid_sizes: tuple[tuple[int, int], ...]  #: (H_l, W_l) per level
    offsets: tuple[int, ...]  #: index of each level's first slot

    @property
    def num_slots(self) -> int:
        return int(self.strides.shape[0])

    def to(self, device: torch.device | str) -> Priors:
        """The same priors on ``device``."""
        return replace(
            self,
            cells=self.cells.to(device),
            anchors=self.anchors.to(device),
            strides=self.strides.to(device),
            level_anchors=self.level_anchors.to(device),
        )


def make_priors(level_anchors: torch.Tensor, strides: Sequence[int], image_size: int) -> Priors:
    """The :class:`Priors` of a square ``image_size`` input (a multiple of every stride).

    Example:
        >>> p = make_priors(torch.tensor([[[4.0, 6.0]], [[20.0, 10.0]]]), (8, 16), 32)
        >>> p.num_slots, p.grid_sizes, p.offsets  # 1 anchor x 4 x 4, then 1 anchor x 2 x 2
        (20, ((4, 4), (2, 2)), (0, 16))
        >>> p.cells[5].tolist(), p.anchors[16].tolist(), p.strides[16].item()  # row 1, column 1
        ([1.0, 1.0], [20.0, 10.0], 16.0)
    """
    if level_anchors.dim() != 3 or level_anchors.shape[-1] != 2 or level_anchors.shape[0] != len(strides):
        raise DetLossError.bad_argument(
            "make_priors", "level_anchors", f"shape ({len(strides)}, A, 2)", f"shape {tuple(level_anchors.shape)}"
        )
    cells, anchors, stride_list, grids, offsets = [], [], [], [], []
    start = 0
    for anchors_l, s in zip(level_anchors, strides):
        if image_size % s:
            raise DetLossError.bad_argument("make_priors", "image_size", f"a multiple of {s}", image_size)
        h = w = image_size // s
        a = anchors_l.shape[0]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid = torch.stack((xs, ys), dim=-1).reshape(1, h * w, 2).expand(a, h * w, 2).reshape(-1, 2)
        cells.append(grid.to(level_anchors))
        anchors.append(anchors_l[:, None, :].expand(a, h * w, 2).reshape(-1, 2))
        stride_list.append(torch.full((a * h * w,), float(s), dtype=level_anchors.dtype, device=level_anchors.device))
        grids.append((h, w))
        offsets.append(start)
        start += a * h * w
    return Priors(
        cells=torch.cat(cells).to(level_anchors.device),
        anchors=torch.cat(anchors),
        strides=torch.cat(stride_list),
        level_anchors=level_anchors,
        level_strides=tuple(int(s) for s in strides),
        grid_sizes=tuple(grids),
        offsets=tuple(offsets),
    )


def decode(raw: torch.Tensor, priors: Priors) -> torch.Tensor:
    """Boxes ``(B, N, 4)`` in ``xyxy`` pixels from the raw output ``(B, N, 5 + C)``.

    Example (one slot: cell (1, 0), stride 8, anchor 10 x 20; zero offsets decode to the
    cell centre and the anchor's size):
        >>> p = make_priors(torch.tensor([[[10.0, 20.0]]]), (8,), 16)
        >>> decode(torch.zeros(1, 4, 6), p)[0, 1]  # centre (12, 4)
        tensor([ 7., -6., 17., 14.])
    """
    xy = (torch.sigmoid(raw[..., :2]) + priors.cells) * priors.strides[:, None]
    wh = priors.anchors * torch.exp(raw[..., 2:4].clamp(max=MAX_LOG_SCALE))
    return torch.cat((xy - 0.5 * wh, xy + 0.5 * wh), dim=-1)


def _centred(sizes: torch.Tensor) -> torch.Tensor:
    return torch.cat((-0.5 * sizes, 0.5 * sizes), dim=-1)


def kmeans_anchors(sizes: torch.Tensor, k: int, *, iterations: int = 60) -> torch.Tensor:
    """``k`` anchor sizes ``(k, 2)`` from box sizes ``(M, 2)``, sorted by area.

    k-means with the distance ``1 - IoU`` of boxes sharing a centre (YOLOv2, Redmon and
    Farhadi, CVPR 2017, Sec. "Dimension Clusters"); centroids are the means of their
    clusters. Deterministic: starts from the sizes at evenly spaced quantiles of area. With
    fewer distinct sizes than ``k`` (or none), the missing anchors are geometric steps
    between the smallest and largest size (8 to 64 pixels without any box).

    Example:
        >>> sizes = torch.tensor([[2.0, 4.0], [2.2, 4.0], [30.0, 10.0], [28.0, 12.0]])
        >>> kmeans_anchors(sizes, 2)
        tensor([[ 2.1000,  4.0000],
                [29.0000, 11.0000]])
    """
    if not isinstance(k, int) or k < 1:
        raise DetLossError.bad_argument("kmeans_anchors", "k", "a positive integer", repr(k))
    sizes = sizes.detach().double().reshape(-1, 2)
    sizes = sizes[(sizes > 0).all(dim=1)]
    distinct = torch.unique(sizes, dim=0)
    if distinct.shape[0] < k:
        lo = float(sizes.min()) if sizes.numel() else 8.0
        hi = float(sizes.max()) if sizes.numel() else 64.0
        steps = torch.logspace(math.log10(lo), math.log10(max(hi, lo)), k, dtype=torch.float64)
        extra = torch.stack((steps, steps), dim=-1)
        anchors = torch.cat((distinct, extra))[:k]
        return anchors[torch.argsort(anchors.prod(dim=1), stable=True)].float()
    order = torch.argsort(sizes.prod(dim=1), stable=True)
    picks = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * sizes.shape[0]).long()
    centroids = sizes[order[picks]].clone()
    boxes = _centred(sizes)
    for _ in range(iterations):
        nearest = pairwise_iou(boxes, _centred(centroids)).argmax(dim=1)
        updated = centroids.clone()
        for j in range(k):
            members = sizes[nearest == j]
            if members.shape[0]:
                updated[j] = members.mean(dim=0)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids[torch.argsort(centroids.prod(dim=1), stable=True)].float()


def _conv(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.GroupNorm(groups, cout), nn.SiLU()
    )


class TinyBackbone(nn.Module):
    """The convolutional trunk both heads of :mod:`detloss.detection` share.

    A stem to stride 4 (three 3 x 3 convolutions), one stage of two convolutions per level
    (strides 8, 16, ... doubling), and a top-down path (1 x 1 lateral, upsample,
    concatenate, 3 x 3) like YOLOv3's. GroupNorm instead of BatchNorm: it does not depend on
    the batch, so ``N`` ranks of batch ``B`` compute exactly what one rank of batch ``N B``
    computes (no SyncBatchNorm, which gloo on CPU lacks). Level ``l`` has
    ``channels[l] = 4 width 2^l`` channels.
    """

    def __init__(self, strides: Sequence[int] = (8, 16), width: int = 16, *, where: str = "TinyBackbone"):
        super().__init__()
        strides = tuple(int(s) for s in strides)
        if not strides or strides[0] != 8 or any(strides[i + 1] != 2 * strides[i] for i in range(len(strides) - 1)):
            raise DetLossError.bad_argument(where, "strides", "doubling strides starting at 8", strides)
        self.strides = strides
        c = width
        self.stem = nn.Sequential(_conv(3, c, 2), _conv(c, 2 * c, 2), _conv(2 * c, 2 * c))
        self.channels = [4 * c * 2**i for i in range(len(strides))]
        stages, laterals, fuses = [], [], []
        cin = 2 * c
        for cout in self.channels:
            stages.append(nn.Sequential(_conv(cin, cout, 2), _conv(cout, cout)))
            cin = cout
        for i in range(len(strides) - 1):
            laterals.append(_conv(self.channels[i + 1], self.channels[i] // 2, kernel=1))
            fuses.append(_conv(self.channels[i] + self.channels[i] // 2, self.channels[i]))
        self.stages = nn.ModuleList(stages)
        self.laterals = nn.ModuleList(laterals)
        self.fuses = nn.ModuleList(fuses)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """One feature map per level, ``(B, channels[l], S / s_l, S / s_l)``."""
        x = self.stem(images.contiguous(memory_format=torch.channels_last))
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        for i in range(len(feats) - 2, -1, -1):
            top = nn.functional.interpolate(self.laterals[i](feats[i + 1]), scale_factor=2.0, mode="nearest")
            feats[i] = self.fuses[i](torch.cat((feats[i], top), dim=1))
        return feats


class TinyYOLO(TinyBackbone):
    """A compact CNN with a YOLO head per level (strides 8, 16, ... doubling).

    The trunk of :class:`TinyBackbone` and a 1 x 1 head of ``A (5 + C)`` outputs per level.
    The objectness bias starts at ``-log((1 - pi) / pi)``, ``pi = 0.01`` (Lin et al., ICCV
    2017, Sec. 4.1), the class biases at ``pi = 1 / C``.

    ``anchors`` is ``(L, A, 2)`` in pixels, one row per stride. With ``width=16`` and
    strides ``(8, 16)``: about 0.3 M parameters.

    Example:
        >>> model = TinyYOLO(4, torch.ones(2, 3, 2) * 8, strides=(8, 16))
        >>> model(torch.zeros(2, 3, 64, 64)).shape  # 3 x 8 x 8 + 3 x 4 x 4 slots, 5 + 4 outputs
        torch.Size([2, 240, 9])
    """

    anchors: torch.Tensor

    def __init__(self, num_classes: int, anchors: torch.Tensor, strides: Sequence[int] = (8, 16), width: int = 16):
        super().__init__(strides, width, where="TinyYOLO")
        if anchors.dim() != 3 or anchors.shape[0] != len(self.strides) or anchors.shape[-1] != 2:
            raise DetLossError.bad_argument(
                "TinyYOLO", "anchors", f"shape ({len(self.strides)}, A, 2)", f"shape {tuple(anchors.shape)}"
            )
        self.num_classes = int(num_classes)
        self.register_buffer("anchors", anchors.detach().float().clone())
        a = anchors.shape[1]
        heads = [nn.Conv2d(ch, a * (5 + self.num_classes), 1) for ch in self.channels]
        obj_bias = -math.log((1 - 0.01) / 0.01)
        cls_bias = -math.log(max(self.num_classes - 1, 1)) if self.num_classes > 1 else 0.0
        for head in heads:
            assert head.bias is not None  # Conv2d(bias=True)
            bias = head.bias.detach().view(a, 5 + self.num_classes)
            bias[:, :4] = 0.0
            bias[:, 4] = obj_bias
            bias[:, 5:] = cls_bias
        self.heads = nn.ModuleList(heads)
        self._priors: dict[tuple[int, str], Priors] = {}
        # channels-last: oneDNN's convolutions run about 1.5x faster so on CPU (measured here)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def priors(self, image_size: int) -> Priors:
        """The slots of a square input of ``image_size`` pixels (cached per size and device)."""
        key = (int(image_size), str(self.anchors.device))
        if key not in self._priors:
            self._priors[key] = make_priors(self.anchors, self.strides, int(image_size))
        return self._priors[key]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw predictions ``(B, N, 5 + C)`` for images ``(B, 3, S, S)``."""
        outputs = []
        a = self.anchors.shape[1]
        for feat, head in zip(self.features(images), self.heads):
            out = head(feat)
            b, _, h, w = out.shape
            out = out.view(b, a, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)
            outputs.append(out.reshape(b, a * h * w, 5 + self.num_classes))
        return torch.cat(outputs, dim=1)

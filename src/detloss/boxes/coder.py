"""The R-CNN box-delta encoding (Girshick et al., CVPR 2014, appendix C)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from detloss._checks import check_boxes, check_same_shape
from detloss.errors import DetLossError

__all__ = ["BoxCoder"]

#: Largest log-scale step on decode: log(1000 / 16), as in Faster R-CNN implementations.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    r"""Encode ground-truth boxes as deltas from proposals, and decode deltas back.

    With proposal centre ``(x_a, y_a)``, size ``(w_a, h_a)`` and weights ``(w_x, w_y, w_w, w_h)``
    (R-CNN, Girshick et al. CVPR 2014; Faster R-CNN, Ren et al. NeurIPS 2015):

    .. math::
        t_x = w_x \frac{x - x_a}{w_a},\quad t_y = w_y \frac{y - y_a}{h_a},\quad
        t_w = w_w \log\frac{w}{w_a},\quad t_h = w_h \log\frac{h}{h_a}

    The default weights ``(10, 10, 5, 5)`` are the reciprocals of the usual target standard
    deviations ``(0.1, 0.1, 0.2, 0.2)``. Boxes are ``xyxy``. ``decode`` clamps
    ``t_w / w_w`` and ``t_h / w_h`` at ``scale_clamp`` (``log(1000/16)``) so that huge deltas
    give large but finite boxes. ``encode`` needs positive widths and heights; degenerate
    ones are floored at ``eps`` so the logarithm stays finite.

    Args:
        weights: ``(w_x, w_y, w_w, w_h)``, four positive numbers.
        scale_clamp: the largest ``t_w / w_w`` and ``t_h / w_h`` that ``decode`` exponentiates.
        eps: the smallest width and height ``encode`` takes a logarithm of.

    Example:
        >>> coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        >>> anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> gt = torch.tensor([[5.0, 0.0, 15.0, 20.0]])
        >>> deltas = coder.encode(anchors, gt)
        >>> deltas  # centre moves 5/10 right and 5/10 down; height doubles: log 2 = 0.6931
        tensor([[0.5000, 0.5000, 0.0000, 0.6931]])
        >>> coder.decode(anchors, deltas)
        tensor([[ 5.,  0., 15., 20.]])
    """

    def __init__(
        self,
        weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
        eps: float = 1e-7,
    ) -> None:
        if len(weights) != 4 or not all(isinstance(w, (int, float)) and w > 0 for w in weights):
            raise DetLossError.bad_argument("BoxCoder", "weights", "four positive numbers", tuple(weights))
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"

    def _centres(self, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x1, y1, x2, y2 = boxes.unbind(-1)
        w = (x2 - x1).clamp(min=self.eps)
        h = (y2 - y1).clamp(min=self.eps)
        return x1 + 0.5 * w, y1 + 0.5 * h, w, h

    def encode(self, proposals: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Deltas ``(..., 4)`` that move ``proposals`` onto ``gt`` (both ``xyxy``).

        Args:
            proposals: the reference boxes (anchors, proposals), ``xyxy``.
            gt: the ground-truth boxes to encode, ``xyxy``, ``proposals``'s shape.

        Shape:
            - proposals, gt: ``(*, 4)``; output: ``(*, 4)``, ``(t_x, t_y, t_w, t_h)``.
        """
        check_boxes("BoxCoder.encode", "proposals", proposals)
        check_boxes("BoxCoder.encode", "gt", gt)
        check_same_shape("BoxCoder.encode", "proposals", proposals, "gt", gt)
        xa, ya, wa, ha = self._centres(proposals)
        x, y, w, h = self._centres(gt)
        wx, wy, ww, wh = self.weights
        return torch.stack(
            (wx * (x - xa) / wa, wy * (y - ya) / ha, ww * torch.log(w / wa), wh * torch.log(h / ha)), dim=-1
        )

    def decode(self, proposals: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Boxes ``(..., 4)`` in ``xyxy`` obtained by applying ``deltas`` to ``proposals``.

        Args:
            proposals: the reference boxes, ``xyxy``.
            deltas: ``(t_x, t_y, t_w, t_h)``, ``proposals``'s shape.

        Shape:
            - proposals, deltas: ``(*, 4)``; output: ``(*, 4)`` ``xyxy``.
        """
        check_boxes("BoxCoder.decode", "proposals", proposals)
        check_boxes("BoxCoder.decode", "deltas", deltas)
        check_same_shape("BoxCoder.decode", "proposals", proposals, "deltas", deltas)
        xa, ya, wa, ha = self._centres(proposals)
        wx, wy, ww, wh = self.weights
        dx, dy, dw, dh = deltas.unbind(-1)
        x = xa + dx / wx * wa
        y = ya + dy / wy * ha
        w = wa * torch.exp((dw / ww).clamp(max=self.scale_clamp))
        h = ha * torch.exp((dh / wh).clamp(max=self.scale_clamp))
        return torch.stack((x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h), dim=-1)

"""Batched all-pairs similarity for the costs and assigners, on the one IoU kernel.

:func:`detloss.boxes.pairwise_iou` takes one image, ``(N, 4)`` against ``(M, 4)``. Matching
and assignment want every image of a batch at once, ``(B, N, 4)`` against ``(B, M, 4)``:
the same kernel (:func:`detloss.boxes.iou.box_similarity`) runs on broadcast blocks of
rows, so no image meets another image's boxes (no ``(B N, B M)`` matrix) and memory stays
bounded.
"""

from __future__ import annotations

import torch

from detloss.boxes.convert import to_xyxy
from detloss.boxes.iou import box_similarity

__all__ = ["PAIR_BLOCK", "batched_pairwise"]

#: Pairs (over the whole batch) per block of rows: bounds the kernel's temporaries. A CIoU
#: block keeps about 15 float32 temporaries of this many elements (about 60 MB).
PAIR_BLOCK = 1 << 20


def batched_pairwise(
    boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str, eps: float, box_format: str = "xyxy"
) -> torch.Tensor:
    """Similarity ``kind`` of every pair within each image: ``(B, N, 4)``, ``(B, M, 4)`` -> ``(B, N, M)``.

    Boxes are already checked, in ``box_format`` and one float dtype of at least 32 bits.
    Entry ``[b, i, j]`` is ``aligned_iou(boxes1[b, i], boxes2[b, j], kind, box_format)``.
    """
    # The one place that picks the kernel by box format: rotated formats ("cxcywha", with a
    # fifth coordinate) dispatch here to the rotated pairwise kernel of detloss.boxes.
    boxes1, boxes2 = to_xyxy(boxes1, box_format), to_xyxy(boxes2, box_format)
    batch, n, m = boxes1.shape[0], boxes1.shape[1], boxes2.shape[1]
    rows = max(1, PAIR_BLOCK // max(batch * m, 1))
    if rows >= n:
        return box_similarity(boxes1[:, :, None, :], boxes2[:, None, :, :], kind, eps)[0]
    out = boxes1.new_empty((batch, n, m))
    right = boxes2[:, None, :, :]
    for i in range(0, n, rows):
        out[:, i : i + rows] = box_similarity(boxes1[:, i : i + rows, None, :], right, kind, eps)[0]
    return out

"""Inference: scores, NMS and DIoU-NMS (in torch, batched over classes), detections per image.

NMS keeps the highest-scoring box and removes every box of the same class whose overlap
with it exceeds a threshold, then repeats with the next box left. DIoU-NMS (Zheng et al.,
"Distance-IoU Loss", AAAI 2020, Eq. 13) measures the overlap as ``IoU - rho^2 / c^2``, so
two boxes whose centres are far apart both survive (occluded neighbours); the paper uses
the threshold (its epsilon) 0.45 with YOLOv3. Both run as Cluster-NMS (Zheng et al.,
arXiv 2005.03572, Sec. 4.2): the greedy result computed by a few matrix iterations instead of
one Python step per box; it is exactly the greedy result (tests check it against the loop).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from detloss import DetLossError
from detloss.boxes import pairwise_iou
from detloss.detection.anchor_free import PointPriors, decode_points
from detloss.detection.model import Priors, decode

__all__ = ["NMS_KINDS", "batched_nms", "boxes_and_scores", "postprocess"]

NMS_KINDS = ("nms", "diou_nms")
NmsKind = Literal["nms", "diou_nms"]


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float = 0.45,
    kind: NmsKind = "nms",
) -> torch.Tensor:
    """Indices of the boxes kept, by decreasing score; boxes of different ``idxs`` never
    suppress each other. A box is removed when its IoU (``kind="nms"``) or DIoU
    (``"diou_nms"``) with a kept box of higher score is above ``iou_threshold``.

    Example (three boxes of one class; the second overlaps the first with IoU 0.6):
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.0], [20.0, 0.0, 30.0, 10.0]])
        >>> batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long))
        tensor([0, 2])
        >>> # DIoU: centres (5, 5) and (5, 3) are 2 apart, diagonal^2 = 200: 0.6 - 4/200 = 0.58
        >>> batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long), 0.59, "diou_nms")
        tensor([0, 1, 2])
    """
    if kind not in NMS_KINDS:
        raise DetLossError.bad_argument("batched_nms", "kind", "one of " + ", ".join(map(repr, NMS_KINDS)), repr(kind))
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].float()
    sim = pairwise_iou(b, b, kind="diou" if kind == "diou_nms" else "iou")
    same = idxs[order][:, None] == idxs[order][None, :]
    upper = torch.ones_like(same).triu(diagonal=1)
    # overlap[i, j]: how much the higher-scoring box i overlaps box j (-2: never suppresses)
    overlap = torch.where(same & upper, sim, torch.full_like(sim, -2.0))
    suppressing = overlap
    for _ in range(b.shape[0]):
        kept = suppressing.amax(dim=0) <= iou_threshold
        updated = overlap * kept[:, None] + (-2.0) * (~kept)[:, None]
        if torch.equal(updated, suppressing):
            break
        suppressing = updated
    kept = suppressing.amax(dim=0) <= iou_threshold
    return order[kept]


def boxes_and_scores(raw: torch.Tensor, priors: Priors | PointPriors) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded boxes ``(B, N, 4)`` (``xyxy`` pixels) and class scores ``(B, N, C)`` of either
    head: ``sigmoid(obj) * sigmoid(cls)`` for the YOLOv3 head (:class:`Priors`),
    ``sigmoid(cls)`` for the anchor-free head (:class:`PointPriors`), which has no objectness.

    Example (the anchor-free head, DFL off: one point, distances softplus(0) = 0.693 strides):
        >>> from detloss.detection.anchor_free import make_point_priors
        >>> boxes, scores = boxes_and_scores(torch.zeros(1, 1, 6), make_point_priors((8,), 8, reg_max=None))
        >>> boxes, scores
        (tensor([[[-1.5452, -1.5452,  9.5452,  9.5452]]]), tensor([[[0.5000, 0.5000]]]))
    """
    raw = raw.float()
    if isinstance(priors, PointPriors):
        return decode_points(raw, priors), torch.sigmoid(raw[..., priors.box_channels :])
    return decode(raw, priors), torch.sigmoid(raw[..., 4:5]) * torch.sigmoid(raw[..., 5:])


@torch.no_grad()
def postprocess(
    raw: torch.Tensor,
    priors: Priors | PointPriors,
    *,
    image_size: int,
    score_threshold: float = 0.001,
    nms: NmsKind = "nms",
    iou_threshold: float = 0.45,
    pre_nms_top_k: int = 300,
    max_detections: int = 100,
) -> list[dict[str, Any]]:
    """Detections per image from the raw output ``(B, N, K)`` of either head.

    Every (slot, class) pair is a candidate with the score of :func:`boxes_and_scores`:
    ``sigmoid(obj) * sigmoid(cls)`` for the YOLOv3 head (with ``quality_focal`` or
    ``varifocal`` as objectness loss, ``sigmoid(obj)`` is itself the predicted IoU, so the
    score is IoU-aware), ``sigmoid(cls)`` for the anchor-free head (trained towards the
    assigner's IoU-aware targets). Candidates above ``score_threshold``, at most
    ``pre_nms_top_k`` per image, go through class-wise NMS or DIoU-NMS; the best
    ``max_detections`` are returned as ``{"boxes" (K, 4) xyxy clipped to the image,
    "scores" (K,), "labels" (K,)}``.
    """
    boxes, scores = boxes_and_scores(raw, priors)
    boxes = boxes.clamp(0.0, float(image_size))
    out = []
    num_classes = scores.shape[-1]
    for b in range(raw.shape[0]):
        flat = scores[b].reshape(-1)
        candidates = torch.nonzero(flat > score_threshold).squeeze(1)
        if candidates.numel() > pre_nms_top_k:
            candidates = candidates[torch.topk(flat[candidates], pre_nms_top_k).indices]
        slot, label = candidates // num_classes, candidates % num_classes
        cand_boxes, cand_scores = boxes[b, slot], flat[candidates]
        wide = (cand_boxes[:, 2:] > cand_boxes[:, :2]).all(dim=1)
        cand_boxes, cand_scores, label = cand_boxes[wide], cand_scores[wide], label[wide]
        keep = batched_nms(cand_boxes, cand_scores, label, iou_threshold, nms)[:max_detections]
        out.append({"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": label[keep]})
    return out

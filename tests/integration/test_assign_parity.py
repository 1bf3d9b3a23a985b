"""detloss.assign against ultralytics' own TaskAlignedAssigner and HungarianMatcher, on random batches.

Skipped, with the reason printed, where ultralytics is not installed (``make test``'s venv);
``make integration`` runs it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest
import torch

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="detloss-yolo-"))  # no settings file in ~
pytest.importorskip(
    "ultralytics", reason="ultralytics is not installed: the assigner parity runs under make integration"
)
pytest.importorskip("scipy", reason="scipy is not installed: pip install detloss[assign]")

from ultralytics.models.utils.ops import HungarianMatcher
from ultralytics.utils.tal import TaskAlignedAssigner as UltralyticsTAL

from detloss.assign import MatchingCost, TaskAlignedAssigner, hungarian_match, make_anchors

C = 6


def _dense_batch(seed: int, batch: int, num_gt: int, dtype: torch.dtype, sizes: Any, strides: Any) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    anchors = make_anchors(sizes, strides, dtype=dtype)
    count = anchors.points.shape[0]
    side = float(strides[0] * sizes[0][0])
    ltrb = (torch.rand(batch, count, 4, generator=g, dtype=dtype) * 5 + 0.3) * anchors.strides[:, None]
    boxes = torch.cat([anchors.points - ltrb[..., :2], anchors.points + ltrb[..., 2:]], -1)
    centre = torch.rand(batch, num_gt, 2, generator=g, dtype=dtype) * side * 0.9 + side * 0.05
    size = torch.rand(batch, num_gt, 2, generator=g, dtype=dtype) * side * 0.4 + 4  # some below 16 px
    counts = torch.randint(0, num_gt + 1, (batch,), generator=g)
    counts[0] = num_gt
    mask = torch.arange(num_gt)[None] < counts[:, None]
    return {
        "scores": torch.rand(batch, count, C, generator=g, dtype=dtype),
        "boxes": boxes,
        "anchors": anchors,
        "labels": torch.randint(0, C, (batch, num_gt), generator=g) * mask,
        "gt": torch.cat([centre - size / 2, centre + size / 2], -1) * mask[..., None],  # ultralytics pads with 0
        "mask": mask,
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    ("topk", "alpha", "beta"),
    [(10, 0.5, 6.0), (13, 1.0, 6.0)],  # YOLOv8's and the class defaults (TOOD's)
)
def test_task_aligned_equals_ultralytics(dtype: torch.dtype, seed: int, topk: int, alpha: float, beta: float) -> None:
    p = _dense_batch(seed, 4, 9, dtype, [(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    theirs = UltralyticsTAL(topk=topk, num_classes=C, alpha=alpha, beta=beta, stride=[8, 16, 32])
    labels, boxes, scores, fg, gt_index = theirs(
        p["scores"], p["boxes"], p["anchors"].points, p["labels"][..., None], p["gt"], p["mask"][..., None].to(dtype)
    )
    # ultralytics' rule, its CIoU, its in-box test widening sides below its middle stride (16 px)
    ours = TaskAlignedAssigner(topk, alpha, beta, iou_kind="ciou", rule="ultralytics", min_box_size=16.0)
    r = ours(p["scores"], p["boxes"], p["anchors"], p["labels"], p["gt"], p["mask"])
    assert fg.any()
    assert torch.equal(r.fg_mask, fg)
    assert torch.equal(r.gt_index[fg], gt_index[fg])
    assert torch.equal(r.labels[fg], labels[fg])
    assert torch.equal(r.boxes[fg], boxes[fg])
    tol = 1e-5 if dtype == torch.float32 else 1e-7  # CIoU's eps sits in other places (h + eps)
    torch.testing.assert_close(r.scores, scores.to(r.scores.dtype), rtol=tol, atol=tol)


def test_yolov8_preset_equals_ultralytics_at_640_pixels() -> None:
    p = _dense_batch(3, 2, 30, torch.float32, [(80, 80), (40, 40), (20, 20)], [8, 16, 32])
    theirs = UltralyticsTAL(topk=10, num_classes=C, alpha=0.5, beta=6.0, stride=[8, 16, 32])
    _, _, scores, fg, gt_index = theirs(
        p["scores"], p["boxes"], p["anchors"].points, p["labels"][..., None], p["gt"], p["mask"][..., None].float()
    )
    r = TaskAlignedAssigner.yolov8()(p["scores"], p["boxes"], p["anchors"], p["labels"], p["gt"], p["mask"])
    assert int(fg.sum()) > 100
    assert torch.equal(r.fg_mask, fg) and torch.equal(r.gt_index[fg], gt_index[fg])
    torch.testing.assert_close(r.scores, scores, rtol=1e-5, atol=1e-5)


def test_no_objects_like_ultralytics() -> None:
    p = _dense_batch(0, 2, 1, torch.float32, [(4, 4)], [8])
    theirs = UltralyticsTAL(topk=10, num_classes=C, stride=[8])
    empty = torch.zeros(2, 0, 4)
    _, _, scores, fg, _ = theirs(
        p["scores"], p["boxes"], p["anchors"].points, torch.zeros(2, 0, 1), empty, torch.zeros(2, 0, 1)
    )
    r = TaskAlignedAssigner.yolov8()(
        p["scores"],
        p["boxes"],
        p["anchors"],
        torch.zeros(2, 0, dtype=torch.long),
        empty,
        torch.zeros(2, 0, dtype=torch.bool),
    )
    assert torch.equal(r.fg_mask, fg) and torch.equal(r.scores, scores)


def _detr_batch(seed: int, groups: list[int], queries: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    batch, total = len(groups), sum(groups)
    return {
        "logits": torch.randn(batch, queries, C, generator=g) * 2,
        "boxes": torch.cat(
            [torch.rand(batch, queries, 2, generator=g), torch.rand(batch, queries, 2, generator=g) * 0.4 + 0.02], -1
        ),
        "gt_boxes": torch.cat([torch.rand(total, 2, generator=g), torch.rand(total, 2, generator=g) * 0.4 + 0.02], -1),
        "gt_cls": torch.randint(0, C, (total,), generator=g),
    }


def _padded(flat: torch.Tensor, groups: list[int]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(flat.split(groups)), batch_first=True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        (dict(cost_gain={"class": 2, "bbox": 5, "giou": 2}, use_fl=True), MatchingCost.dino()),
        (dict(cost_gain={"class": 1, "bbox": 5, "giou": 2}, use_fl=False), MatchingCost.detr()),
    ],
    ids=["focal-dino", "softmax-detr"],
)
def test_hungarian_matcher_equals_ultralytics(seed: int, theirs: dict[str, Any], ours: MatchingCost) -> None:
    groups = [7, 0, 12, 3]  # image 2: more objects than queries
    queries = 10
    p = _detr_batch(seed, groups, queries)
    expected = HungarianMatcher(**theirs)(p["boxes"], p["logits"], p["gt_boxes"], p["gt_cls"], groups)
    labels, target = _padded(p["gt_cls"], groups), _padded(p["gt_boxes"], groups)
    cost, bad = ours(p["logits"], p["boxes"], labels, target, groups)
    b, q, t = hungarian_match(cost, groups)
    assert int(bad) == 0
    offsets = [0, *torch.tensor(groups).cumsum(0).tolist()]
    for image, (rows, cols) in enumerate(expected):
        mine = b == image
        assert q[mine].tolist() == rows.tolist()
        assert (t[mine] + offsets[image]).tolist() == cols.tolist()

"""COCO mAP on hand-made predictions whose AP is known, and NMS against a plain greedy loop."""

from __future__ import annotations

import pytest
import torch

from detloss.boxes import pairwise_iou
from detloss.detection.evaluate import coco_map, to_coco_detections
from detloss.detection.postprocess import batched_nms

# Two images, two categories, five objects of several sizes (areas below 32^2: all "small"
# except the 40 x 30 one, "medium"). bbox = [left, top, width, height].
GT_BOXES = [
    (1, 1, [10, 10, 20, 10]),
    (1, 2, [40, 40, 8, 16]),
    (1, 1, [60, 5, 40, 30]),
    (2, 2, [5, 5, 12, 12]),
    (2, 1, [30, 30, 6, 20]),
]


def ground_truth() -> dict:
    return {
        "images": [{"id": 1, "width": 120, "height": 100}, {"id": 2, "width": 120, "height": 100}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (im, c, b) in enumerate(GT_BOXES)
        ],
    }


def det(image: int, cat: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image, "category_id": cat, "bbox": bbox, "score": score}


def test_perfect_predictions_give_one() -> None:
    m = coco_map(ground_truth(), [det(im, c, b, 0.9 - 0.1 * i) for i, (im, c, b) in enumerate(GT_BOXES)])
    for key in ("AP", "AP50", "AP75", "APs", "APm"):
        assert m[key] == pytest.approx(1.0, abs=1e-9)
    assert m["APl"] is None  # no object above 96^2 pixels


def test_no_predictions_give_zero() -> None:
    m = coco_map(ground_truth(), [])
    assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["AP75"] == 0.0


def one_object() -> dict:
    return {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 100, "iscrowd": 0},
        ],
    }


def test_half_right_correct_one_ranked_first() -> None:
    # One of the two objects found (score 0.9), one false positive (0.8) elsewhere.
    # Precision is 1 up to recall 1/2, recall never passes 1/2: of COCO's 101 recall points
    # 0, 0.01, ..., 1 the 51 points 0..0.50 have precision 1, the rest 0: AP = 51/101.
    dets = [det(1, 1, [0, 0, 10, 10], 0.9), det(1, 1, [80, 0, 10, 10], 0.8)]
    m = coco_map(one_object(), dets)
    for key in ("AP", "AP50", "AP75"):
        assert m[key] == pytest.approx(51 / 101, abs=1e-9)  # 0.504950


def test_half_right_false_positive_ranked_first() -> None:
    # The false positive first: precision at recall 1/2 is 1/2 (interpolated over r <= 1/2): AP = 0.5 * 51/101.
    dets = [det(1, 1, [0, 0, 10, 10], 0.8), det(1, 1, [80, 0, 10, 10], 0.9)]
    m = coco_map(one_object(), dets)
    assert m["AP50"] == pytest.approx(0.5 * 51 / 101, abs=1e-9)  # 0.252475


def test_localisation_quality_across_thresholds() -> None:
    # Both objects found with IoU 0.625 (10 x 10 against the box shifted by 10 * 3/13 in x):
    # intersection 10 (10 - d), union 10 (10 + d); (10 - d) / (10 + d) = 0.625 for d = 30/13.
    # It matches at the thresholds 0.50, 0.55, 0.60 (3 of 10): AP50 = 1, AP75 = 0, AP = 0.3.
    d = 30 / 13
    dets = [det(1, 1, [d, 0, 10, 10], 0.9), det(1, 1, [50 + d, 50, 10, 10], 0.8)]
    m = coco_map(one_object(), dets)
    assert m["AP50"] == pytest.approx(1.0, abs=1e-9)
    assert m["AP75"] == pytest.approx(0.0, abs=1e-9)
    assert m["AP"] == pytest.approx(0.3, abs=1e-9)


def test_to_coco_detections_maps_back_to_original_pixels() -> None:
    boxes = torch.tensor([[8.0, 4.0, 16.0, 12.0]])
    pred = [{"boxes": boxes, "scores": torch.tensor([0.7]), "labels": torch.tensor([0])}]
    # the image was resized by 0.5 in x and 2 in y: original box x 16..32, y 2..6
    records = to_coco_detections(pred, [{"image_id": 3, "scale": torch.tensor([0.5, 2.0, 0.5, 2.0])}], [11])
    assert records == [{"image_id": 3, "category_id": 11, "bbox": [16.0, 2.0, 16.0, 4.0], "score": 0.7}]


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, thr: float, kind: str) -> list[int]:
    """The textbook loop: take the best box left, drop same-class boxes overlapping it above thr."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(
            idxs[k] != idxs[i] or pairwise_iou(boxes[k : k + 1].double(), boxes[i : i + 1].double(), kind)[0, 0] <= thr
            for k in kept
        ):
            kept.append(i)
    return kept


@pytest.mark.parametrize("kind", ["nms", "diou_nms"])
def test_cluster_nms_equals_greedy(kind: str) -> None:
    g = torch.Generator().manual_seed(7)
    for _ in range(40):
        n = int(torch.randint(1, 40, (1,), generator=g))
        centre = torch.rand(n, 2, generator=g) * 40
        size = torch.rand(n, 2, generator=g) * 20 + 1
        boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1)
        scores = torch.rand(n, generator=g)
        idxs = torch.randint(0, 3, (n,), generator=g)
        thr = float(torch.rand(1, generator=g)) * 0.7
        expected = greedy_nms(boxes, scores, idxs, thr, "diou" if kind == "diou_nms" else "iou")
        assert batched_nms(boxes, scores, idxs, thr, kind).tolist() == expected  # type: ignore[arg-type]


def test_diou_nms_keeps_an_occluded_neighbour() -> None:
    # Two side-by-side objects, IoU 1/3 (10 x 10 boxes 5 apart): NMS at 0.3 merges them,
    # DIoU-NMS keeps both (DIoU = 1/3 - 25/(15^2 + 10^2) = 0.2564).
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    scores, idxs = torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long)
    assert batched_nms(boxes, scores, idxs, 0.3, "nms").tolist() == [0]
    assert batched_nms(boxes, scores, idxs, 0.3, "diou_nms").tolist() == [0, 1]

"""Synthetic scenes (deterministic, exact boxes) and the COCO loader (good and bad files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detloss import DetLossError
from detloss.detection.data import CocoDetection, SyntheticScenes, make_scene
from detloss.detection.model import kmeans_anchors


def test_scenes_are_deterministic_and_boxes_are_tight() -> None:
    a = make_scene(np.random.default_rng([5, 0, 3]), 64)
    b = make_scene(np.random.default_rng([5, 0, 3]), 64)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    counts = []
    for i in range(30):
        image, boxes, labels = make_scene(np.random.default_rng([1, 0, i]), 64)
        counts.append(len(boxes))
        assert image.shape == (64, 64, 3) and 1 <= len(boxes) <= 8 and len(labels) == len(boxes)
        assert (boxes[:, 2:] - boxes[:, :2] >= 2).all() and (boxes >= 0).all() and (boxes <= 64).all()
        assert float(boxes[:, 0].min()) == float(np.floor(boxes[:, 0].min()))  # pixel-aligned edges
    assert max(counts) > min(counts)


def test_dataset_extends_and_splits_differ() -> None:
    small = SyntheticScenes(3, 64, seed=2, split="val")
    large = SyntheticScenes(5, 64, seed=2, split="val")
    train = SyntheticScenes(3, 64, seed=2, split="train")
    assert torch.equal(small.images, large.images[:3])
    assert not torch.equal(small.images, train.images)
    image, _ = large[4]
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    gt = large.coco_ground_truth()
    assert len(gt["images"]) == 5 and {c["id"] for c in gt["categories"]} == {1, 2, 3, 4}
    assert len(gt["annotations"]) == sum(len(b) for b in large.boxes)


def test_kmeans_anchors_cover_the_sizes() -> None:
    sizes = SyntheticScenes(200, 64, seed=0).box_sizes()
    anchors = kmeans_anchors(sizes, 6)
    assert anchors.shape == (6, 2)
    areas = anchors.prod(dim=1)
    assert torch.all(areas[1:] >= areas[:-1])  # sorted by area
    assert areas[0] < 40 and areas[-1] > 400  # tiny to large objects
    assert torch.equal(anchors, kmeans_anchors(sizes, 6))  # deterministic


def write_coco(tmp_path: Path, *, images: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (40, 80, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    data = {
        "images": [{"id": 10 + i, "file_name": f"im{i}.png", "width": 80, "height": 40} for i in range(images)],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [8, 4, 40, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 16, 8], "iscrowd": 1},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [20, 10, 20, 10]},
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_loader_resizes_and_keeps_original_for_evaluation(tmp_path: Path) -> None:
    ds = CocoDetection(write_coco(tmp_path), image_size=32)
    assert ds.category_ids == (3, 7) and ds.class_names == ("dog", "cat") and len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 32, 32)
    # 80 x 40 -> 32 x 32: x scaled by 0.4, y by 0.8; crowd box not trained on; cat = label 1
    torch.testing.assert_close(target["boxes"], torch.tensor([[3.2, 3.2, 19.2, 19.2]]))
    assert target["labels"].tolist() == [1] and target["image_id"] == 10
    gt = ds.coco_ground_truth()
    assert gt["annotations"][0]["bbox"] == [8.0, 4.0, 40.0, 20.0]
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1, 0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid json"),
        ("[1, 2]", "expected a json object"),
        ('{"images": [], "annotations": []}', "categories"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}', "malformed image"),
        (
            '{"images": [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}], "categories": [{"id": 1}],'
            ' "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]}',
            "annotation 0: bbox",
        ),
        (
            '{"images": [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}], "categories": [{"id": 1}],'
            ' "annotations": [{"image_id": 99, "category_id": 1, "bbox": [1, 2, 3, 4]}]}',
            "annotation 0 is malformed",
        ),
    ],
)
def test_malformed_json_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DetLossError, match=message) as info:
        CocoDetection(path)
    assert "bad.json" in str(info.value)


def test_missing_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DetLossError, match=r"missing\.json.*not found"):
        CocoDetection(tmp_path / "missing.json")
    path = write_coco(tmp_path)
    (tmp_path / "im1.png").write_bytes(b"this is not a png")
    with pytest.raises(DetLossError, match=r"im1\.png.*cannot be read as an image"):
        CocoDetection(path)
    (tmp_path / "im1.png").unlink()
    with pytest.raises(DetLossError, match=r"im1\.png.*image not found"):
        CocoDetection(path)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DetLossError, match=r"binary\.json"):
        CocoDetection(tmp_path / "binary.json")


def test_truncated_image_fails_when_read_naming_the_file(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    data = (tmp_path / "im0.png").read_bytes()
    (tmp_path / "im0.png").write_bytes(data[: len(data) // 2])  # the header opens, the pixels do not
    ds = CocoDetection(path, image_size=32)
    with pytest.raises(DetLossError, match=r"im0\.png"):
        ds[0]

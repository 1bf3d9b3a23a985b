"""Datasets on disk: YOLO (ultralytics' layout) and COCO, written, read back, converted, refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from detloss import DetLossError
from detloss.detection.data import SHAPE_CLASSES, CocoDetection, SyntheticScenes, YoloDetection
from detloss.detection.formats import coco_annotation_file, label_file

SIZE = 32


def xyxy_in_original_pixels(dataset: object, index: int) -> torch.Tensor:
    """Training boxes of image ``index`` mapped back to the image's own pixels."""
    _, target = dataset[index]  # type: ignore[index]
    return target["boxes"] / target["scale"]


@pytest.fixture(scope="module")
def scenes() -> dict[str, SyntheticScenes]:
    return {
        "train": SyntheticScenes(6, SIZE, seed=3, split="train"),
        "val": SyntheticScenes(3, SIZE, seed=3, split="val"),
    }


def test_yolo_export_is_ultralytics_layout_and_reads_back(tmp_path: Path, scenes: dict[str, SyntheticScenes]) -> None:
    for ds in scenes.values():
        done = ds.export(tmp_path, "yolo")
        assert done.images == len(ds) and done.boxes == sum(len(b) for b in ds.boxes) and done.skipped == 0
    data = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert data == {
        "path": str(tmp_path.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(SHAPE_CLASSES)),
    }
    # one label file per image, `class cx cy w h` normalised by the image size (here 32 x 32)
    for split, ds in scenes.items():
        assert len(list((tmp_path / "images" / split).glob("*.png"))) == len(ds)
        for i, (boxes, labels) in enumerate(zip(ds.boxes, ds.labels)):
            rows = [line.split() for line in (tmp_path / "labels" / split / f"{i:06d}.txt").read_text().splitlines()]
            assert [int(r[0]) for r in rows] == labels.tolist()
            numbers = np.array([[float(v) for v in r[1:]] for r in rows]).reshape(-1, 4)
            b = boxes.double().numpy()
            expected = (
                np.stack(
                    ((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), axis=1
                )
                / SIZE
            )
            np.testing.assert_allclose(numbers, expected, atol=5e-7)
        back = YoloDetection(tmp_path / "data.yaml", split=split, image_size=SIZE)
        assert len(back) == len(ds) and back.class_names == SHAPE_CLASSES and back.num_classes == 4
        for i in range(len(ds)):
            image, target = back[i]
            assert torch.equal((image * 255).round().to(torch.uint8), ds.images[i])  # PNG is lossless
            torch.testing.assert_close(target["boxes"], ds.boxes[i], atol=SIZE * 1e-6, rtol=0)
            assert torch.equal(target["labels"], ds.labels[i])
    # the folder itself is accepted as well as its data.yaml
    assert len(YoloDetection(tmp_path, split="val", image_size=SIZE)) == 3


def test_coco_export_reads_back_with_the_same_ground_truth(tmp_path: Path, scenes: dict[str, SyntheticScenes]) -> None:
    ds = scenes["train"]
    done = ds.export(tmp_path, "coco")
    assert done.path == coco_annotation_file(tmp_path, "train") == tmp_path / "annotations" / "instances_train.json"
    back = CocoDetection(done.path, tmp_path / "images" / "train", image_size=SIZE)
    assert back.category_ids == (1, 2, 3, 4) and back.class_names == SHAPE_CLASSES
    original, read = ds.coco_ground_truth(), back.coco_ground_truth()
    assert [a["bbox"] for a in read["annotations"]] == [a["bbox"] for a in original["annotations"]]
    assert [a["category_id"] for a in read["annotations"]] == [a["category_id"] for a in original["annotations"]]
    for i in range(len(ds)):
        image, target = back[i]
        assert torch.equal((image * 255).round().to(torch.uint8), ds.images[i])
        torch.testing.assert_close(target["boxes"], ds.boxes[i])


def write_coco_with_crowd(folder: Path) -> Path:
    """Two images of different sizes; a crowd region, a box leaving the image, a zero-width box."""
    folder.mkdir(parents=True)
    Image.fromarray(np.full((50, 100, 3), 90, dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(np.full((80, 40, 3), 200, dtype=np.uint8)).save(folder / "tall.jpg")
    data = {
        "images": [
            {"id": 5, "file_name": "wide.png", "width": 100, "height": 50},
            {"id": 9, "file_name": "tall.jpg", "width": 40, "height": 80},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [10, 5, 30, 20], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 16, 8], "iscrowd": 1},
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [30, 60, 20, 40]},  # leaves the image: clipped
            {"id": 4, "image_id": 9, "category_id": 7, "bbox": [5, 5, 0, 10]},  # zero width
        ],
    }
    path = folder / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_to_yolo_to_coco(tmp_path: Path) -> None:
    coco = CocoDetection(write_coco_with_crowd(tmp_path / "src"), image_size=SIZE)
    done = coco.export(tmp_path / "yolo", "yolo", split="train")
    assert (done.images, done.boxes, done.skipped) == (2, 2, 2)  # the crowd region and the zero-width box
    out = tmp_path / "yolo"
    assert (out / "images" / "train" / "tall.jpg").read_bytes() == (tmp_path / "src" / "tall.jpg").read_bytes()
    # categories sorted by id: dog (3) is class 0, cat (7) class 1
    assert (out / "labels" / "train" / "wide.txt").read_text() == "1 0.250000 0.300000 0.300000 0.400000\n"
    # [30, 60, 20, 40] in a 40 x 80 image is clipped to x 30..40, y 60..80: centre (35, 70), size 10 x 20
    assert (out / "labels" / "train" / "tall.txt").read_text() == "0 0.875000 0.875000 0.250000 0.250000\n"
    yolo = YoloDetection(done.path, split="train", image_size=SIZE)
    assert yolo.class_names == ("dog", "cat")
    again = yolo.export(tmp_path / "coco", "coco")
    back = CocoDetection(again.path, tmp_path / "coco" / "images" / "train")
    boxes = [a["bbox"] for a in back.coco_ground_truth()["annotations"]]
    np.testing.assert_allclose(np.array(boxes), [[30, 60, 10, 20], [10, 5, 30, 20]], atol=1e-4)  # tall.jpg first
    assert back.category_ids == (1, 2) and back.class_names == ("dog", "cat")


def make_yolo(root: Path, files: dict[str, str], yaml_text: str) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith((".png", ".jpg")):
            w, h = (int(v) for v in text.split("x"))
            Image.new("RGB", (w, h), (120, 30, 200)).save(path)
        else:
            path.write_text(text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml_text)
    return root / "data.yaml"


def test_a_hand_written_yolo_dataset(tmp_path: Path) -> None:
    data = make_yolo(
        tmp_path / "set",
        {
            "images/train/a.png": "200x100",
            "images/train/sub/b.jpg": "50x40",
            "images/train/c.png": "64x64",  # no label file: an image without objects
            "labels/train/a.txt": "0 0.5 0.5 0.2 0.4\n\n2 0.1 0.9 0.1 0.2\n",
            "labels/train/sub/b.txt": "1 0.2 0.25 0.6 0.25 0.6 0.75\n",  # a triangle: its extent
            "images/val/d.png": "10x10",
            "labels/val/d.txt": "",
        },
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: person\n  1: car\n  2: dog\n",
    )
    ds = YoloDetection(data, split="train", image_size=32)
    assert ds.class_names == ("person", "car", "dog") and ds.category_ids == (1, 2, 3) and len(ds) == 3
    gt = ds.coco_ground_truth()
    assert [im["file_name"] for im in gt["images"]] == [
        "images/train/a.png",
        "images/train/c.png",
        "images/train/sub/b.jpg",
    ]
    assert [(im["width"], im["height"]) for im in gt["images"]] == [(200, 100), (64, 64), (50, 40)]
    # a.png, 200 x 100: (0.5, 0.5, 0.2, 0.4) -> left 80, top 30, 40 x 40; (0.1, 0.9, 0.1, 0.2) -> 10, 80, 20 x 20
    # b.jpg, 50 x 40: x in [0.2, 0.6], y in [0.25, 0.75] -> left 10, top 10, 20 x 20
    bboxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in gt["annotations"]]
    expected = [(1, 1, [80, 30, 40, 40]), (1, 3, [10, 80, 20, 20]), (3, 2, [10, 10, 20, 20])]
    assert [(i, c) for i, c, _ in bboxes] == [(i, c) for i, c, _ in expected]
    np.testing.assert_allclose([b for _, _, b in bboxes], [b for _, _, b in expected], atol=1e-9)
    _, target = ds[0]  # 200 x 100 resized to 32 x 32: x by 0.16, y by 0.32
    torch.testing.assert_close(target["boxes"], torch.tensor([[12.8, 9.6, 19.2, 22.4], [1.6, 25.6, 4.8, 32.0]]))
    assert target["labels"].tolist() == [0, 2]
    assert ds[1][1]["boxes"].shape == (0, 4)
    assert len(YoloDetection(data, split="val")) == 1


def test_yolo_split_lists_and_names_forms(tmp_path: Path) -> None:
    data = make_yolo(
        tmp_path,
        {"images/x/a.png": "8x8", "labels/x/a.txt": "0 0.5 0.5 0.5 0.5\n", "images/y/b.png": "8x8"},
        "train: [images/x, images/y]\nnc: 1\n",
    )
    ds = YoloDetection(data, split="train")
    assert len(ds) == 2 and ds.class_names == ("class_0",)
    (tmp_path / "list.txt").write_text("./images/y/b.png\n./images/x/a.png\n")
    data.write_text("train: list.txt\nval: list.txt\nnames: [thing]\n")
    assert [r["file_name"] for r in YoloDetection(data, split="val").records] == ["images/x/a.png", "images/y/b.png"]


LABEL_ERRORS = [
    ("0 0.5 0.5 0.2\n", r"line 1 \('0 0.5 0.5 0.2'\): expected `class cx cy w h`"),
    ("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 x\n", "line 2 .*expected numbers"),
    ("3 0.5 0.5 0.2 0.2\n", r"class expected an integer in \[0, 2\)"),
    ("0.5 0.5 0.5 0.2 0.2\n", "class expected an integer"),
    ("0 50 40 20 20\n", r"normalised to \[0, 1\]"),
    ("0 0.5 0.5 -0.005 0.2\n", "width and height expected >= 0"),
    ("0 nan 0.5 0.2 0.2\n", r"normalised to \[0, 1\]"),
]


@pytest.mark.parametrize(("content", "message"), LABEL_ERRORS, ids=[m for _, m in LABEL_ERRORS])
def test_a_bad_label_file_is_named_with_its_line(tmp_path: Path, content: str, message: str) -> None:
    data = make_yolo(
        tmp_path,
        {"images/train/a.png": "8x8", "labels/train/a.txt": content},
        "train: images/train\nnames: [a, b]\n",
    )
    with pytest.raises(DetLossError, match=message) as info:
        YoloDetection(data)
    assert str(tmp_path / "labels" / "train" / "a.txt") in str(info.value)


YAML_ERRORS = [
    ("train: [images/train\n", "is not valid yaml"),
    ("- just\n- a list\n", "expected a yaml mapping"),
    ("train: images/train\n", "`names`.*or `nc`"),
    ("train: images/train\nnames: {0: a, 2: b}\n", r"`names` keys expected 0..1"),
    ("train: images/train\nnames: [a, b]\nnc: 3\n", "`nc` is 3 but `names` has 2"),
    ("train: images/nowhere\nnames: [a]\n", "does not exist"),
    ("train: images/empty\nnames: [a]\n", "no images"),
    ("train: images/train\nval: images/train\nnames: [a]\n", None),  # fine: a control
    ("val: images/train\nnames: [a]\n", r"has no `train` split \(it has: val\)"),
]


@pytest.mark.parametrize(("content", "message"), YAML_ERRORS, ids=[str(m) for _, m in YAML_ERRORS])
def test_a_bad_data_yaml_is_named(tmp_path: Path, content: str, message: str | None) -> None:
    (tmp_path / "images" / "empty").mkdir(parents=True)
    data = make_yolo(tmp_path, {"images/train/a.png": "8x8", "labels/train/a.txt": "0 0.5 0.5 0.5 0.5\n"}, content)
    if message is None:
        assert len(YoloDetection(data)) == 1
        return
    with pytest.raises(DetLossError, match=message) as info:
        YoloDetection(data)
    assert str(data) in str(info.value)


def test_images_without_any_label_file_are_refused(tmp_path: Path) -> None:
    data = make_yolo(
        tmp_path, {"images/train/a.png": "8x8", "images/train/b.png": "8x8"}, "train: images/train\nnc: 1\n"
    )
    with pytest.raises(DetLossError, match=r"no label files for its 2 images.*labels/train/a\.txt"):
        YoloDetection(data)


def test_missing_yaml_folder_without_yaml_and_broken_image(tmp_path: Path) -> None:
    with pytest.raises(DetLossError, match=r"nothing\.yaml.*not found"):
        YoloDetection(tmp_path / "nothing.yaml")
    (tmp_path / "images").mkdir()
    with pytest.raises(DetLossError, match=r"is a folder with no data\.yaml"):
        YoloDetection(tmp_path)
    data = make_yolo(tmp_path, {"labels/train/a.txt": "0 0.5 0.5 0.5 0.5\n"}, "train: images/train\nnc: 1\n")
    (tmp_path / "images" / "train").mkdir()
    (tmp_path / "images" / "train" / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(DetLossError, match=r"a\.png.*cannot be read as an image"):
        YoloDetection(data)


def test_export_refuses_what_it_would_mix_or_cannot_name(tmp_path: Path, scenes: dict[str, SyntheticScenes]) -> None:
    ds = scenes["val"]
    ds.export(tmp_path, "yolo")
    with pytest.raises(DetLossError, match="`folder` expected a folder without a 'val' split"):
        ds.export(tmp_path, "yolo")
    with pytest.raises(DetLossError, match="`format` expected one of 'yolo', 'coco'"):
        ds.export(tmp_path / "other", "voc")
    with pytest.raises(DetLossError, match="`split`"):
        ds.export(tmp_path / "other", "yolo", split="../up")
    coco = CocoDetection(write_coco_with_crowd(tmp_path / "src"))
    with pytest.raises(DetLossError, match=r"CocoDetection\.export.*`split`"):
        coco.export(tmp_path / "c", "coco")  # a COCO json does not say which split it is
    other = make_yolo(tmp_path / "foreign", {}, "train: images/train\nnames: [a]\n")
    with pytest.raises(DetLossError, match="holds classes"):
        ds.export(other.parent, "yolo")


def test_label_file_follows_the_last_images_folder() -> None:
    assert label_file(Path("/d/images/x/images/train/a.b.png")) == Path("/d/images/x/labels/train/a.b.txt")
    assert label_file(Path("flat/a.jpg")) == Path("flat/a.txt")


def test_convert_dataset_command_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from detloss.cli import main

    def cli(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as code:
            main(list(args))
        out, err = capsys.readouterr()
        return int(code.value.code or 0), out, err

    # no data options: the synthetic scenes train would use; to YOLO by default
    code, out, err = cli("convert-dataset", "--out", str(tmp_path / "y"), "--train-images", "5", "--val-images", "2")
    assert code == 0, err
    assert out.splitlines()[0].startswith("train: 5 images,") and str(tmp_path / "y" / "data.yaml") in out
    code, out, err = cli("convert-dataset", "--data", str(tmp_path / "y" / "data.yaml"), "--out", str(tmp_path / "c"))
    assert code == 0, err  # YOLO -> COCO by default
    train_json, val_json = (coco_annotation_file(tmp_path / "c", s) for s in ("train", "val"))
    back = []
    for split, json_file in (("train", train_json), ("val", val_json)):
        back += [
            "--" + split + "-json",
            str(json_file),
            "--" + split + "-image-dir",
            str(tmp_path / "c" / "images" / split),
        ]
    code, out, err = cli("convert-dataset", *back, "--out", str(tmp_path / "y2"))
    assert code == 0, err  # COCO -> YOLO by default: the label files of the first export, to their rounding
    for split in ("train", "val"):
        for label in (tmp_path / "y" / "labels" / split).glob("*.txt"):
            first = np.loadtxt(label, ndmin=2)
            again = np.loadtxt(tmp_path / "y2" / "labels" / split / label.name, ndmin=2)
            assert first.shape == again.shape and np.array_equal(first[:, 0], again[:, 0])
            np.testing.assert_allclose(again[:, 1:], first[:, 1:], atol=2e-6)  # 6 decimals, twice
    code, _, err = cli("convert-dataset", "--data", str(tmp_path / "y"), "--out", str(tmp_path / "y2"))
    assert code == 2 and "`--out`" in err and "empty folder" in err
    code, _, err = cli("convert-dataset", "--to", "voc", "--out", str(tmp_path / "v"), "--train-images", "1")
    assert code == 2 and "`--to`" in err

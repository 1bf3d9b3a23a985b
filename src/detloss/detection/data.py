"""Detection data: deterministic synthetic scenes, COCO and YOLO loaders, and the collate function.

Every dataset returns ``(image, target)`` with ``image`` a float tensor ``(3, S, S)`` in
``[0, 1]`` (``S`` the model's input size) and ``target`` a dict:

- ``"boxes"``: ``(n, 4)`` float32, ``xyxy`` in input pixels (``0 <= x1 < x2 <= S``);
- ``"labels"``: ``(n,)`` int64 in ``[0, num_classes)``;
- ``"image_id"``: the id used in :meth:`coco_ground_truth`;
- ``"scale"``: ``(4,)`` float32, input pixels per original pixel along ``x, y, x, y``, so
  that ``boxes / scale`` are boxes in the original image (what COCO evaluation needs).

Each dataset also has ``num_classes``, ``class_names``, ``category_ids`` (label -> COCO
category id), ``image_size``, :meth:`box_sizes` (the widths and heights of every training
box, for the k-means anchors) and :meth:`coco_ground_truth` (a COCO-format dict in original
pixels for :func:`detloss.detection.evaluate.coco_map`) and :meth:`~DetectionDataset.export`,
which writes it as a YOLO or COCO dataset on disk (the layouts are in
:mod:`detloss.detection.formats`).
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detloss import DetLossError
from detloss.detection.formats import Exported, bad_file, copy_image, write_dataset

__all__ = [
    "SHAPE_CLASSES",
    "make_scene",
    "SyntheticScenes",
    "CocoDetection",
    "YoloDetection",
    "collate",
    "DetectionDataset",
]

#: The classes of the synthetic scenes (label = position in this tuple).
SHAPE_CLASSES: tuple[str, ...] = ("rectangle", "ellipse", "triangle", "cross")
#: Streams of :func:`numpy.random.default_rng` per split, so train and val never share an image.
_SPLITS = {"train": 0, "val": 1, "test": 2}


# --------------------------------------------------------------------------------------
# Synthetic scenes
# --------------------------------------------------------------------------------------


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion by a 3 x 3 cross, ``steps`` times (outside the array counts as empty)."""
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1)
        out = (
            padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        )
    return out


def _shape_mask(
    kind: str, cx: float, cy: float, w: float, h: float, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Pixels of the image whose centre lies inside the shape (a boolean ``(size, size)``)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    u, v = xs - cx, ys - cy
    if kind == "rectangle":
        return (np.abs(u) <= w / 2) & (np.abs(v) <= h / 2)
    if kind == "ellipse":
        return (u / (w / 2)) ** 2 + (v / (h / 2)) ** 2 <= 1.0
    if kind == "cross":
        bar = float(rng.uniform(0.25, 0.45))
        horizontal = (np.abs(u) <= w / 2) & (np.abs(v) <= max(h * bar, 1.0) / 2)
        vertical = (np.abs(u) <= max(w * bar, 1.0) / 2) & (np.abs(v) <= h / 2)
        return horizontal | vertical
    # triangle: base on one side of the box, apex anywhere on the opposite side
    apex = float(rng.uniform(-0.5, 0.5))
    if rng.random() < 0.5:  # base at the bottom or the top
        sign = 1.0 if rng.random() < 0.5 else -1.0
        pts = [(-w / 2, sign * h / 2), (w / 2, sign * h / 2), (apex * w, -sign * h / 2)]
    else:  # base at the left or the right
        sign = 1.0 if rng.random() < 0.5 else -1.0
        pts = [(sign * w / 2, -h / 2), (sign * w / 2, h / 2), (-sign * w / 2, apex * h)]
    inside = np.ones_like(u, dtype=bool)
    positive = np.ones_like(u, dtype=bool)
    for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1]):
        cross = (bx - ax) * (v - ay) - (by - ay) * (u - ax)
        inside &= cross >= 0
        positive &= cross <= 0
    return inside | positive


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured background: a colour gradient plus two random sinusoidal gratings."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0.15, 0.85, size=3).astype(np.float32)
    slope = rng.uniform(-0.25, 0.25, size=(2, 3)).astype(np.float32)
    img = base + xs[..., None] * slope[0] + ys[..., None] * slope[1]
    for _ in range(2):
        freq = rng.uniform(2.0, 14.0)
        angle = rng.uniform(0, math.pi)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * freq * (xs * math.cos(angle) + ys * math.sin(angle)) + phase)
        amp = rng.uniform(0.03, 0.12, size=3).astype(np.float32)
        img = img + wave[..., None] * amp
    return img


def make_scene(
    rng: np.random.Generator,
    size: int = 64,
    *,
    max_objects: int = 8,
    min_side: float = 3.0,
    max_side_fraction: float = 0.7,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic image with 1 to ``max_objects`` objects and their exact boxes.

    Objects are rectangles, ellipses, triangles and crosses (:data:`SHAPE_CLASSES`),
    filled or outlined (1-2 px), with sides log-uniform in ``[min_side, max_side_fraction *
    size]`` and aspect ratios log-uniform in ``[1/5, 5]``, in colours that stand out from a
    textured background, drawn in order (later ones occlude earlier ones; a placement that
    would hide more than half of an earlier object, or overlap one with IoU above 0.5, is
    drawn again), then Gaussian pixel noise is added. Each box is the tight box of the
    shape's pixels (a pixel belongs to a shape when its centre does), so it is exact.

    Returns ``(image uint8 (size, size, 3), boxes float32 (n, 4) xyxy, labels int64 (n,))``.

    Example:
        >>> img, boxes, labels = make_scene(np.random.default_rng(0), 64)
        >>> img.shape, img.dtype, boxes.shape[1], 1 <= len(labels) <= 8
        ((64, 64, 3), dtype('uint8'), 4, True)
    """
    img = _background(size, rng)
    count = int(rng.integers(1, max_objects + 1))
    boxes: list[list[float]] = []
    labels: list[int] = []
    masks: list[np.ndarray] = []
    for _ in range(count):
        for _attempt in range(20):
            label = int(rng.integers(len(SHAPE_CLASSES)))
            side = math.exp(rng.uniform(math.log(min_side), math.log(max_side_fraction * size)))
            aspect = math.exp(rng.uniform(-math.log(5.0), math.log(5.0)))
            w = min(max(side * math.sqrt(aspect), 2.0), 0.95 * size)
            h = min(max(side / math.sqrt(aspect), 2.0), 0.95 * size)
            cx = rng.uniform(w / 2, size - w / 2)
            cy = rng.uniform(h / 2, size - h / 2)
            mask = _shape_mask(SHAPE_CLASSES[label], cx, cy, w, h, size, rng)
            area = int(mask.sum())
            if area < 4:
                continue
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            if min(box[2] - box[0], box[3] - box[1]) < 2 or not _placement_ok(box, mask, boxes, masks):
                continue
            break
        else:
            continue
        fill = mask
        if min(box[2] - box[0], box[3] - box[1]) >= 6 and rng.random() < 0.4:
            fill = mask & ~_erode(mask, int(rng.integers(1, 3)))
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        local = np.asarray(img[fill].mean(axis=0), dtype=np.float32)
        if float(np.abs(colour - local).max()) < 0.35:
            colour = np.where(local > 0.5, rng.uniform(0.0, 0.2, size=3), rng.uniform(0.8, 1.0, size=3)).astype(
                np.float32
            )
        img[fill] = colour
        boxes.append(box)
        labels.append(label)
        masks.append(mask)
    img = img + rng.normal(0.0, rng.uniform(0.02, 0.08), size=img.shape).astype(np.float32)
    image = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def _placement_ok(box: list[float], mask: np.ndarray, boxes: list[list[float]], masks: list[np.ndarray]) -> bool:
    for other_box, other in zip(boxes, masks):
        hidden = int(np.count_nonzero(other & mask)) / max(int(np.count_nonzero(other)), 1)
        if hidden > 0.5:
            return False
        iw = min(box[2], other_box[2]) - max(box[0], other_box[0])
        ih = min(box[3], other_box[3]) - max(box[1], other_box[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            union = (box[2] - box[0]) * (box[3] - box[1]) + (other_box[2] - other_box[0]) * (
                other_box[3] - other_box[1]
            ) - inter
            if inter / union > 0.5:
                return False
    return True


@functools.lru_cache(maxsize=8)
def _generate(
    n: int, size: int, seed: int, split: str
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    boxes, labels = [], []
    for i in range(n):
        image, b, lab = make_scene(np.random.default_rng([seed, _SPLITS[split], i]), size)
        images[i] = torch.from_numpy(image).permute(2, 0, 1)
        boxes.append(torch.from_numpy(b))
        labels.append(torch.from_numpy(lab))
    return images, tuple(boxes), tuple(labels)


class DetectionDataset(torch.utils.data.Dataset):
    """What the trainer needs from a dataset (see the module docstring)."""

    num_classes: int
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    image_size: int
    source: str
    #: ``"train"``, ``"val"``, ... when the dataset knows it: the default split of :meth:`export`.
    split: str | None = None

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def box_sizes(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def coco_ground_truth(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def _image_name(self, index: int) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def _write_image(self, index: int, path: Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def export(self, folder: str | Path, format: str = "yolo", *, split: str | None = None) -> Exported:
        """Write this dataset as split ``split`` (default: its own) of a dataset on disk.

        ``format="yolo"``: ultralytics' layout, ``images/<split>/``, ``labels/<split>/*.txt``
        (``class cx cy w h`` normalised) and ``data.yaml`` (``path``, the splits written so
        far, ``names``): export the ``train`` and the ``val`` split into one folder and give
        its ``data.yaml`` to ultralytics or to ``detloss train --data``. ``format="coco"``:
        ``annotations/instances_<split>.json`` and ``images/<split>/``. Boxes are in the
        original pixels of each image; images are written as they are (files are copied,
        synthetic scenes saved as PNG). A split the folder already holds is refused.
        Returns what was written (:class:`~detloss.detection.formats.Exported`).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     done = SyntheticScenes(3, image_size=32, split="val").export(tmp, "yolo")
            ...     yolo = YoloDetection(done.path, split="val", image_size=32)
            ...     done.path.name, done.images, len(yolo), yolo.class_names == SHAPE_CLASSES
            ('data.yaml', 3, 3, True)
        """
        chosen = split if split is not None else self.split
        where = f"{type(self).__name__}.export"
        if chosen is None:
            raise DetLossError.bad_argument(where, "split", "a split name ('train', 'val', ...)", None)
        return write_dataset(
            folder, format, chosen, self.coco_ground_truth(), self._write_image, self._image_name, where=where
        )


class SyntheticScenes(DetectionDataset):
    """``n`` synthetic scenes of :func:`make_scene`, generated once and held in memory.

    Image ``i`` of split ``split`` depends only on ``(seed, split, i)``, so the same
    arguments give the same images in every process (ranks of a distributed run agree) and
    a larger ``n`` extends a smaller one. Categories are ``1..4`` in COCO terms.

    Example:
        >>> ds = SyntheticScenes(4, image_size=64, seed=0, split="val")
        >>> image, target = ds[0]
        >>> tuple(image.shape), target["boxes"].shape[1], ds.num_classes
        ((3, 64, 64), 4, 4)
    """

    def __init__(self, n: int, image_size: int = 64, seed: int = 0, split: str = "train") -> None:
        if not isinstance(n, int) or n < 1:
            raise DetLossError.bad_argument("SyntheticScenes", "n", "a positive number of images", repr(n))
        if not isinstance(image_size, int) or image_size < 16:
            raise DetLossError.bad_argument("SyntheticScenes", "image_size", "an integer >= 16", repr(image_size))
        if split not in _SPLITS:
            raise DetLossError.bad_argument("SyntheticScenes", "split", "one of " + ", ".join(_SPLITS), repr(split))
        self.images, self.boxes, self.labels = _generate(n, image_size, seed, split)
        self.image_size = image_size
        self.num_classes = len(SHAPE_CLASSES)
        self.class_names = SHAPE_CLASSES
        self.category_ids = tuple(range(1, self.num_classes + 1))
        self.split = split
        self.source = f"synthetic(n={n}, size={image_size}, seed={seed}, split={split})"

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        target = {
            "boxes": self.boxes[index].clone(),
            "labels": self.labels[index].clone(),
            "image_id": int(index),
            "scale": torch.ones(4),
        }
        return self.images[index].float() / 255.0, target

    def box_sizes(self) -> torch.Tensor:
        boxes = torch.cat(self.boxes) if self.boxes else torch.zeros(0, 4)
        return boxes[:, 2:] - boxes[:, :2]

    def coco_ground_truth(self) -> dict[str, Any]:
        size = self.image_size
        images = [{"id": i, "width": size, "height": size, "file_name": f"{i}.png"} for i in range(len(self))]
        return _coco_dict(images, list(zip(self.boxes, self.labels)), self.category_ids, self.class_names)

    def _image_name(self, index: int) -> str:
        return f"{index:06d}.png"

    def _write_image(self, index: int, path: Path) -> None:
        from PIL import Image

        from detloss.experiments.runs import atomic_write_bytes

        buffer = io.BytesIO()
        Image.fromarray(self.images[index].permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())


def _coco_dict(
    images: list[dict[str, Any]],
    per_image: Sequence[tuple[torch.Tensor, torch.Tensor]],
    category_ids: Sequence[int],
    names: Sequence[str],
) -> dict[str, Any]:
    annotations: list[dict[str, Any]] = []
    for image, (boxes, labels) in zip(images, per_image):
        for box, label in zip(boxes.tolist(), labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": int(category_ids[label]),
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": int(c), "name": n} for c, n in zip(category_ids, names)]
    return {"images": images, "annotations": annotations, "categories": categories}


# --------------------------------------------------------------------------------------
# Images on disk: COCO json, YOLO labels
# --------------------------------------------------------------------------------------


class _ImageFiles(DetectionDataset):
    """Images on disk and their boxes in original pixels: what the COCO and YOLO readers share.

    ``records[i]``: ``{"id", "file_name", "width", "height"}`` (COCO's image entry);
    ``annotations[i]``: ``[(bbox, label, crowd), ...]`` with ``bbox = [left, top, w, h]``.
    """

    records: list[dict[str, Any]]
    annotations: list[list[tuple[list[float], int, int]]]

    def _image_path(self, index: int) -> Path:  # pragma: no cover - interface
        raise NotImplementedError

    def _bad(self, path: Path | str, what: str) -> DetLossError:
        return bad_file(type(self).__name__, path, what)

    def _open(self, index: int) -> Any:
        from PIL import Image, UnidentifiedImageError

        file = self._image_path(index)
        try:
            return Image.open(file)
        except FileNotFoundError:
            raise self._bad(file, "image not found") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise self._bad(file, f"cannot be read as an image ({exc})") from None

    def _image_size_of(self, index: int) -> tuple[int, int]:
        record = self.records[index]
        if "width" not in record:
            with self._open(index) as im:
                record["width"], record["height"] = im.size
        else:
            self._open(index).close()
        return record["width"], record["height"]

    def __len__(self) -> int:
        return len(self.records)

    def _scale(self, index: int) -> torch.Tensor:
        w, h = self._image_size_of(index)
        sx, sy = self.image_size / w, self.image_size / h
        return torch.tensor([sx, sy, sx, sy], dtype=torch.float32)

    def _train_boxes(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        kept = [(b, lab) for b, lab, crowd in self.annotations[index] if not crowd and b[2] > 0 and b[3] > 0]
        boxes = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), _ in kept], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([lab for _, lab in kept], dtype=torch.int64)
        return boxes * self._scale(index), labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from PIL import Image

        record = self.records[index]
        try:
            with self._open(index) as im:
                rgb = im.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                array = np.asarray(rgb, dtype=np.uint8).copy()
        except OSError as exc:
            raise self._bad(self._image_path(index), f"cannot be decoded ({exc})") from None
        image = torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
        boxes, labels = self._train_boxes(index)
        limit = float(self.image_size)
        boxes = boxes.clamp(0.0, limit)
        return image, {"boxes": boxes, "labels": labels, "image_id": record["id"], "scale": self._scale(index)}

    def box_sizes(self) -> torch.Tensor:
        sizes = [self._train_boxes(i)[0] for i in range(len(self))]
        boxes = torch.cat(sizes) if sizes else torch.zeros(0, 4)
        return boxes[:, 2:] - boxes[:, :2]

    def coco_ground_truth(self) -> dict[str, Any]:
        annotations: list[dict[str, Any]] = []
        for record, anns in zip(self.records, self.annotations):
            for bbox, label, crowd in anns:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record["id"],
                        "category_id": self.category_ids[label],
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": crowd,
                    }
                )
        images = []
        for i, r in enumerate(self.records):
            width, height = self._image_size_of(i)
            images.append({**r, "width": width, "height": height})
        categories = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def _image_name(self, index: int) -> str:
        return self._image_path(index).name

    def _write_image(self, index: int, path: Path) -> None:
        copy_image(self._image_path(index), path)


class CocoDetection(_ImageFiles):
    """A COCO-format detection set: ``annotation_file`` (json) and the folder of its images.

    The json needs ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``,
    ``category_id``, ``bbox`` = ``[left, top, width, height]`` in pixels) and
    ``categories`` (``id``, ``name``). Categories become labels ``0..C-1`` in the order of
    their ids; crowd annotations (``iscrowd: 1``) and boxes with a side <= 0 are not trained
    on (crowd ones still count as crowd in evaluation). Each image is resized to
    ``image_size x image_size`` (aspect not kept; boxes scaled alike); evaluation maps
    predictions back to original pixels. A missing, unreadable or malformed file, key or
    box raises :class:`DetLossError` naming the file. ``split`` is only the default split
    of :meth:`export`.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path | None = None,
        image_size: int = 64,
        *,
        split: str | None = None,
    ) -> None:
        self.annotation_file = path = Path(annotation_file)
        self.image_dir = Path(image_dir) if image_dir is not None else path.parent
        self.image_size = int(image_size)
        self.split = split
        self.source = f"coco({path})"
        if path.is_dir():
            raise self._bad(path, "is a folder; expected the COCO json file of the annotations")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self._bad(path, "not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._bad(path, f"cannot be read ({exc})") from None
        except json.JSONDecodeError as exc:
            raise self._bad(path, f"is not valid json ({exc})") from None
        if not isinstance(data, dict):
            got = type(data).__name__
            raise self._bad(path, f"expected a json object (images, annotations, categories), got {got}")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise self._bad(path, f"expected a list under key {key!r}")
        try:
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
            self.category_ids = tuple(int(c["id"]) for c in cats)
            self.class_names = tuple(str(c.get("name", c["id"])) for c in cats)
            images = [
                {
                    "id": int(im["id"]),
                    "file_name": str(im["file_name"]),
                    **({"width": int(im["width"]), "height": int(im["height"])} if "width" in im else {}),
                }
                for im in data["images"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._bad(path, f"malformed image or category entry ({type(exc).__name__}: {exc})") from None
        if not self.category_ids:
            raise self._bad(path, "has no categories")
        self.num_classes = len(self.category_ids)
        label_of = {c: i for i, c in enumerate(self.category_ids)}
        index_of = {im["id"]: i for i, im in enumerate(images)}
        raw: list[list[tuple[list[float], int, int]]] = [[] for _ in images]
        for k, ann in enumerate(data["annotations"]):
            try:
                bbox = [float(v) for v in ann["bbox"]]
                image_index = index_of[int(ann["image_id"])]
                label = label_of[int(ann["category_id"])]
                crowd = int(ann.get("iscrowd", 0))
            except (KeyError, TypeError, ValueError) as exc:
                raise self._bad(path, f"annotation {k} is malformed ({type(exc).__name__}: {exc})") from None
            if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
                raise self._bad(path, f"annotation {k}: bbox expected four finite numbers, got {ann['bbox']!r}")
            raw[image_index].append((bbox, label, crowd))
        self.records = images
        self.annotations = raw
        for i in range(len(images)):  # fail now, not in the middle of training
            self._image_size_of(i)

    def _image_path(self, index: int) -> Path:
        return self.image_dir / self.records[index]["file_name"]


class YoloDetection(_ImageFiles):
    """A YOLO-format detection set (ultralytics' layout), given by its ``data.yaml``.

    ``data`` is the yaml file (or the folder holding it); ``split`` one of its splits
    (``"train"``, ``"val"``, ``"test"``). Each image's label file (``labels/`` where the
    image is under ``images/``, see :func:`detloss.detection.formats.label_file`) holds
    ``class cx cy w h`` per object, normalised by the image size; a missing or empty label
    file is an image without objects, but a split where no image has a label file is an
    error (the labels are elsewhere, or the folder is not a YOLO dataset). Class ``k`` is
    label ``k``, named by ``names``, with COCO category id ``k + 1`` for evaluation. Images
    are resized as in :class:`CocoDetection`; a missing, unreadable or malformed file or
    line raises :class:`DetLossError` naming it.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = Path(tmp)
        ...     for sub in ("images/train", "labels/train"):
        ...         (root / sub).mkdir(parents=True)
        ...     Image.new("RGB", (200, 100)).save(root / "images/train/a.png")
        ...     _ = (root / "labels/train/a.txt").write_text("1 0.25 0.5 0.1 0.2\\n")
        ...     _ = (root / "data.yaml").write_text("train: images/train\\nval: images/train\\nnames: [cat, dog]\\n")
        ...     ds = YoloDetection(root / "data.yaml", image_size=64)
        ...     ds.class_names, ds.coco_ground_truth()["annotations"][0]["bbox"]  # 200 x 100 pixels
        (('cat', 'dog'), [40.0, 40.0, 20.0, 20.0])
    """

    def __init__(self, data: str | Path, split: str = "train", image_size: int = 64) -> None:
        from detloss.detection.formats import label_file, read_data_yaml, read_label_file, split_images

        where = type(self).__name__
        spec = read_data_yaml(data, where)
        self.data_file = spec.file
        self.image_size = int(image_size)
        self.split = split
        self.source = f"yolo({spec.file}, split={split})"
        self.class_names = spec.names
        self.num_classes = len(spec.names)
        self.category_ids = tuple(range(1, self.num_classes + 1))
        self.files = split_images(spec, split, where)
        self.records, self.annotations = [], []
        labelled = 0
        for i, file in enumerate(self.files):
            try:
                name = file.relative_to(spec.root).as_posix()
            except ValueError:
                name = str(file)
            self.records.append({"id": i + 1, "file_name": name})
            width, height = self._image_size_of(i)
            label = label_file(file)
            rows = read_label_file(label, self.num_classes, where) if label.is_file() else []
            labelled += label.is_file()
            self.annotations.append(
                [([(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height], cls, 0) for cls, (cx, cy, w, h)
                 in rows]
            )
        if not labelled:
            first = self.files[0]
            raise bad_file(
                where, spec.file,
                f"`{split}`: no label files for its {len(self.files)} images (expected e.g. "
                f"{str(label_file(first))!r} for {str(first)!r})",
            )

    def _image_path(self, index: int) -> Path:
        return self.files[index]


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack the images, keep the targets as a list (their numbers of boxes differ)."""
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]

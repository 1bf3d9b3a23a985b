"""Detection datasets on disk: the YOLO layout (ultralytics') and COCO json, read and written.

**YOLO** (what ultralytics trains from)::

    folder/
      data.yaml              path: <folder>, train: images/train, val: images/val, names: {0: ..., 1: ...}
      images/train/*.png     (and images/val/, images/test/)
      labels/train/*.txt     one line per object: class cx cy w h, normalised by the image's width and height

The label file of an image is its path with the last ``images`` folder replaced by
``labels`` and the suffix by ``.txt``; an image without one (or with an empty one) has no
objects. ``data.yaml`` names each split by a folder of images (searched recursively), a
``.txt`` file listing images (lines starting ``./`` are relative to it), or a list of
these, relative to ``path``; ``path`` defaults to the folder of ``data.yaml``. Classes come
from ``names`` (a list, or a mapping ``0..C-1`` -> name) or ``nc``. Rows of more than five
numbers are polygons (``class x1 y1 x2 y2 ...``); their box is the polygon's extent.

**COCO**::

    folder/
      annotations/instances_train.json   images (id, file_name, width, height), annotations
                                         (image_id, category_id, bbox = [left, top, w, h] in pixels,
                                         area, iscrowd), categories (id, name)
      images/train/*.png

Between the two, class ``k`` of a YOLO dataset is the ``k``-th category in the order of the
COCO ids; written as COCO, it gets id ``k + 1``. YOLO has no crowd regions and no empty
boxes: those annotations are left out when writing YOLO (:class:`Exported` counts them).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detloss import DetLossError

__all__ = [
    "DATASET_FORMATS",
    "IMAGE_SUFFIXES",
    "Exported",
    "YoloSpec",
    "coco_annotation_file",
    "find_data_yaml",
    "label_file",
    "read_data_yaml",
    "read_label_file",
    "split_images",
    "write_dataset",
]

DATASET_FORMATS: tuple[str, ...] = ("yolo", "coco")
#: Image suffixes read from a YOLO split folder (those Pillow decodes).
IMAGE_SUFFIXES: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")
#: How far outside ``[0, 1]`` a normalised coordinate may lie (rounding in the tools that
#: wrote it) before the label file is refused; boxes are clipped to the image anyway.
COORD_TOLERANCE = 0.01
#: Decimals of the normalised numbers written to YOLO label files.
DECIMALS = 6


def bad_file(where: str, path: Path | str, what: str) -> DetLossError:
    """The error for an unreadable or malformed file: ``where(): file 'path': what``."""
    return DetLossError(f"{where}(): file {str(path)!r}: {what}")


# --------------------------------------------------------------------------------------
# reading YOLO
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class YoloSpec:
    """What ``data.yaml`` says: the file, the dataset root, each split's sources, the class names."""

    file: Path
    root: Path
    splits: dict[str, tuple[Path, ...]]
    names: tuple[str, ...]


def find_data_yaml(path: Path | str, where: str = "YoloDetection") -> Path:
    """``path`` itself if a file; in a folder, its ``data.yaml`` (or its only ``*.yaml``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("data.yaml", "data.yml"):
            if (path / name).is_file():
                return path / name
        found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if len(found) == 1:
            return found[0]
        what = "several yaml files: " + ", ".join(p.name for p in found) if found else "no data.yaml"
        raise bad_file(where, path, f"is a folder with {what} (give the dataset's yaml file)")
    if not path.exists():
        raise bad_file(where, path, "not found")
    return path


def _class_names(file: Path, data: Mapping[str, Any], where: str) -> tuple[str, ...]:
    names = data.get("names")
    if names is None:
        nc = data.get("nc")
        if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
            raise bad_file(where, file, f"expected `names` (a list or a mapping 0..C-1) or `nc` >= 1, got nc={nc!r}")
        return tuple(f"class_{i}" for i in range(nc))
    if isinstance(names, list):
        out = tuple(str(n) for n in names)
    elif isinstance(names, dict):
        try:
            keyed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise bad_file(where, file, f"`names` keys expected integers 0..C-1, got {list(names)!r}") from None
        if sorted(keyed) != list(range(len(keyed))):
            raise bad_file(where, file, f"`names` keys expected 0..{len(keyed) - 1}, got {sorted(keyed)}")
        out = tuple(keyed[i] for i in range(len(keyed)))
    else:
        raise bad_file(where, file, f"`names` expected a list or a mapping, got {type(names).__name__}")
    if not out:
        raise bad_file(where, file, "`names` is empty: at least one class is needed")
    nc = data.get("nc")
    if nc is not None and nc != len(out):
        raise bad_file(where, file, f"`nc` is {nc!r} but `names` has {len(out)} entries")
    return out


def read_data_yaml(path: Path | str, where: str = "YoloDetection") -> YoloSpec:
    """Parse an ultralytics ``data.yaml`` (or the folder holding it), paths resolved.

    ``path`` in the yaml: absolute, or relative to the yaml's folder (else to the current
    folder, where ultralytics also looks); absent: the yaml's folder. ``validation`` is read
    as ``val``.
    """
    import yaml

    file = find_data_yaml(path, where)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise bad_file(where, file, f"cannot be read ({exc})") from None
    except yaml.YAMLError as exc:
        raise bad_file(where, file, "is not valid yaml (" + " ".join(str(exc).split()) + ")") from None
    if not isinstance(data, dict):
        raise bad_file(where, file, f"expected a yaml mapping (path, train, val, names), got {type(data).__name__}")
    names = _class_names(file, data, where)
    given = data.get("path")
    if given is None or given == "":
        root = file.parent
    else:
        root = Path(str(given)).expanduser()
        if not root.is_absolute() and ((file.parent / root).exists() or not root.exists()):
            root = file.parent / root  # beside the yaml first; else where the current folder has it
    if "val" not in data and "validation" in data:
        data = {**data, "val": data["validation"]}
    splits: dict[str, tuple[Path, ...]] = {}
    for split in ("train", "val", "test"):
        value = data.get(split)
        if value is None or value == "":
            continue
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v for v in items):
            raise bad_file(where, file, f"`{split}` expected a path or a list of paths, got {value!r}")
        splits[split] = tuple(_under(root, v) for v in items)
    return YoloSpec(file=file, root=root, splits=splits, names=names)


def _under(root: Path, value: str) -> Path:
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    candidate = root / p
    if not candidate.exists() and value.startswith("../"):  # ultralytics reads "../x" also as "x"
        trimmed = root / value[3:]
        if trimmed.exists():
            return trimmed
    return candidate


def split_images(spec: YoloSpec, split: str, where: str = "YoloDetection") -> list[Path]:
    """The image files of ``split`` (sorted), from folders, list files or single images."""
    if split not in spec.splits:
        have = ", ".join(spec.splits) or "none"
        raise bad_file(where, spec.file, f"has no `{split}` split (it has: {have})")
    files: list[Path] = []
    for source in spec.splits[split]:
        if source.is_dir():
            files += [p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
            files.append(source)
        elif source.is_file():
            try:
                lines = source.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise bad_file(where, source, f"cannot be read as a list of images ({exc})") from None
            for line in (x.strip() for x in lines):
                if not line:
                    continue
                p = source.parent / line[2:] if line.startswith("./") else Path(line)
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(p)
        else:
            raise bad_file(where, spec.file, f"`{split}`: {str(source)!r} does not exist")
    if not files:
        sources = ", ".join(repr(str(s)) for s in spec.splits[split])
        raise bad_file(where, spec.file, f"`{split}`: no images ({', '.join(IMAGE_SUFFIXES)}) in {sources}")
    return sorted(set(files))


def label_file(image: Path) -> Path:
    """The YOLO label file of ``image``: the last ``images`` folder of its path replaced by
    ``labels``, the suffix by ``.txt`` (the image's own folder if the path has no ``images``).

    Example:
        >>> label_file(Path("ds/images/train/a.png")).as_posix()
        'ds/labels/train/a.txt'
    """
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_label_file(path: Path, num_classes: int, where: str = "YoloDetection") -> list[tuple[int, list[float]]]:
    """``[(class, [cx, cy, w, h]), ...]`` normalised, from one YOLO label file.

    A row is ``class cx cy w h`` or a polygon ``class x1 y1 x2 y2 x3 y3 ...`` (its extent).
    Every problem raises :class:`DetLossError` naming the file and the line.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise bad_file(where, path, f"cannot be read ({exc})") from None
    rows: list[tuple[int, list[float]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        at = f"line {number} ({line.strip()!r})"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise bad_file(where, path, f"{at}: expected numbers") from None
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            raise bad_file(where, path, f"{at}: expected `class cx cy w h` or a polygon `class x1 y1 x2 y2 x3 y3 ...`")
        cls, coords = values[0], values[1:]
        if not cls.is_integer() or not 0 <= cls < num_classes:
            raise bad_file(where, path, f"{at}: class expected an integer in [0, {num_classes}), got {fields[0]}")
        if not all(math.isfinite(v) and -COORD_TOLERANCE <= v <= 1 + COORD_TOLERANCE for v in coords):
            raise bad_file(where, path, f"{at}: expected coordinates normalised to [0, 1] by the image size")
        if len(values) == 5:
            box = coords
        else:
            xs, ys = coords[0::2], coords[1::2]
            box = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
        if box[2] < 0 or box[3] < 0:
            raise bad_file(where, path, f"{at}: width and height expected >= 0")
        rows.append((int(cls), box))
    return rows


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """What :func:`write_dataset` wrote: the file to give a trainer (``data.yaml`` or the
    COCO json), the numbers of images and boxes, and the annotations YOLO cannot hold
    (crowd regions, boxes of zero area inside the image), left out."""

    path: Path
    images: int
    boxes: int
    skipped: int = 0


def coco_annotation_file(folder: Path | str, split: str) -> Path:
    """Where the COCO layout keeps a split's annotations: ``folder/annotations/instances_<split>.json``."""
    return Path(folder) / "annotations" / f"instances_{split}.json"


def _unique(name: str, used: set[str]) -> str:
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, k = name, 1
    while candidate.lower() in used:
        k += 1
        candidate = f"{stem}_{k}{suffix}"
    used.add(candidate.lower())
    return candidate


def _yolo_rows(
    annotations: Sequence[Mapping[str, Any]], width: float, height: float, label_of: Mapping[int, int]
) -> tuple[list[str], int]:
    lines, skipped = [], 0
    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if int(ann.get("iscrowd", 0)) or x2 <= x1 or y2 <= y1:
            skipped += 1
            continue
        numbers = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        lines.append(f"{label_of[int(ann['category_id'])]} " + " ".join(f"{v:.{DECIMALS}f}" for v in numbers))
    return lines, skipped


def _write_data_yaml(folder: Path, split: str, names: Sequence[str], where: str) -> Path:
    import yaml

    from detloss.experiments.runs import atomic_write_text

    file = folder / "data.yaml"
    data: dict[str, Any] = {}
    if file.exists():
        spec = read_data_yaml(file, where)
        if spec.names != tuple(names):
            raise bad_file(where, file, f"holds classes {list(spec.names)}, not {list(names)}: export to a new folder")
        data = {k: f"images/{k}" for k in spec.splits}
    data[split] = f"images/{split}"
    ordered: dict[str, Any] = {"path": str(folder.resolve())}
    ordered.update({k: data[k] for k in ("train", "val", "test") if k in data})
    ordered["names"] = dict(enumerate(names))
    text = "# A YOLO dataset in ultralytics' layout, written by detloss.\n"
    text += yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)
    atomic_write_text(file, text)
    return file


def write_dataset(
    folder: Path | str,
    fmt: str,
    split: str,
    ground_truth: Mapping[str, Any],
    write_image: Callable[[int, Path], None],
    image_name: Callable[[int], str],
    *,
    where: str = "export",
) -> Exported:
    """Write one split of a dataset in ``fmt`` (``"yolo"`` or ``"coco"``) under ``folder``.

    ``ground_truth`` is the COCO-format dict of the split in original pixels (what every
    dataset's ``coco_ground_truth()`` gives); image ``i`` of it is written by
    ``write_image(i, path)`` under the name ``image_name(i)`` (made unique). A split that
    the folder already holds is refused, so nothing is mixed or overwritten.
    """
    from detloss._checks import check_choice
    from detloss.experiments.runs import atomic_write_text, write_json

    check_choice(where, "format", fmt, DATASET_FORMATS)
    if not isinstance(split, str) or not split or any(c in split for c in "/\\. "):
        raise DetLossError.bad_argument(where, "split", "a split name such as 'train' or 'val'", repr(split))
    folder = Path(folder)
    image_dir = folder / "images" / split
    json_file = coco_annotation_file(folder, split)
    if (image_dir.exists() and any(image_dir.iterdir())) or (fmt == "coco" and json_file.exists()):
        raise DetLossError.bad_argument(where, "folder", f"a folder without a {split!r} split", repr(str(folder)))
    if fmt == "yolo" and (folder / "data.yaml").exists():
        read_data_yaml(folder / "data.yaml", where)  # a foreign or broken data.yaml: refuse before writing
    categories = list(ground_truth["categories"])
    label_of = {int(c["id"]): k for k, c in enumerate(categories)}
    names = [str(c["name"]) for c in categories]
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in ground_truth["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    image_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    images: list[dict[str, Any]] = []
    boxes = skipped = 0
    for index, record in enumerate(ground_truth["images"]):
        name = _unique(Path(image_name(index)).name, used)
        write_image(index, image_dir / name)
        images.append({"id": record["id"], "file_name": name, "width": record["width"], "height": record["height"]})
        anns = by_image.get(int(record["id"]), [])
        if fmt == "yolo":
            lines, dropped = _yolo_rows(anns, float(record["width"]), float(record["height"]), label_of)
            label = label_file(image_dir / name)
            label.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(label, "".join(line + "\n" for line in lines))
            boxes += len(lines)
            skipped += dropped
        else:
            boxes += len(anns)
    if fmt == "coco":
        annotations = [{**a, "id": k} for k, a in enumerate(ground_truth["annotations"], start=1)]
        write_json(json_file, {"images": images, "annotations": annotations, "categories": categories})
        return Exported(json_file, len(images), boxes)
    return Exported(_write_data_yaml(folder, split, names, where), len(images), boxes, skipped)


def copy_image(source: Path, target: Path) -> None:
    """Copy an image file (its bytes: no decoding, no loss)."""
    shutil.copyfile(source, target)

"""The settings of a training run and what they build before it starts: the data, the loss.

:class:`TrainConfig` holds every setting (saved in the checkpoint and in ``results.json``)
and checks them when it is made, the data options included: one source of data, synthetic
scenes (the default), COCO json files with their image folders, or a YOLO dataset by its
``data.yaml``. Errors name the settings as Python does (``batch_size``); the command line
names them as typed (``--batch-size``). :func:`build_datasets` and :func:`build_loss_fn`
turn a configuration into the datasets and the :class:`~detloss.detection.yolo_loss.YOLOLoss`
of the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from detloss import DetLossError
from detloss.detection.data import CocoDetection, DetectionDataset, SyntheticScenes, YoloDetection
from detloss.detection.postprocess import NMS_KINDS
from detloss.detection.yolo_loss import YOLOLoss, resolve_loss_name

__all__ = ["TrainConfig", "build_datasets", "build_loss_fn", "build_splits", "parse_options"]


@dataclass
class TrainConfig:
    """Every setting of a training run (saved in the checkpoint and in ``results.json``)."""

    box_loss: str = "ciou"
    obj_loss: str = "binary_cross_entropy"
    cls_loss: str = "binary_cross_entropy"
    box_weight: float = 5.0
    obj_weight: float = 1.0
    cls_weight: float = 1.0
    box_options: dict[str, Any] = field(default_factory=dict)
    obj_options: dict[str, Any] = field(default_factory=dict)
    cls_options: dict[str, Any] = field(default_factory=dict)
    ignore_thresh: float = 0.5
    # data
    image_size: int = 64
    train_images: int = 4000
    val_images: int = 500
    data_seed: int = 0
    train_json: str | None = None
    train_image_dir: str | None = None
    val_json: str | None = None
    val_image_dir: str | None = None
    data: str | None = None
    flip: bool = True
    # model
    width: int = 16
    strides: tuple[int, ...] = (8, 16)
    anchors_per_level: int = 3
    # optimisation
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    grad_clip: float = 10.0
    seed: int = 0
    checkpoint_every: int = 500
    # inference
    nms: str = "nms"
    nms_threshold: float = 0.45
    score_threshold: float = 0.001
    num_drawn: int = 6
    device: str = "auto"

    def __post_init__(self) -> None:
        self.strides = tuple(int(s) for s in self.strides)
        for name in ("box_loss", "obj_loss", "cls_loss"):
            setattr(self, name, resolve_loss_name(getattr(self, name), name))
        if self.nms not in NMS_KINDS:
            raise DetLossError.bad_argument("train", "nms", "one of " + ", ".join(NMS_KINDS), repr(self.nms))
        for name in ("steps", "batch_size", "train_images", "val_images", "checkpoint_every", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DetLossError.bad_argument("train", name, "a positive integer", repr(value))
        if self.image_size % max(self.strides):
            multiple = f"a multiple of {max(self.strides)}"
            raise DetLossError.bad_argument("train", "image_size", multiple, self.image_size)
        self._check_data()
        build_loss_fn(self)  # the loss settings (weights, options) are checked now, not at the first step

    def _check_data(self) -> None:
        """One source of data: synthetic scenes, COCO json files, or a YOLO ``data.yaml``."""
        if self.data is not None and (self.train_json is not None or self.val_json is not None):
            given = "`train_json`" if self.train_json is not None else "`val_json`"
            expected = f"not given together with {given} (one dataset)"
            raise DetLossError.bad_argument("train", "data", expected, repr(self.data))
        if (self.train_json is None) != (self.val_json is None):
            missing, given = ("val_json", "train_json") if self.val_json is None else ("train_json", "val_json")
            raise DetLossError.bad_argument("train", missing, f"given together with `{given}`", None)
        for folder, json_name in (("train_image_dir", "train_json"), ("val_image_dir", "val_json")):
            if getattr(self, folder) is not None and getattr(self, json_name) is None:
                raise DetLossError.bad_argument(
                    "train",
                    folder,
                    f"given with `{json_name}` (the annotations of its images; a YOLO dataset is given by `data`)",
                    repr(getattr(self, folder)),
                )

    def data_source(self) -> str:
        """``"synthetic"``, ``"coco"`` or ``"yolo"``."""
        return "yolo" if self.data is not None else "coco" if self.train_json is not None else "synthetic"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_cli(cls, settings: Mapping[str, Any], steps: int | None = None) -> TrainConfig:
        """A configuration from command-line values (``box_option=["alpha=0.5"]`` and so on);
        ``None`` values and ``steps=None`` keep the defaults."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in settings.items():
            if value is None:
                continue
            if key in ("box_option", "obj_option", "cls_option"):
                values[key + "s"] = parse_options(value, "--" + key.replace("_", "-"))
            elif key in known:
                values[key] = str(value) if isinstance(value, Path) else value
            else:
                raise DetLossError.bad_argument("TrainConfig.from_cli", "settings", "known options", repr(key))
        if steps is not None:
            values["steps"] = steps
        return cls(**values)

    def losses(self) -> dict[str, Any]:
        """The loss configuration (``results.json["losses"]``)."""
        return {
            "box_loss": self.box_loss,
            "obj_loss": self.obj_loss,
            "cls_loss": self.cls_loss,
            "box_weight": self.box_weight,
            "obj_weight": self.obj_weight,
            "cls_weight": self.cls_weight,
            "box_options": dict(self.box_options),
            "obj_options": dict(self.obj_options),
            "cls_options": dict(self.cls_options),
            "ignore_thresh": self.ignore_thresh,
        }


def parse_options(items: Sequence[str], name: str = "--option") -> dict[str, Any]:
    """``["alpha=0.5", "gamma=2", "alpha=none", "mode=log"]`` -> ``{"alpha": None, "gamma": 2.0, "mode": "log"}``
    (later wins): numbers become floats, ``none`` None, ``true``/``false`` booleans.

    Example:
        >>> parse_options(["alpha=0.5", "gamma=2", "mode=log"])
        {'alpha': 0.5, 'gamma': 2.0, 'mode': 'log'}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise DetLossError.bad_argument("detloss", name, "KEY=VALUE", repr(item))
        word = text.strip()
        value: Any
        if word.lower() == "none":
            value = None
        elif word.lower() in ("true", "false"):
            value = word.lower() == "true"
        else:
            try:
                value = float(word)
            except ValueError:
                value = word
        out[key.strip()] = value
    return out


def build_splits(config: TrainConfig, *, test: bool = False) -> dict[str, DetectionDataset]:
    """``{"train": ..., "val": ...}`` of the configured data (and ``"test"`` if ``test`` and
    a YOLO dataset has one): synthetic scenes, COCO json + image folders, or a YOLO dataset."""
    source = config.data_source()
    if source == "yolo":
        from detloss.detection.formats import read_data_yaml

        names = ["train", "val"] + (["test"] if test and "test" in read_data_yaml(str(config.data)).splits else [])
        return {split: YoloDetection(str(config.data), split, config.image_size) for split in names}
    if source == "coco":
        train_set = CocoDetection(str(config.train_json), config.train_image_dir, config.image_size, split="train")
        val_set = CocoDetection(str(config.val_json), config.val_image_dir, config.image_size, split="val")
        if val_set.category_ids != train_set.category_ids:
            raise DetLossError.bad_argument(
                "train", "val_json", f"the categories of `train_json` {train_set.category_ids}", val_set.category_ids
            )
        return {"train": train_set, "val": val_set}
    return {
        "train": SyntheticScenes(config.train_images, config.image_size, config.data_seed, "train"),
        "val": SyntheticScenes(config.val_images, config.image_size, config.data_seed, "val"),
    }


def build_datasets(config: TrainConfig, world_size: int = 1) -> tuple[DetectionDataset, DetectionDataset]:
    """The training and validation sets (see :func:`build_splits`), checked to give every
    one of ``world_size`` processes at least one batch per epoch."""
    splits = build_splits(config)
    per_rank = len(splits["train"]) // world_size
    if per_rank < config.batch_size:
        raise DetLossError.bad_argument(
            "train", "batch_size", f"at most {per_rank} (training images per process)", config.batch_size
        )
    return splits["train"], splits["val"]


def build_loss_fn(config: TrainConfig) -> YOLOLoss:
    """The configured :class:`YOLOLoss`; a box loss that needs the input image size (MPDIoU
    normalises by it) gets ``(image_size, image_size)`` unless given."""
    import inspect

    from detloss import LOSSES

    box_options = dict(config.box_options)
    if "image_size" in inspect.signature(LOSSES[config.box_loss].function).parameters:
        box_options.setdefault("image_size", (config.image_size, config.image_size))
    return YOLOLoss(
        config.box_loss,
        config.obj_loss,
        config.cls_loss,
        box_weight=config.box_weight,
        obj_weight=config.obj_weight,
        cls_weight=config.cls_weight,
        box_options=box_options,
        obj_options=config.obj_options,
        cls_options=config.cls_options,
        ignore_thresh=config.ignore_thresh,
    )

"""The settings of a training run and what they build before it starts: the data, the loss.

:class:`TrainConfig` holds every setting (saved in the checkpoint and in ``results.json``)
and checks them when it is made, the data options included: one source of data, synthetic
scenes (the default), COCO json files with their image folders, or a YOLO dataset by its
``data.yaml``. Errors name the settings as Python does (``batch_size``); the command line
names them as typed (``--batch-size``). :func:`build_datasets` and :func:`build_loss_fn`
turn a configuration into the datasets and the loss of the run: the
:class:`~detloss.detection.yolo_loss.YOLOLoss` of the ``"yolov3"`` head or the
:class:`~detloss.detection.anchor_free_loss.AnchorFreeLoss` of the ``"anchor-free"`` one.

The settings of one head only are ``None`` by default and filled in for the chosen head
(:data:`HEAD_DEFAULTS`); giving one to the other head is an error (``obj_loss`` to the
anchor-free head, which has no objectness; ``dfl`` or ``assigner="tal"`` to the YOLOv3 head,
which has its own assignment). A configuration saved before the anchor-free head existed reads
as the same ``"yolov3"`` configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from detloss import DetLossError
from detloss._checks import check_integer
from detloss.detection.anchor_free_loss import AnchorFreeLoss
from detloss.detection.assign import ASSIGNERS
from detloss.detection.data import CocoDetection, DetectionDataset, SyntheticScenes, YoloDetection
from detloss.detection.postprocess import NMS_KINDS
from detloss.detection.yolo_loss import YOLOLoss, resolve_loss_name

__all__ = ["HEADS", "HEAD_DEFAULTS", "TrainConfig", "build_datasets", "build_loss_fn", "build_splits", "parse_options"]

#: The detector heads: YOLOv3's anchor boxes with objectness, or YOLOv8-style points with DFL.
HEADS = ("yolov3", "anchor-free")
#: The settings each head fills in when they are not given (None); the others stay None.
HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "yolov3": {
        "obj_loss": "binary_cross_entropy", "box_weight": 5.0, "obj_weight": 1.0, "cls_weight": 1.0,
        "assigner": "yolov3",
    },
    "anchor-free": {
        "box_weight": 7.5, "cls_weight": 0.5, "dfl_weight": 1.5, "assigner": "tal", "dfl": True, "reg_max": 16,
    },
}
#: Settings only one head has: given to the other head, they are an error.
_ONLY = {"yolov3": ("obj_loss", "obj_weight"), "anchor-free": ("dfl", "dfl_weight", "reg_max")}


@dataclass
class TrainConfig:
    """Every setting of a training run (saved in the checkpoint and in ``results.json``).

    ``head`` is ``"yolov3"`` (default) or ``"anchor-free"``; ``None`` settings take that head's
    defaults (:data:`HEAD_DEFAULTS`) when the configuration is made.

    Example:
        >>> c = TrainConfig(head="anchor-free", cls_loss="vfl")
        >>> c.assigner, c.dfl, c.reg_max, c.cls_loss, c.obj_loss, c.box_weight
        ('tal', True, 16, 'varifocal', None, 7.5)
        >>> TrainConfig().assigner, TrainConfig().dfl  # the YOLOv3 head: its own assignment, no DFL
        ('yolov3', None)
    """

    head: str = "yolov3"
    assigner: str | None = None
    box_loss: str = "ciou"
    obj_loss: str | None = None
    cls_loss: str = "binary_cross_entropy"
    box_weight: float | None = None
    obj_weight: float | None = None
    cls_weight: float | None = None
    dfl_weight: float | None = None
    dfl: bool | None = None
    reg_max: int | None = None
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
        self._check_head()
        for name in ("box_loss", "obj_loss", "cls_loss"):
            if getattr(self, name) is not None:
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

    def _check_head(self) -> None:
        """The head, its own settings (defaults filled in), none of the other head's."""
        if self.head not in HEADS:
            raise DetLossError.bad_argument("train", "head", "one of " + ", ".join(HEADS), repr(self.head))
        other = HEADS[1 - HEADS.index(self.head)]
        for name in _ONLY[other]:
            if getattr(self, name) is not None:
                expected = f"not given with head {self.head!r} (a setting of head {other!r})"
                raise DetLossError.bad_argument("train", name, expected, repr(getattr(self, name)))
        if self.head == "anchor-free" and self.obj_options:
            expected = "not given with head 'anchor-free' (it has no objectness)"
            raise DetLossError.bad_argument("train", "obj_options", expected, self.obj_options)
        for name, value in HEAD_DEFAULTS[self.head].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        assigners = ("yolov3",) if self.head == "yolov3" else ASSIGNERS
        if self.assigner not in assigners:
            if self.head == "yolov3":
                expected = "'yolov3' (this head has the YOLOv3 assignment; tal, atss, simota: head 'anchor-free')"
            else:
                expected = "one of " + ", ".join(ASSIGNERS)
            raise DetLossError.bad_argument("train", "assigner", expected, repr(self.assigner))
        if self.head == "anchor-free":
            if not isinstance(self.dfl, bool):
                raise DetLossError.bad_argument("train", "dfl", "True or False", repr(self.dfl))
            check_integer("train", "reg_max", self.reg_max, 1)

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

    def weights(self) -> dict[str, Any]:
        """The weights of the head's loss terms, by the name its loss takes them."""
        names = ("box_weight", "cls_weight", "dfl_weight") if self.head == "anchor-free" else (
            "box_weight", "obj_weight", "cls_weight")
        return {name: getattr(self, name) for name in names}

    def losses(self) -> dict[str, Any]:
        """The loss configuration (``results.json["losses"]``): the head's settings only."""
        if self.head == "anchor-free":
            return {
                "head": self.head,
                "assigner": self.assigner,
                "box_loss": self.box_loss,
                "cls_loss": self.cls_loss,
                "dfl": self.dfl,
                "reg_max": self.reg_max,
                "box_weight": self.box_weight,
                "cls_weight": self.cls_weight,
                "dfl_weight": self.dfl_weight,
                "box_options": dict(self.box_options),
                "cls_options": dict(self.cls_options),
            }
        return {
            "head": self.head,
            "assigner": self.assigner,
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


def build_loss_fn(config: TrainConfig) -> YOLOLoss | AnchorFreeLoss:
    """The configured loss of the head (:class:`YOLOLoss` or :class:`AnchorFreeLoss`); a box
    loss that needs the input image size (MPDIoU normalises by it) gets ``(image_size,
    image_size)`` unless given."""
    import inspect

    from detloss import LOSSES

    box_options = dict(config.box_options)
    if "image_size" in inspect.signature(LOSSES[config.box_loss].function).parameters:
        box_options.setdefault("image_size", (config.image_size, config.image_size))
    if config.head == "anchor-free":
        return AnchorFreeLoss(
            config.box_loss,
            config.cls_loss,
            assigner=str(config.assigner),
            **config.weights(),
            box_options=box_options,
            cls_options=config.cls_options,
        )
    return YOLOLoss(
        config.box_loss,
        str(config.obj_loss),
        config.cls_loss,
        **config.weights(),
        box_options=box_options,
        obj_options=config.obj_options,
        cls_options=config.cls_options,
        ignore_thresh=config.ignore_thresh,
    )

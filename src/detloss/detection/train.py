"""Training: one process or many (``torchrun``), checkpoints, ``--resume``, the run folder.

``train(config, out)`` trains :class:`~detloss.detection.model.TinyYOLO` with
:class:`~detloss.detection.yolo_loss.YOLOLoss`, evaluates COCO mAP on the validation set
with NMS and with DIoU-NMS, and writes (rank 0 only) into ``out``:

- ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end (model, optimizer,
  schedule, loss history, configuration): ``resume=True`` continues from it, exactly;
- ``metrics.json`` (the metrics with the configured NMS), ``results.json`` (the stable keys
  the README lists: ``metrics``, ``losses``, ``steps``, ``world_size``, plus ``metrics_by_nms``,
  ``anchors``, ``train_seconds``), ``results.csv`` (the loss terms per step);
- ``loss_curves.png``, ``predictions.png`` (a few validation images, ground truth in green,
  detections in red), ``report.md`` that embeds them.

Distributed: under ``torchrun --nproc_per_node N -m detloss train ...`` (``WORLD_SIZE > 1``)
the process group starts with gloo on CPU and nccl on GPU; each rank draws its share of every
epoch with :class:`~torch.utils.data.DistributedSampler`; ``batch_size`` is per rank; the loss
is normalised by the positives of all ranks and multiplied by the world size before
``backward`` (DDP averages gradients), so N ranks of batch B follow the same trajectory as
one rank of batch N B (the model uses GroupNorm: nothing depends on the local batch).
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from detloss import DetLossError
from detloss.detection.data import CocoDetection, DetectionDataset, SyntheticScenes, YoloDetection, collate
from detloss.detection.evaluate import METRIC_NAMES, as_percent, coco_map, to_coco_detections
from detloss.detection.model import TinyYOLO, kmeans_anchors
from detloss.detection.postprocess import NMS_KINDS, postprocess
from detloss.detection.yolo_loss import YOLOLoss, resolve_loss_name
from detloss.experiments.runs import (
    atomic_write_bytes,
    atomic_write_text,
    run_header,
    save_figure,
    write_csv,
    write_json,
)

__all__ = [
    "TrainConfig",
    "parse_options",
    "train",
    "build_datasets",
    "build_splits",
    "build_model",
    "build_loss_fn",
    "training_loss",
    "evaluate_model",
    "load_checkpoint",
]

CHECKPOINT = "checkpoint.pt"
LOSS_TERMS = ("loss", "box", "obj", "cls")


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


# ------------------------------------------------------------------------------------------
# building blocks (also used by tests and by compare)
# ------------------------------------------------------------------------------------------


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


def build_model(config: TrainConfig, train_set: DetectionDataset) -> TinyYOLO:
    """The detector, its anchors from k-means over the training boxes, weights from ``seed``."""
    levels, per_level = len(config.strides), config.anchors_per_level
    anchors = kmeans_anchors(train_set.box_sizes(), levels * per_level).reshape(levels, per_level, 2)
    torch.manual_seed(config.seed)
    return TinyYOLO(train_set.num_classes, anchors, config.strides, config.width)


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


def unwrap(model: torch.nn.Module) -> TinyYOLO:
    """The detector inside a DDP wrapper (or the detector itself)."""
    core = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if not isinstance(core, TinyYOLO):
        raise DetLossError.bad_argument("train", "model", "a TinyYOLO (or DDP of one)", type(core).__name__)
    return core


def world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def training_loss(
    model: torch.nn.Module,
    loss_fn: YOLOLoss,
    images: torch.Tensor,
    targets: Sequence[Mapping[str, Any]],
    image_size: int,
) -> dict[str, torch.Tensor]:
    """Forward and loss of one batch; ``"objective"`` is what to ``backward``: the loss
    times the world size (DDP averages the gradients of the ranks; the loss is already a
    share of the global loss, see :mod:`detloss.detection.yolo_loss`)."""
    raw = model(images)
    core = unwrap(model)
    out = loss_fn(raw, core.priors(image_size), targets)
    out["objective"] = out["loss"] * world()[1]
    return out


def _flip(images: torch.Tensor, targets: list[dict[str, Any]], flags: torch.Tensor, size: int) -> None:
    for i, flip in enumerate(flags.tolist()):
        if flip:
            images[i] = images[i].flip(-1)
            boxes = targets[i]["boxes"]
            targets[i]["boxes"] = torch.stack((size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]), dim=1)


class _Batches:
    """Batch ``step`` of this rank, a pure function of ``(seed, step)``: exact resumption."""

    def __init__(self, dataset: DetectionDataset, config: TrainConfig, rank: int, world_size: int) -> None:
        from torch.utils.data import DistributedSampler

        self.dataset = dataset
        self.sampler: DistributedSampler[int]
        self.config = config
        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed, drop_last=True
        )
        self.per_epoch = len(self.sampler) // config.batch_size  # >= 1: checked by build_datasets
        self._epoch = -1
        self._indices: list[int] = []
        self._flips = torch.zeros(0, dtype=torch.bool)

    def __call__(self, step: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._indices = list(self.sampler)
            g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._flips = torch.rand(len(self.dataset), generator=g) < 0.5
            self._epoch = epoch
        index = self._indices[k * self.config.batch_size : (k + 1) * self.config.batch_size]
        images, targets = collate([self.dataset[i] for i in index])
        if self.config.flip:
            _flip(images, targets, self._flips[index], self.config.image_size)
        return images, targets


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: DetectionDataset, image_size: int, batch_size: int = 64) -> tuple[
    torch.Tensor, list[dict[str, Any]]
]:
    """Raw outputs ``(M, N, 5 + C)`` of the whole ``dataset`` and its targets."""
    core = unwrap(model)
    was_training = core.training
    core.eval()
    device = next(core.parameters()).device
    raws, targets = [], []
    for start in range(0, len(dataset), batch_size):
        images, batch_targets = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        raws.append(core(images.to(device)).float().cpu())
        targets += batch_targets
    core.train(was_training)
    return torch.cat(raws), targets


def evaluate_model(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    config: TrainConfig,
    nms_kinds: Sequence[str] = NMS_KINDS,
) -> tuple[dict[str, dict[str, float | None]], list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO metrics per NMS kind, and (for the configured NMS) the detections and targets."""
    core = unwrap(model)
    raw, targets = predict(model, dataset, config.image_size)
    priors_cpu = core.priors(config.image_size).to("cpu")
    ground_truth = dataset.coco_ground_truth()
    results: dict[str, dict[str, float | None]] = {}
    kept: list[dict[str, Any]] = []
    for kind in nms_kinds:
        detections = postprocess(
            raw,
            priors_cpu,
            image_size=config.image_size,
            score_threshold=config.score_threshold,
            nms=kind,  # type: ignore[arg-type]
            iou_threshold=config.nms_threshold,
        )
        results[kind] = coco_map(ground_truth, to_coco_detections(detections, targets, dataset.category_ids))
        if kind == config.nms:
            kept = detections
    return results, kept, targets


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`train`; a clear :class:`DetLossError` otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise DetLossError(f"train(): no checkpoint to resume from: {str(path)!r} does not exist") from None
    except Exception as exc:  # corrupt or foreign file
        raise DetLossError(f"train(): checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------


def _setup_distributed(device: str) -> tuple[bool, torch.device]:
    """Start the process group under torchrun; pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    started = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        started = True
    if want_cuda:
        torch.cuda.set_device(local_rank if world_size > 1 else 0)
        return started, torch.device("cuda", torch.cuda.current_device())
    return started, torch.device("cpu")


def _to(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{**t, "boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over another one (finished or interrupted)."""
    from detloss.experiments.runs import check_out_folder

    check_out_folder("train", out)
    if resume and overwrite:
        raise DetLossError.bad_argument("train", "overwrite", "not given together with `resume`", True)
    if resume or overwrite:
        return
    found = [name for name in (CHECKPOINT, "results.json") if (out / name).exists()]
    if found:
        raise DetLossError.bad_argument(
            "train",
            "out",
            "a folder without a run: continue the run with `resume`, or start again with `overwrite`",
            f"{str(out)!r}, which holds {' and '.join(found)}",
        )


def train(
    config: TrainConfig | None,
    out: Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    steps: int | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate, write the run folder; return the ``results.json`` payload.

    ``out`` defaults to a fresh ``runs/train-<stamp>`` (chosen by rank 0); it is created
    once the settings and the data have passed their checks, so a run refused leaves no
    folder. A folder that holds a run (a checkpoint or ``results.json``) is refused unless
    ``resume=True`` (continue it) or ``overwrite=True`` (start again; its files are
    replaced). ``resume=True`` loads ``out/checkpoint.pt`` and continues from its step
    with the checkpoint's own configuration (``config`` may be None; if given it must
    match, ``steps`` and ``device`` aside); ``steps`` raises the total number of steps. A
    finished run resumed again is evaluated again without training. ``on_step(step,
    record)`` is called after each optimisation step (tests use it to interrupt a run).
    Every rank returns the payload; only rank 0 writes.
    """
    started = time.perf_counter()
    device_name = config.device if config is not None else "auto"
    owns_group, device = _setup_distributed(device_name)
    try:
        rank, _ = world()
        if resume and out is None:
            raise DetLossError.bad_argument("train", "out", "the folder of the run to resume", None)
        if out is None and rank == 0:
            from detloss.experiments.runs import new_run_dir

            out = new_run_dir("train", create=False)
        if dist.is_initialized():
            box = [str(out) if out is not None else None]
            dist.broadcast_object_list(box, src=0)
            out = Path(str(box[0]))
        assert out is not None
        out = Path(out)
        _check_out(out, resume, overwrite)
        if resume:
            state = load_checkpoint(out / CHECKPOINT)
            saved = TrainConfig.from_dict(state["config"])
            if config is not None:
                mine, theirs = asdict(config), asdict(saved)
                differ = [k for k in mine if k not in ("steps", "device") and mine[k] != theirs[k]]
                if differ:
                    raise DetLossError(
                        f"train(): cannot resume {str(out)!r}: settings differ from its checkpoint: "
                        + ", ".join(f"{k} {theirs[k]!r} (checkpoint) vs {mine[k]!r}" for k in differ)
                    )
            config = saved
        elif config is None:
            raise DetLossError.bad_argument("train", "config", "a TrainConfig (or resume=True)", None)
        else:
            state = None
        if steps is not None:
            done = int(state["step"]) if state is not None else 0
            if not isinstance(steps, int) or steps < max(done, 1):
                raise DetLossError.bad_argument("train", "steps", f"an integer >= {max(done, 1)}", repr(steps))
            config.steps = steps
        return _train(config, out, state, progress, on_step, args, device, started, overwrite)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    out: Path,
    state: dict[str, Any] | None,
    progress: bool,
    on_step: Callable[[int, dict[str, float]], None] | None,
    args: Mapping[str, Any] | None,
    device: torch.device,
    started: float,
    overwrite: bool = False,
) -> dict[str, Any]:
    rank, world_size = world()
    train_set, val_set = build_datasets(config, world_size)
    if rank == 0:  # every check has passed: now the folder
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in (CHECKPOINT, "results.json", "metrics.json"):
                (out / name).unlink(missing_ok=True)
    model = build_model(config, train_set).to(device)
    loss_fn = build_loss_fn(config)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    history: list[dict[str, float]] = []
    step = 0
    train_seconds = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        step = int(state["step"])
        train_seconds = float(state.get("train_seconds", 0.0))
        if int(state.get("world_size", world_size)) != world_size and rank == 0:
            print(f"detloss train: resuming a run of world size {state['world_size']} with {world_size}")
    net: torch.nn.Module = model
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    batches = _Batches(train_set, config, rank, world_size)

    def checkpoint() -> None:
        if rank == 0:
            _save_checkpoint(
                out / CHECKPOINT,
                {
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "config": asdict(config),
                    "world_size": world_size,
                    "train_seconds": train_seconds,
                },
            )

    bar, task = _progress(progress and rank == 0, config, step)
    net.train()
    tick = time.perf_counter()
    try:
        while step < config.steps:
            images, targets = batches(step)
            terms = training_loss(net, loss_fn, images.to(device), _to(targets, device), config.image_size)
            optimizer.zero_grad(set_to_none=True)
            terms["objective"].backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            values = torch.stack([terms[k].detach().float().reshape(()) for k in LOSS_TERMS])
            if world_size > 1:
                dist.all_reduce(values)  # shares of the global loss add up (on the device: nccl needs it)
            values = values.cpu()
            record = {"step": step + 1, **{k: float(v) for k, v in zip(LOSS_TERMS, values)}}
            record["lr"] = float(scheduler.get_last_lr()[0])
            if not math.isfinite(record["loss"]):
                raise RuntimeError(f"detloss train: the loss is not finite at step {step + 1}: {record}")
            history.append(record)
            step += 1
            if bar is not None:
                bar.update(task, advance=1, terms=_terms_text(history))
            if step % config.checkpoint_every == 0 or step == config.steps:
                train_seconds += time.perf_counter() - tick
                tick = time.perf_counter()
                checkpoint()
            if on_step is not None:
                on_step(step, record)
    finally:
        if bar is not None:
            bar.stop()
    payload: dict[str, Any] = {}
    if rank == 0:
        metrics_by_nms, detections, targets = evaluate_model(model, val_set, config)
        payload = _write_outputs(
            out, config, model, val_set, metrics_by_nms, detections, targets, history, world_size, train_seconds, args,
            started,
        )
    if world_size > 1:
        box = [payload]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
    return payload


def _progress(enabled: bool, config: TrainConfig, done: int) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from detloss.experiments.progress import progress_bar

    bar = progress_bar(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[terms]}"),
    )
    task = bar.add_task(f"train {config.box_loss}/{config.obj_loss}", total=config.steps, completed=done, terms="")
    bar.start()
    return bar, task


def _terms_text(history: list[dict[str, float]], window: int = 20) -> str:
    recent = history[-window:]
    mean = {k: sum(r[k] for r in recent) / len(recent) for k in LOSS_TERMS}
    return "  ".join(f"{k} {mean[k]:.3f}" for k in LOSS_TERMS)


# ------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------


def _write_outputs(
    out: Path,
    config: TrainConfig,
    model: TinyYOLO,
    val_set: DetectionDataset,
    metrics_by_nms: dict[str, dict[str, float | None]],
    detections: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    history: list[dict[str, float]],
    world_size: int,
    train_seconds: float,
    args: Mapping[str, Any] | None,
    started: float,
) -> dict[str, Any]:
    metrics = metrics_by_nms[config.nms]
    payload = run_header("train", dict(args) if args is not None else asdict(config), started)
    payload.update(
        {
            "metrics": metrics,
            "metrics_by_nms": metrics_by_nms,
            "losses": config.losses(),
            "steps": len(history),
            "world_size": world_size,
            "batch_size_per_rank": config.batch_size,
            "train_seconds": round(train_seconds, 3),
            "final_loss": history[-1] if history else None,
            "anchors": model.anchors.cpu().tolist(),
            "strides": list(config.strides),
            "validation": {"source": val_set.source, "images": len(val_set)},
            "config": asdict(config),
            "run_dir": str(out),
        }
    )
    write_json(out / "metrics.json", metrics)
    write_json(out / "results.json", payload)
    write_csv(out / "results.csv", history)
    _plot_losses(out / "loss_curves.png", history)
    _draw_predictions(out / "predictions.png", val_set, detections, targets, config.num_drawn)
    rows = "\n".join(
        f"| {kind} | " + " | ".join(as_percent(m[name]) for name in METRIC_NAMES) + " |"
        for kind, m in metrics_by_nms.items()
    )
    report = f"""# detloss train

Losses: box `{config.box_loss}` (x{config.box_weight}), objectness `{config.obj_loss}` (x{config.obj_weight}),
classes `{config.cls_loss}` (x{config.cls_weight}); {len(history)} steps of batch {config.batch_size} x
{world_size} rank(s), {train_seconds:.1f} s of training. Validation: {val_set.source}.

| NMS | AP (%) | AP50 (%) | AP75 (%) | APs (%) | APm (%) | APl (%) |
|---|---|---|---|---|---|---|
{rows}

(COCO definitions, in percent (`results.json`: 0-1); n/a: no ground truth of that size.)

![loss curves](loss_curves.png)

![predictions](predictions.png)
"""
    atomic_write_text(out / "report.md", report)
    return payload


def _plot_losses(path: Path, history: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in history]
    window = max(1, len(history) // 50)
    for key in LOSS_TERMS:
        values = [r[key] for r in history]
        smooth = []
        for i in range(len(values)):
            chunk = values[max(0, i - window + 1) : i + 1]
            smooth.append(sum(chunk) / len(chunk))
        ax.plot(steps, smooth, label=key if key != "loss" else "total (weighted)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving mean over {window} steps)")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def _draw_predictions(
    path: Path,
    dataset: DetectionDataset,
    detections: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    count: int,
    min_score: float = 0.3,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patheffects as effects
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    # a dark outline under every line and letter keeps them readable on any image colour
    outline = [effects.withStroke(linewidth=3.0, foreground="black")]
    truth, found = "white", "#ff3d7f"
    count = max(1, min(count, len(dataset)))
    cols = min(count, 3)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= count:
            continue
        image, _ = dataset[i]
        ax.imshow(image.permute(1, 2, 0).numpy(), extent=(0, image.shape[2], image.shape[1], 0))
        for box in targets[i]["boxes"].tolist():
            ax.add_patch(
                Rectangle(
                    box[:2], box[2] - box[0], box[3] - box[1], fill=False, color=truth, lw=1.3, ls=(0, (3, 2)),
                    path_effects=outline,
                )
            )
        det = detections[i]
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            if score < min_score:
                continue
            ax.add_patch(
                Rectangle(
                    box[:2], box[2] - box[0], box[3] - box[1], fill=False, color=found, lw=1.6, path_effects=outline
                )
            )
            ax.text(
                box[0], box[1], f"{dataset.class_names[label]} {score:.2f}", color="white", fontsize=6, va="bottom",
                bbox={"facecolor": "black", "alpha": 0.65, "pad": 0.8, "edgecolor": "none"}, clip_on=True,
            )
    fig.suptitle(
        f"dashed white: ground truth; solid pink: detections with score >= {min_score} (class, score)", fontsize=9
    )
    save_figure(fig, path)
    plt.close(fig)

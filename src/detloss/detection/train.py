"""Training: one process or many (``torchrun``), checkpoints, ``--resume``, the run folder.

``train(config, out)`` trains the detector of ``config.head``,
:class:`~detloss.detection.model.TinyYOLO` with :class:`~detloss.detection.yolo_loss.YOLOLoss`
(``"yolov3"``) or :class:`~detloss.detection.anchor_free.AnchorFreeYOLO` with
:class:`~detloss.detection.anchor_free_loss.AnchorFreeLoss` (``"anchor-free"``), evaluates
COCO mAP on the validation set with NMS and with DIoU-NMS, and writes (rank 0 only) into
``out``:

- ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end (model, optimizer,
  schedule, loss history, configuration): ``resume=True`` continues from it, exactly;
- ``metrics.json``, ``results.json``, ``results.csv``, ``loss_curves.png``,
  ``predictions.png`` and ``report.md`` (:mod:`detloss.detection.outputs`).

The settings are a :class:`~detloss.detection.options.TrainConfig`
(:mod:`detloss.detection.options`: their checks, the data and the loss they build).

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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from detloss import DetLossError
from detloss.detection.anchor_free import AnchorFreeYOLO
from detloss.detection.anchor_free_loss import AnchorFreeLoss
from detloss.detection.data import DetectionDataset, collate
from detloss.detection.evaluate import coco_map, to_coco_detections
from detloss.detection.model import TinyYOLO, kmeans_anchors
from detloss.detection.options import TrainConfig, build_datasets, build_loss_fn, build_splits, parse_options
from detloss.detection.outputs import RunOutputs, write_outputs
from detloss.detection.postprocess import NMS_KINDS, postprocess
from detloss.detection.yolo_loss import YOLOLoss
from detloss.experiments.runs import atomic_write_bytes

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


# ------------------------------------------------------------------------------------------
# building blocks (also used by tests and by compare)
# ------------------------------------------------------------------------------------------


def build_model(config: TrainConfig, train_set: DetectionDataset) -> TinyYOLO | AnchorFreeYOLO:
    """The detector of ``config.head``, weights from ``seed``: the YOLOv3 head with its anchors
    from k-means over the training boxes, or the anchor-free head (``reg_max`` bins, or none
    with ``dfl=False``)."""
    if config.head == "anchor-free":
        torch.manual_seed(config.seed)
        reg_max = config.reg_max if config.dfl else None
        return AnchorFreeYOLO(train_set.num_classes, config.strides, config.width, reg_max)
    levels, per_level = len(config.strides), config.anchors_per_level
    anchors = kmeans_anchors(train_set.box_sizes(), levels * per_level).reshape(levels, per_level, 2)
    torch.manual_seed(config.seed)
    return TinyYOLO(train_set.num_classes, anchors, config.strides, config.width)


def unwrap(model: torch.nn.Module) -> TinyYOLO | AnchorFreeYOLO:
    """The detector inside a DDP wrapper (or the detector itself)."""
    core = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if not isinstance(core, (TinyYOLO, AnchorFreeYOLO)):
        expected = "a TinyYOLO or AnchorFreeYOLO (or DDP of one)"
        raise DetLossError.bad_argument("train", "model", expected, type(core).__name__)
    return core


def world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def training_loss(
    model: torch.nn.Module,
    loss_fn: YOLOLoss | AnchorFreeLoss,
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
    """Raw outputs ``(M, N, K)`` of the whole ``dataset`` and its targets."""
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

    terms_names = loss_fn.terms
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
            values = torch.stack([terms[k].detach().float().reshape(()) for k in terms_names])
            if world_size > 1:
                dist.all_reduce(values)  # shares of the global loss add up (on the device: nccl needs it)
            values = values.cpu()
            record = {"step": step + 1, **{k: float(v) for k, v in zip(terms_names, values)}}
            record["lr"] = float(scheduler.get_last_lr()[0])
            if not math.isfinite(record["loss"]):
                raise RuntimeError(f"detloss train: the loss is not finite at step {step + 1}: {record}")
            history.append(record)
            step += 1
            if bar is not None:
                bar.update(task, advance=1, terms=_terms_text(history, terms_names))
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
        payload = write_outputs(
            RunOutputs(
                out=out,
                config=config,
                model=model,
                val_set=val_set,
                metrics_by_nms=metrics_by_nms,
                detections=detections,
                targets=targets,
                history=history,
                world_size=world_size,
                train_seconds=train_seconds,
                args=args,
                started=started,
            )
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
    task = bar.add_task(f"train {run_label(config)}", total=config.steps, completed=done, terms="")
    bar.start()
    return bar, task


def run_label(config: TrainConfig) -> str:
    """What the progress line calls a run: ``ciou/binary_cross_entropy`` (box/objectness
    losses, YOLOv3 head) or ``anchor-free tal ciou/varifocal dfl`` (assigner, box/class
    losses, DFL on or off)."""
    if config.head == "anchor-free":
        return f"anchor-free {config.assigner} {config.box_loss}/{config.cls_loss} {'dfl' if config.dfl else 'no-dfl'}"
    return f"{config.box_loss}/{config.obj_loss}"


def _terms_text(history: list[dict[str, float]], names: Sequence[str], window: int = 20) -> str:
    recent = history[-window:]
    mean = {k: sum(r[k] for r in recent) / len(recent) for k in names}
    return "  ".join(f"{k} {mean[k]:.3f}" for k in names)

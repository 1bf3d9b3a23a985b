"""The run folder of ``detloss train``: ``results.json`` and the other files, the figures, ``report.md``.

- ``metrics.json`` (the metrics with the configured NMS), ``results.json`` (the stable keys
  docs/guides/experiments.md lists: ``metrics``, ``losses``, ``steps``, ``world_size``, plus
  ``metrics_by_nms``, ``anchors``, ``train_seconds``, ...), ``results.csv`` (the loss terms per step), all 0-1;
- ``loss_curves.png``, ``predictions.png`` (a few validation images: ground truth dashed
  white, detections solid pink, each outlined so that it reads on any image), and
  ``report.md`` that embeds them, with COCO AP in percent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from detloss.detection.anchor_free import AnchorFreeYOLO
from detloss.detection.data import DetectionDataset
from detloss.detection.evaluate import METRIC_NAMES, as_percent
from detloss.detection.model import TinyYOLO
from detloss.detection.options import TrainConfig
from detloss.experiments.runs import atomic_write_text, run_header, save_figure, write_csv, write_json

__all__ = ["RunOutputs", "write_outputs"]


@dataclass(frozen=True)
class RunOutputs:
    """Everything the run folder is written from, once training and evaluation are done."""

    out: Path
    config: TrainConfig
    model: TinyYOLO | AnchorFreeYOLO
    val_set: DetectionDataset
    #: COCO metrics (0-1) per NMS kind.
    metrics_by_nms: dict[str, dict[str, float | None]]
    #: Detections and targets of the validation images, with the configured NMS.
    detections: list[dict[str, Any]]
    targets: list[dict[str, Any]]
    history: list[dict[str, float]]
    world_size: int
    train_seconds: float
    #: The arguments recorded in ``results.json`` (None: the configuration).
    args: Mapping[str, Any] | None
    #: ``time.perf_counter()`` when the command started.
    started: float


def write_outputs(run: RunOutputs) -> dict[str, Any]:
    """Write ``metrics.json``, ``results.json``, ``results.csv``, the figures and
    ``report.md`` into ``run.out``; return the ``results.json`` payload."""
    out, config, history, val_set = run.out, run.config, run.history, run.val_set
    metrics_by_nms, world_size, train_seconds = run.metrics_by_nms, run.world_size, run.train_seconds
    metrics = metrics_by_nms[config.nms]
    payload = run_header("train", dict(run.args) if run.args is not None else asdict(config), run.started)
    payload.update(
        {
            "metrics": metrics,
            "metrics_by_nms": metrics_by_nms,
            "head": config.head,
            "assigner": config.assigner,
            "dfl": config.dfl,
            "losses": config.losses(),
            "steps": len(history),
            "world_size": world_size,
            "batch_size_per_rank": config.batch_size,
            "train_seconds": round(train_seconds, 3),
            "final_loss": history[-1] if history else None,
            "anchors": run.model.anchors.cpu().tolist() if isinstance(run.model, TinyYOLO) else None,
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
    _draw_predictions(out / "predictions.png", val_set, run.detections, run.targets, config.num_drawn)
    rows = "\n".join(
        f"| {kind} | " + " | ".join(as_percent(m[name]) for name in METRIC_NAMES) + " |"
        for kind, m in metrics_by_nms.items()
    )
    report = f"""# detloss train

{_losses_text(config)}; {len(history)} steps of batch {config.batch_size} x
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


def _losses_text(config: TrainConfig) -> str:
    """The head and its losses, for ``report.md``."""
    if config.head == "anchor-free":
        dfl = f"DFL on (bins 0..{config.reg_max}, x{config.dfl_weight})" if config.dfl else "DFL off"
        return (
            f"Anchor-free head, assigner `{config.assigner}`: box `{config.box_loss}` (x{config.box_weight}),\n"
            f"classes `{config.cls_loss}` (x{config.cls_weight}), {dfl}"
        )
    return (
        f"Losses: box `{config.box_loss}` (x{config.box_weight}), "
        f"objectness `{config.obj_loss}` (x{config.obj_weight}),\nclasses `{config.cls_loss}` (x{config.cls_weight})"
    )


def _plot_losses(path: Path, history: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in history]
    window = max(1, len(history) // 50)
    for key in [k for k in (history[0] if history else {}) if k not in ("step", "lr")]:
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

"""The ``detloss`` command-line tool (typer). Every command uses only the public API.

Errors in what the user typed give one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.exceptions import TyperException

from detloss.errors import DetLossError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Object-detection losses: compare, plot, simulate, benchmark, train.",
)

def _show_version(value: bool) -> None:
    if value:
        import platform

        import torch

        from detloss import __version__

        typer.echo(f"detloss {__version__} (torch {torch.__version__}, python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_show_version)
    ] = False,
) -> None:
    """Object-detection losses: compare, plot, simulate, benchmark, train."""


#: Options every loss takes, left out of ``detloss list``.
_COMMON_OPTIONS = ("weight", "reduction", "avg_factor", "box_format")


def loss_defaults(key: str) -> str:
    """The hyper-parameters of loss ``key`` with their defaults, from its signature.

    Example:
        >>> loss_defaults("sigmoid_focal")
        'alpha=0.25, gamma=2.0'
    """
    import inspect

    from detloss.registry import get_spec

    shown = []
    for p in inspect.signature(get_spec(key).function).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name not in _COMMON_OPTIONS:
            shown.append(f"{p.name}=" + ("(required)" if p.default is p.empty else repr(p.default)))
    return ", ".join(shown)


def _markup_free(text: str) -> str:
    return text.replace("[", "\\[")


@app.command("list")
def list_losses() -> None:
    """Every registered loss: its key, module, paper and defaults."""
    from rich.box import SIMPLE_HEAD
    from rich.console import Console
    from rich.table import Table

    from detloss.registry import available_losses, get_spec

    table = Table(
        title="detloss losses: build_loss(key, ...) or the module",
        caption="every loss also takes weight, reduction='mean' and avg_factor; box losses box_format='xyxy'",
        box=SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("key / module", no_wrap=True)
    table.add_column("paper", ratio=3)
    table.add_column("defaults", ratio=2)
    for i, key in enumerate(available_losses()):
        spec = get_spec(key)
        if i:
            table.add_section()
        defaults = "\n".join(loss_defaults(key).split(", "))
        table.add_row(f"{key}\n[dim]{spec.module.__name__}[/]", _markup_free(f"{spec.paper} {spec.year}"), defaults)
    Console().print(table)


DEMO_GT = "120,80,200,150"
DEMO_PREDS = ("300,90,120,160", "140,100,160,120", "100,60,240,100", "150,95,50,200")
#: ``detloss boxes --rotated``: cx, cy, w, h, angle in degrees. The last prediction is the
#: ground truth turned by 180 degrees: the same box.
DEMO_ROTATED_GT = "200,150,160,80,30"
DEMO_ROTATED_PREDS = ("230,165,160,80,60", "200,150,80,160,30", "250,190,120,50,-15", "200,150,160,80,210")
_BOX_NUMBERS = {"cxcywha": 5, "xyxyxyxy": 8}


def parse_box(text: str, name: str, box_format: str = "xywh") -> list[float]:
    """``"x,y,w,h"`` -> four floats, else a one-line usage error naming the option: four
    finite numbers, a width and a height >= 0 (``xyxy``: ``x2 >= x1``, ``y2 >= y1``); five
    for ``cxcywha`` (``cx,cy,w,h,angle``), eight for ``xyxyxyxy``."""
    count = _BOX_NUMBERS.get(box_format, 4)
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(v == v and abs(v) != float("inf") for v in values):
        words = {4: "four", 5: "five", 8: "eight"}
        message = f"expected {words[count]} comma-separated finite numbers ({box_format}), got {text!r}"
        raise typer.BadParameter(message, param_hint=name)
    if box_format == "xyxyxyxy":
        return values
    if box_format == "xyxy" and (values[2] < values[0] or values[3] < values[1]):
        message = f"expected x1,y1,x2,y2 with x2 >= x1 and y2 >= y1 (xyxy), got {text!r}"
        raise typer.BadParameter(message, param_hint=name)
    if box_format != "xyxy" and (values[2] < 0 or values[3] < 0):
        raise typer.BadParameter(f"expected a width and a height >= 0 ({box_format}), got {text!r}", param_hint=name)
    return values


def echo_error(message: str) -> None:
    typer.echo(f"detloss: error: {message}", err=True)


@app.command()
def boxes(
    gt: Annotated[str | None, typer.Option(help="Ground-truth box, four comma-separated numbers.")] = None,
    pred: Annotated[list[str] | None, typer.Option(help="Predicted box (repeat for several).")] = None,
    box_format: Annotated[
        str | None,
        typer.Option(
            "--format", help="xywh (left, top, w, h; default), xyxy or cxcywh; --rotated: cxcywha (default), xyxyxyxy."
        ),
    ] = None,
    rotated: Annotated[
        bool, typer.Option("--rotated", help="Rotated boxes: cx,cy,w,h,angle (or the four corners).")
    ] = False,
    angle_unit: Annotated[
        str, typer.Option(help="--rotated: the angle's unit, deg or rad (the demo boxes are in degrees).")
    ] = "deg",
    out: Annotated[Path | None, typer.Option(help="Draw the boxes to this picture (.png, .jpg, .pdf or .svg).")] = None,
) -> None:
    """Print IoU, GIoU, DIoU, CIoU, EIoU, SIoU and their losses for each prediction; with
    --rotated, the rotated IoU, GIoU, the Gaussian distances, KFIoU and their losses."""
    from rich.box import SIMPLE_HEAD
    from rich.console import Console
    from rich.table import Table

    from detloss._checks import check_choice
    from detloss.boxes import ANGLE_UNITS, BOX_FORMATS, IOU_KINDS, ROTATED_FORMATS
    from detloss.experiments.boxes import ROTATED_COLUMNS, box_table, draw_boxes, draw_rotated_boxes, rotated_box_table
    from detloss.experiments.runs import check_figure_path

    box_format = box_format or ("cxcywha" if rotated else "xywh")
    check_choice("detloss boxes", "--format", box_format, ROTATED_FORMATS if rotated else BOX_FORMATS)
    if rotated:
        check_choice("detloss boxes", "--angle-unit", angle_unit, ANGLE_UNITS)
    demo_gt, demo_preds = (DEMO_ROTATED_GT, DEMO_ROTATED_PREDS) if rotated else (DEMO_GT, DEMO_PREDS)
    target = parse_box(gt or demo_gt, "--gt", box_format)
    preds = [parse_box(p, "--pred", box_format) for p in (pred or list(demo_preds))]
    if out is not None:
        check_figure_path("detloss boxes", "--out", out)
    gt_text = ",".join(f"{v:g}" for v in target)
    if rotated:
        rows = rotated_box_table(target, preds, box_format, angle_unit)
        columns = ROTATED_COLUMNS
        unit = f", {angle_unit}" if box_format == "cxcywha" else ""
        title = f"ground truth {gt_text} ({box_format}{unit})"
        caption = "loss: the detloss loss with its defaults (rotated_iou, probiou, kld, gwd, kfiou)"
    else:
        rows = box_table(target, preds, box_format)
        columns = tuple((kind, kind[:-3].upper() + "IoU") for kind in IOU_KINDS)
        title, caption = f"ground truth {gt_text} ({box_format})", "loss = 1 - similarity"
    table = Table(title=title, caption=caption, box=SIMPLE_HEAD, pad_edge=False)
    table.add_column("prediction", overflow="fold")
    for _, header in columns:
        table.add_column(header, justify="right", no_wrap=True, min_width=7)
    for i, row in enumerate(rows):
        if i:
            table.add_section()
        table.add_row(f"{i + 1}: " + ",".join(f"{v:g}" for v in row["pred"]), *(f"{row[k]:.4f}" for k, _ in columns))
        table.add_row("   loss", *(f"{row[k + '_loss']:.4f}" for k, _ in columns), style="dim")
    Console().print(table)  # as wide as the terminal (80 columns in a file or a pipe)
    if out is not None:
        if rotated:
            draw_rotated_boxes(target, preds, box_format, angle_unit, out, rows)
        else:
            draw_boxes(target, preds, box_format, out, rows)
        typer.echo(f"picture: {out}")


@app.command()
def simulate(
    points: Annotated[
        int, typer.Option(help="Anchor centres (343 cases each); the paper's 5000 = 1,715,000 cases.")
    ] = 5000,
    losses: Annotated[
        str, typer.Option(help="Comma-separated box-loss keys, 'classic' (iou,giou,diou,ciou) or 'all'.")
    ] = "classic",
    gradient: Annotated[
        str, typer.Option(help="exact (the losses' true gradients), paper (the authors' published code), or both.")
    ] = "exact",
    steps: Annotated[int, typer.Option(help="Iterations T (learning rate drops at 0.8 T and 0.9 T).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the anchor centres.")] = 0,
    dtype: Annotated[str, typer.Option(help="float64 (as the authors' MATLAB) or float32.")] = "float64",
    chunk_points: Annotated[int, typer.Option(help="Anchor centres per vectorised, checkpointed chunk.")] = 400,
    workers: Annotated[
        int | None, typer.Option(help="Processes computing chunks in parallel (default: one per CPU, at most 8).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/simulate-<stamp>).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted run in --out (default: the newest runs/simulate-*).")
    ] = False,
) -> None:
    """The DIoU paper's box-regression simulation: E(t) curves, final-error maps, report.md."""
    from detloss.experiments.simulation import Setup, default_workers, parse_gradients, parse_losses
    from detloss.experiments.simulation import simulate as run_simulation

    setup = Setup(points=points, steps=steps, seed=seed, dtype=dtype, chunk_points=chunk_points)
    try:
        folder = run_simulation(
            losses=parse_losses(losses),
            gradients=parse_gradients(gradient),
            setup=setup,
            out=out,
            resume=resume,
            workers=default_workers() if workers is None else workers,
        )
    except KeyboardInterrupt:
        echo_error("interrupted; continue with: detloss simulate --resume" + (f" --out {out}" if out else ""))
        raise typer.Exit(130) from None
    typer.echo(f"report: {folder / 'report.md'}")


plot_app = typer.Typer(no_args_is_help=True, help="Pictures: loss curves, box configurations, loss landscapes.")
app.add_typer(plot_app, name="plot")


@plot_app.command("curves")
def plot_curves_command(
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/plot-curves-<stamp>).")] = None,
) -> None:
    """Regression losses and gradients, CE vs focal, QFL and varifocal against their targets."""
    from detloss.experiments.curves import plot_curves

    typer.echo(f"report: {plot_curves(out) / 'report.md'}")


@plot_app.command("boxes")
def plot_boxes_command(
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/plot-boxes-<stamp>).")] = None,
) -> None:
    """Disjoint, touching and nested boxes with IoU, GIoU, DIoU and CIoU of each."""
    from detloss.experiments.box_grid import plot_boxes

    typer.echo(f"report: {plot_boxes(out) / 'report.md'}")


@plot_app.command("landscape")
def plot_landscape_command(
    loss: Annotated[str, typer.Option(help="Registry key of a box loss.")] = "ciou",
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/plot-landscape-<stamp>).")] = None,
) -> None:
    """A box loss and its gradient field as a prediction moves and stretches around a target."""
    from detloss.experiments.landscape import plot_landscape

    typer.echo(f"report: {plot_landscape(loss, out) / 'report.md'}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's results.")] = Path("runs/demo"),
) -> None:
    """Run the built-in demo: the boxes table and picture, a quick simulate, and the plots."""
    from detloss.experiments.runs import new_run_dir

    new_run_dir("demo", out)
    boxes(gt=DEMO_GT, pred=list(DEMO_PREDS), box_format="xywh", out=out / "boxes.png")
    from detloss.experiments.box_grid import plot_boxes
    from detloss.experiments.curves import plot_curves
    from detloss.experiments.landscape import plot_landscape
    from detloss.experiments.simulation import GRADIENTS, PAPER_LOSSES, Setup, default_workers
    from detloss.experiments.simulation import simulate as run_simulation

    quick = Setup(points=300, chunk_points=100)
    folder = run_simulation(
        losses=PAPER_LOSSES, gradients=GRADIENTS, setup=quick, out=out / "simulate", workers=default_workers()
    )
    plots = (plot_curves(out / "plot-curves"), plot_boxes(out / "plot-boxes"))
    for plot in (*plots, plot_landscape("ciou", out / "plot-landscape")):
        typer.echo(f"plot: {plot / 'report.md'}")
    report = folder / "report.md"
    typer.echo(f"demo results: {out.resolve()}")
    typer.echo(f"simulation report: {report.resolve()}")


@app.command()
def fuzz(
    cases: Annotated[int, typer.Option(help="Number of cases, spread evenly over losses and dtype modes.")] = 10_000,
    losses: Annotated[
        list[str] | None, typer.Option(help="Registry keys (comma-separated or repeated); default all.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed: case i of seed s is always the same case.")] = 0,
    jobs: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    backend: Annotated[str | None, typer.Option(help="reference, fused, native or compiled (default fastest).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/fuzz-<stamp>).")] = None,
) -> None:
    """Adversarial inputs for every loss: non-finite values and gradients, mismatches vs float64 (exit 1 if any)."""
    from detloss.experiments.fuzz import fuzz_report, parse_losses

    summary, _ = fuzz_report(parse_losses(losses), cases, seed, out, jobs=jobs, backend=backend)
    if summary.failed:
        raise typer.Exit(1)


_LossOpt = Annotated[
    list[str] | None, typer.Option(help="Loss hyper-parameter KEY=VALUE (repeat), e.g. alpha=0.5, alpha=none.")
]
# The data options of train, compare and convert-dataset: synthetic scenes (the default), COCO
# json files with their image folders, or a YOLO dataset by its data.yaml.
_ImageSize = Annotated[int, typer.Option(help="Square input size in pixels (a multiple of 16).")]
_TrainImages = Annotated[int, typer.Option(help="Synthetic training scenes.")]
_ValImages = Annotated[int, typer.Option(help="Synthetic validation scenes.")]
_DataSeed = Annotated[int, typer.Option(help="Seed of the synthetic scenes.")]
_TrainJson = Annotated[Path | None, typer.Option(help="COCO json of your training set (with --val-json).")]
_TrainImageDir = Annotated[Path | None, typer.Option(help="Its image folder (default: beside the json).")]
_ValJson = Annotated[Path | None, typer.Option(help="COCO json of your validation set.")]
_ValImageDir = Annotated[Path | None, typer.Option(help="Its image folder (default: beside the json).")]
_Data = Annotated[
    Path | None, typer.Option(help="A YOLO dataset: its data.yaml (ultralytics' layout: images/, labels/*.txt).")
]
_Head = Annotated[
    str, typer.Option(help="yolov3 (anchors + objectness) or anchor-free (YOLOv8-style: DFL, no objectness).")
]
_RegMax = Annotated[int | None, typer.Option(help="Anchor-free head with DFL: bins 0..R per side (default 16).")]
_BoxWeight = Annotated[float | None, typer.Option(help="Weight of the box term (yolov3 5, anchor-free 7.5).")]
_ClsWeight = Annotated[float | None, typer.Option(help="Weight of the class term (yolov3 1, anchor-free 0.5).")]
_DflWeight = Annotated[float | None, typer.Option(help="Weight of the DFL term (anchor-free: 1.5).")]


def check_device(where: str, device: str, choices: tuple[str, ...] = ("auto", "cpu", "cuda")) -> None:
    """``--device``: one of ``choices``, and ``cuda`` only where this torch can use a GPU."""
    import torch

    from detloss._checks import check_choice

    check_choice(where, "--device", device, choices)
    if device == "cuda" and not torch.cuda.is_available():
        cuda = torch.version.cuda
        build = "built without CUDA" if cuda is None else f"built with CUDA {cuda} but sees no GPU"
        others = " or ".join(c for c in choices if c != "cuda")
        raise DetLossError.bad_argument(where, "--device", f"{others} (torch {torch.__version__} is {build})", "cuda")


def check_training_options(where: str, *, lr: float, width: int, nms_threshold: float, device: str) -> None:
    """The options of ``train`` and ``compare`` that would otherwise fail deep inside torch."""
    from detloss._checks import check_range

    check_range(where, "--lr", lr, 0.0, low_open=True)
    check_range(where, "--width", width, 1)
    check_range(where, "--nms-threshold", nms_threshold, 0.0, 1.0)
    check_device(where, device)


@app.command()
def train(
    head: _Head = "yolov3",
    assigner: Annotated[
        str | None, typer.Option(help="Anchor-free head: tal (default), atss or simota (yolov3: its own).")
    ] = None,
    box_loss: Annotated[str, typer.Option(help="Box loss: an IoU-family key, or l2 / smooth_l1 (encoded).")] = "ciou",
    obj_loss: Annotated[
        str | None, typer.Option(help="Objectness loss (yolov3 head): bce (default), focal, varifocal, quality_focal.")
    ] = None,
    cls_loss: Annotated[str, typer.Option(help="Class loss: bce, focal, varifocal, quality_focal.")] = "bce",
    dfl: Annotated[
        bool | None, typer.Option("--dfl/--no-dfl", help="Anchor-free head: DFL box branch (default) or 4 distances.")
    ] = None,
    reg_max: _RegMax = None,
    box_weight: _BoxWeight = None,
    obj_weight: Annotated[float | None, typer.Option(help="Weight of the objectness term (yolov3: 1).")] = None,
    cls_weight: _ClsWeight = None,
    dfl_weight: _DflWeight = None,
    box_option: _LossOpt = None,
    obj_option: _LossOpt = None,
    cls_option: _LossOpt = None,
    steps: Annotated[int | None, typer.Option(help="Optimisation steps (default 1500; --resume: new total).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step and per process.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (warm-up, then cosine).")] = 1e-2,
    seed: Annotated[int, typer.Option(help="Seed of the weights, data order and flips.")] = 0,
    image_size: _ImageSize = 64,
    train_images: _TrainImages = 4000,
    val_images: _ValImages = 500,
    data_seed: _DataSeed = 0,
    train_json: _TrainJson = None,
    train_image_dir: _TrainImageDir = None,
    val_json: _ValJson = None,
    val_image_dir: _ValImageDir = None,
    data: _Data = None,
    width: Annotated[int, typer.Option(help="Channels of the first convolution (the network scales with it).")] = 16,
    nms: Annotated[str, typer.Option(help="nms or diou_nms for metrics.json (results.json has both).")] = "nms",
    nms_threshold: Annotated[float, typer.Option(help="(DIoU-)NMS threshold; the DIoU paper's is 0.45.")] = 0.45,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/train-<stamp>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint, its settings.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start again in an --out that holds a run, replacing it.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Train the tiny YOLO-style detector with the chosen losses; COCO mAP, curves, pictures.

    Heads: yolov3 (anchors, objectness) or anchor-free (YOLOv8-style: DFL, --assigner tal|atss|simota).
    Data: synthetic scenes, or --train-json/--val-json (COCO), or --data (YOLO data.yaml).
    Distributed: torchrun --nproc_per_node 2 -m detloss train ... (gloo on CPU, nccl on GPU).
    """
    settings = {k: v for k, v in locals().items() if k not in ("out", "resume", "overwrite", "progress", "steps")}
    from detloss.detection.options import TrainConfig
    from detloss.detection.train import train as run_train

    check_training_options("detloss train", lr=lr, width=width, nms_threshold=nms_threshold, device=device)
    config = None if resume else TrainConfig.from_cli(settings, steps)
    result = run_train(
        config,
        out,
        resume=resume,
        overwrite=overwrite,
        steps=steps,
        progress=progress,
        args={**settings, "steps": steps},
    )
    if os.environ.get("RANK", "0") == "0":  # the only process, or rank 0 of torchrun
        from detloss.detection.evaluate import as_percent

        metrics = result["metrics"]
        typer.echo("  ".join(f"{name} {as_percent(metrics[name])}" for name in ("AP", "AP50", "AP75")) + "  (%)")
        typer.echo(f"report: {Path(result['run_dir']) / 'report.md'}")


@app.command()
def compare(
    head: _Head = "yolov3",
    box_loss: Annotated[str | None, typer.Option(help="Comma-separated box losses (yolov3: l2,iou,giou,diou,ciou; "
                                                      "anchor-free: ciou).")] = None,
    obj_loss: Annotated[
        str | None, typer.Option(help="Comma-separated objectness losses, yolov3 head (default bce).")
    ] = None,
    cls_loss: Annotated[
        str, typer.Option(help="Class loss: one for yolov3; comma-separated for anchor-free (bce,focal,...).")
    ] = "bce",
    dfl: Annotated[str | None, typer.Option(help="Anchor-free head: DFL on, off or on,off (default on).")] = None,
    assigner: Annotated[
        str | None, typer.Option(help="Anchor-free head: comma-separated assigners, tal, atss, simota (default tal).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Models per setting (seeds 0..n-1).")] = 2,
    reg_max: _RegMax = None,
    box_weight: _BoxWeight = None,
    cls_weight: _ClsWeight = None,
    dfl_weight: _DflWeight = None,
    obj_option: _LossOpt = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps per model.")] = 600,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 1e-2,
    image_size: _ImageSize = 64,
    train_images: _TrainImages = 4000,
    val_images: _ValImages = 500,
    data_seed: _DataSeed = 0,
    train_json: _TrainJson = None,
    train_image_dir: _TrainImageDir = None,
    val_json: _ValJson = None,
    val_image_dir: _ValImageDir = None,
    data: _Data = None,
    width: Annotated[int, typer.Option(help="Channels of the first convolution.")] = 16,
    nms_threshold: Annotated[float, typer.Option(help="Threshold of NMS and DIoU-NMS.")] = 0.45,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Folder (default runs/compare-<stamp>); reused: resumes.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train one model per setting and seed; the AP table with NMS and DIoU-NMS rows.

    A setting: box x objectness losses (--head yolov3, one --cls-loss), or assigners x box
    losses x class losses x DFL on/off (--head anchor-free).
    Data: as for train (synthetic scenes, --train-json/--val-json, or --data).
    """
    settings = {
        k: v
        for k, v in locals().items()
        if k not in ("out", "progress", "box_loss", "obj_loss", "cls_loss", "dfl", "assigner", "seeds")
    }
    from detloss._checks import check_choice, check_range
    from detloss.detection.compare import compare as run_compare
    from detloss.detection.compare import plan_settings
    from detloss.detection.options import TrainConfig
    from detloss.experiments.runs import new_run_dir

    check_range("detloss compare", "--seeds", seeds, 1)
    check_training_options("detloss compare", lr=lr, width=width, nms_threshold=nms_threshold, device=device)
    if box_loss is None:
        box_loss = "ciou" if head == "anchor-free" else "l2,iou,giou,diou,ciou"
    lists = {name: [v for v in (text or "").split(",") if v] for name, text in (
        ("box_loss", box_loss), ("obj_loss", obj_loss), ("cls_loss", cls_loss), ("assigner", assigner), ("dfl", dfl))}
    switches = {"on": True, "off": False}
    for word in lists["dfl"]:
        check_choice("detloss compare", "--dfl", word, tuple(switches))
    first: dict[str, Any] = {name: values[0] for name, values in lists.items() if values and name != "dfl"}
    if lists["dfl"]:
        first["dfl"] = switches[lists["dfl"][0]]
    base = TrainConfig.from_cli({**settings, **first}, steps)
    # every setting is checked before a run folder is created
    plan = (lists["box_loss"], lists["obj_loss"], lists["cls_loss"], [switches[w] for w in lists["dfl"]],
            lists["assigner"])
    plan_settings(base, *plan)
    folder = new_run_dir("compare", out, create=False)  # created by compare once the data pass their checks
    args = {"box_loss": box_loss, "obj_loss": obj_loss, "cls_loss": cls_loss, "dfl": dfl, "assigner": assigner,
            "seeds": seeds, **settings}
    result = run_compare(plan[0], plan[1], seeds, base, folder, cls_losses=plan[2], dfl=plan[3], assigners=plan[4],
                         progress=progress, args=args)
    typer.echo(f"{len(result['rows'])} rows; report: {folder / 'report.md'}")


@app.command("convert-dataset")
def convert_dataset(
    out: Annotated[Path, typer.Option(help="A new (or empty) folder for the converted dataset.")],
    to: Annotated[
        str | None, typer.Option(help="yolo or coco (default: the other format; synthetic scenes: yolo).")
    ] = None,
    image_size: _ImageSize = 64,
    train_images: _TrainImages = 4000,
    val_images: _ValImages = 500,
    data_seed: _DataSeed = 0,
    train_json: _TrainJson = None,
    train_image_dir: _TrainImageDir = None,
    val_json: _ValJson = None,
    val_image_dir: _ValImageDir = None,
    data: _Data = None,
) -> None:
    """Write a dataset in the other format: YOLO (data.yaml) -> COCO, COCO -> YOLO.

    The data options are those of train: --data (YOLO; its test split too, if any), or
    --train-json/--val-json (COCO), or none (the synthetic scenes train would use).
    """
    from detloss._checks import check_choice
    from detloss.detection.formats import DATASET_FORMATS
    from detloss.detection.options import TrainConfig, build_splits
    from detloss.experiments.runs import check_out_folder

    where = "detloss convert-dataset"
    settings = {k: v for k, v in locals().items() if k not in ("out", "to", "where")}
    check_out_folder(where, out)
    if out.is_dir() and any(out.iterdir()):
        raise DetLossError.bad_argument(where, "--out", "a new or empty folder", repr(str(out)))
    config = TrainConfig.from_cli({k: v for k, v in settings.items() if k in TrainConfig.__dataclass_fields__})
    target = to if to is not None else "coco" if config.data_source() == "yolo" else "yolo"
    check_choice(where, "--to", target, DATASET_FORMATS)
    for split, dataset in build_splits(config, test=True).items():
        done = dataset.export(out, target, split=split)
        left_out = f", {done.skipped} crowd or empty annotations left out (YOLO has none)" if done.skipped else ""
        typer.echo(f"{split}: {done.images} images, {done.boxes} boxes{left_out}: {done.path}")


@app.command()
def bench(
    losses: Annotated[
        str,
        typer.Option(help="Comma-separated losses (IoU family, binary family, rotated, pairwise-*) and compiled-step."),
    ] = (
        "iou,giou,diou,ciou,eiou,siou,sigmoid_focal,quality_focal,varifocal,binary_cross_entropy,"
        "probiou,kld,gwd,kfiou,rotated_iou,pairwise-iou,pairwise-giou,pairwise-ciou,compiled-step"
    ),
    sizes: Annotated[
        str,
        typer.Option(
            help="Comma-separated sizes: box pairs, or logits (as n/80 x 80). "
            "Default: 1e3,1e4,1e5,1e6 pairs; 8e4,8e5,8e6 logits (up to 100,000 anchors x 80 classes); "
            "1e5,1e6 rotated pairs; all pairs of 2,000 x 20,000 boxes (pairwise-*)."
        ),
    ] = "",
    backends: Annotated[str, typer.Option(help="Comma-separated backends (default: those available here).")] = "",
    repeat: Annotated[int, typer.Option(help="Timed runs per measurement (the median is kept).")] = 7,
    threads: Annotated[int, typer.Option(help="torch threads (0: leave as is).")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    peers: Annotated[bool, typer.Option(help="Time fvcore / kornia / ultralytics when installed.")] = True,
    out: Annotated[Path | None, typer.Option(help="Folder (default runs/bench-<stamp>).")] = None,
) -> None:
    """Time every fused loss per backend against the reference, the installed peers and the memory floor."""
    import time

    import torch

    from detloss._backend import BACKENDS
    from detloss._checks import check_choice, check_range
    from detloss.experiments.bench import BENCH_LOSSES, report_markdown, run_bench
    from detloss.experiments.runs import atomic_write_text, new_run_dir, run_header, write_csv, write_json

    started = time.perf_counter()
    names = [x for x in losses.split(",") if x]
    for name in names:
        check_choice("detloss bench", "--losses", name, BENCH_LOSSES)
    try:
        counts = [int(float(x)) for x in sizes.split(",") if x] or None
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {sizes!r}", param_hint="--sizes") from None
    for count in counts or ():
        check_range("detloss bench", "--sizes", count, 1)
    chosen = [x for x in backends.split(",") if x] or None
    for name in chosen or ():
        check_choice("detloss bench", "--backends", name, BACKENDS)
    check_range("detloss bench", "--repeat", repeat, 1)
    check_range("detloss bench", "--threads", threads, 0)
    check_device("detloss bench", device, ("cpu", "cuda"))
    if threads > 0:
        torch.set_num_threads(threads)
    folder = new_run_dir("bench", out)
    rows = run_bench(
        names,
        counts,
        backends=chosen,
        repeat=repeat,
        device=device,
        with_peers=peers,
        progress=lambda text: typer.echo(f"  {text}", err=True),
    )
    args = {
        "losses": losses,
        "sizes": sizes,
        "backends": backends,
        "repeat": repeat,
        "threads": threads,
        "device": device,
        "peers": peers,
    }
    result = {**run_header("bench", args, started), "threads": torch.get_num_threads(), "rows": rows}
    write_json(folder / "results.json", result)
    write_csv(folder / "results.csv", rows)
    report = report_markdown(rows, {**result, "repeat": repeat, "device": device})
    atomic_write_text(folder / "report.md", report)
    typer.echo(report)
    typer.echo(f"results: {folder}")


def _flags(argv: list[str]) -> dict[str, str]:
    """Parameter name -> the option as typed (``batch_size`` -> ``--batch-size``) of the
    command that ``argv`` runs."""
    import typer.main

    command: Any = typer.main.get_command(app)
    for token in argv:
        subcommands = getattr(command, "commands", None)
        if not subcommands or token not in subcommands:
            break
        command = subcommands[token]
    return {str(p.name): p.opts[0] for p in command.params if p.name and p.opts and p.opts[0].startswith("--")}


def as_typed(message: str, argv: list[str]) -> str:
    """``message`` with each `parameter` of the running command named as the user types it.

    Example:
        >>> as_typed("train(): argument `batch_size` expected at most 8, got 32", ["train"])
        'train(): argument `--batch-size` expected at most 8, got 32'
    """
    flags = _flags(argv)
    return re.sub(r"`([A-Za-z_]\w*)`", lambda m: f"`{flags.get(m[1], m[1])}`", message)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user errors give one line (naming the options as typed) and exit 2."""
    try:
        result: Any = app(args=argv, standalone_mode=False)
    except DetLossError as exc:
        echo_error(as_typed(str(exc), list(sys.argv[1:] if argv is None else argv)))
        sys.exit(2)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message.strip():  # empty after the help that a bare `detloss` prints
            echo_error(" ".join(message.split()))
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        echo_error("aborted")
        sys.exit(130)
    except OSError as exc:  # a path that cannot be read or created (missing, a file, no permission, ...)
        echo_error(" ".join(str(exc).split()))
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)

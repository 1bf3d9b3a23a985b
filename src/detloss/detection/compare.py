"""``detloss compare``: one model per loss setting and seed, everything else fixed; the table.

Like Table 1 of the DIoU paper (YOLOv3 on PASCAL VOC: AP / AP75 for IoU, GIoU, DIoU, CIoU
losses and CIoU with DIoU-NMS), at a size a CPU trains in minutes: every pair of a box loss
and an objectness loss is trained with each seed (the seed sets the initial weights, the data
order and the flips; the data themselves are fixed by ``data_seed``), then evaluated with NMS
and with DIoU-NMS (same threshold). Each model trains in ``out/runs/<box>-<obj>-seed<k>/``;
a model whose ``results.json`` exists is never trained again, a model with only a checkpoint
resumes from it, so an interrupted compare continues where it stopped.

Outputs in ``out``: ``results.json`` (``rows``: one per model and NMS; ``summary``: mean and
standard deviation over seeds per setting), ``results.csv`` (the rows), ``table.md`` and
``table.csv`` (the summary), ``ap_bars.png``, ``report.md``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from detloss import DetLossError
from detloss.detection.evaluate import as_percent
from detloss.detection.options import TrainConfig, build_datasets
from detloss.detection.postprocess import NMS_KINDS
from detloss.detection.train import train
from detloss.detection.yolo_loss import ALIASES, resolve_loss_name
from detloss.experiments.runs import atomic_write_text, run_header, save_figure, write_csv, write_json

__all__ = ["compare", "summarise", "markdown_table"]

METRICS = ("AP", "AP50", "AP75")
NMS_LABEL = {"nms": "NMS", "diou_nms": "DIoU-NMS"}
_SHORT = {key: alias for alias, key in ALIASES.items()}


def short(key: str) -> str:
    """The short name of a loss for tables and charts (``binary_cross_entropy`` -> ``bce``)."""
    return _SHORT.get(key, key)


def _run_name(box: str, obj: str, seed: int) -> str:
    return f"{box}-{obj}-seed{seed}"


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    ignored = ("box_loss", "obj_loss", "seed", "device")
    return {k: v for k, v in config.items() if k not in ignored}


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (0 for one seed) of AP, AP50, AP75 per
    ``(box_loss, obj_loss, nms)``: the NMS rows first, then the DIoU-NMS rows, settings in
    the order they first appear.

    Example:
        >>> rows = [{"box_loss": "giou", "obj_loss": "bce", "nms": "nms", "seed": s, "AP": ap, "AP50": 0.5,
        ...          "AP75": 0.2} for s, ap in ((0, 0.30), (1, 0.34))]
        >>> s = summarise(rows)[0]
        >>> round(s["AP_mean"], 4), round(s["AP_std"], 4), s["seeds"]  # std: sqrt(2 * 0.02^2 / 1)
        (0.32, 0.0283, 2)
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["box_loss"], row["obj_loss"], row["nms"]), []).append(row)
    out = []
    for (box, obj, nms), members in groups.items():
        entry: dict[str, Any] = {"box_loss": box, "obj_loss": obj, "nms": nms, "seeds": len(members)}
        for metric in METRICS:
            values = [float(m[metric] or 0.0) for m in members]
            entry[f"{metric}_mean"] = statistics.fmean(values)
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry["train_seconds_mean"] = statistics.fmean(float(m.get("train_seconds", 0.0)) for m in members)
        out.append(entry)
    order = {kind: i for i, kind in enumerate(NMS_KINDS)}
    return sorted(out, key=lambda e: order.get(e["nms"], len(order)))


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a markdown table, in percent, with the AP gain over the first row with
    the same NMS (the first box and objectness losses given), as the DIoU paper reports
    gains over its baseline; ``mean ± std`` over seeds (the mean alone for one seed).

    Example:
        >>> row = {"box_loss": "iou", "obj_loss": "binary_cross_entropy", "nms": "nms", "seeds": 1,
        ...        "AP_mean": 0.1, "AP_std": 0.0, "AP50_mean": 0.3, "AP50_std": 0.0, "AP75_mean": 0.05,
        ...        "AP75_std": 0.0, "train_seconds_mean": 12.0}
        >>> print(markdown_table([row]).splitlines()[2])
        | iou | bce | NMS | 10.00 | 30.00 | 5.00 | +0.00 | 1 | 12 |
    """
    lines = [
        "| box loss | obj loss | NMS | AP (%) | AP50 (%) | AP75 (%) | AP vs first | seeds | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first: dict[str, float] = {}
    for s in summary:
        base = first.setdefault(s["nms"], s["AP_mean"])
        gain = f"{100 * (s['AP_mean'] - base):+.2f}"
        cells = [
            as_percent(s[f"{m}_mean"]) + (f" ± {as_percent(s[f'{m}_std'])}" if s["seeds"] > 1 else "") for m in METRICS
        ]
        lines.append(
            f"| {s['box_loss']} | {short(s['obj_loss'])} | {NMS_LABEL.get(s['nms'], s['nms'])} | "
            + " | ".join(cells)
            + f" | {gain} | {s['seeds']} | {s['train_seconds_mean']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _bar_chart(path: Path, summary: Sequence[Mapping[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys((s["box_loss"], s["obj_loss"]) for s in summary))
    kinds = list(dict.fromkeys(s["nms"] for s in summary))
    lookup = {(s["box_loss"], s["obj_loss"], s["nms"]): s for s in summary}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.0 * len(METRICS) + 0.8 * len(settings), 4.0), squeeze=False)
    width = 0.8 / max(len(kinds), 1)
    for ax, metric in zip(axes[0], METRICS):
        for k, kind in enumerate(kinds):
            xs, means, stds = [], [], []
            for i, (box, obj) in enumerate(settings):
                s = lookup.get((box, obj, kind))
                if s is not None:
                    xs.append(i + (k - (len(kinds) - 1) / 2) * width)
                    means.append(100 * s[f"{metric}_mean"])
                    stds.append(100 * s[f"{metric}_std"])
            label = NMS_LABEL.get(kind, kind)
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=label, alpha=0.9 if k == 0 else 0.6)
        ax.set_xticks(range(len(settings)))
        one_obj = len({o for _, o in settings}) == 1
        ax.set_xticklabels([b if one_obj else f"{b}\n{short(o)}" for b, o in settings], fontsize=8)
        ax.set_title(f"{metric} (%)")
        ax.grid(axis="y", alpha=0.3)
        lows = [100 * (s[f"{metric}_mean"] - s[f"{metric}_std"]) for s in summary]
        highs = [100 * (s[f"{metric}_mean"] + s[f"{metric}_std"]) for s in summary]
        if lows:
            pad = max(1.0, 0.15 * (max(highs) - min(lows)))
            bottom = max(0.0, min(lows) - pad)
            ax.set_ylim(bottom, max(highs) + pad)
            if bottom > 0:
                ax.set_title(f"{metric} (%), axis from {bottom:.1f}")
    axes[0][0].legend(fontsize=8)
    objs = sorted({short(o) for _, o in settings})
    spread = "mean ± std over seeds" if any(s["seeds"] > 1 for s in summary) else "one seed"
    fig.suptitle(f"{spread}; objectness loss: {', '.join(objs)}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _data_text(base: TrainConfig) -> str:
    size = f"{base.image_size} x {base.image_size}"
    source = base.data_source()
    if source == "yolo":
        return f"the YOLO dataset `{base.data}` (images resized to {size})"
    if source == "coco":
        return f"the COCO files `{base.train_json}` and `{base.val_json}` (images resized to {size})"
    return f"{size} synthetic scenes ({base.train_images} training, {base.val_images} validation images)"


def _write(out: Path, base: TrainConfig, rows: list[dict[str, Any]], args: Mapping[str, Any], started: float,
           wall: dict[str, float]) -> dict[str, Any]:
    summary = summarise(rows)
    payload = run_header("compare", args, started)
    payload.update({"rows": rows, "summary": summary, "config": asdict(base), "run_seconds": wall})
    write_json(out / "results.json", payload)
    write_csv(out / "results.csv", rows)
    write_csv(out / "table.csv", summary)
    table = markdown_table(summary)
    atomic_write_text(out / "table.md", table)
    if summary:
        _bar_chart(out / "ap_bars.png", summary)
    runs = len({(r["box_loss"], r["obj_loss"], r["seed"]) for r in rows})
    spread = "Mean ± standard deviation over seeds" if any(s["seeds"] > 1 for s in summary) else "One seed"
    report = f"""# detloss compare

{runs} models ({len(summary)} rows = settings x NMS kinds), {base.steps} steps of batch {base.batch_size} each,
on {_data_text(base)}; NMS and DIoU-NMS at threshold {base.nms_threshold}. {spread};
COCO AP on the validation set, in percent (`results.json`: 0-1). "AP vs first": AP minus that of the first row
with the same NMS (the first box loss and objectness loss), in points.

{table}
![AP, AP50, AP75 per setting](ap_bars.png)
"""
    atomic_write_text(out / "report.md", report)
    return payload


def compare(
    box_losses: Sequence[str],
    obj_losses: Sequence[str],
    seeds: int | Sequence[int],
    base: TrainConfig,
    out: Path,
    *,
    progress: bool = True,
    args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train every ``(box_loss, obj_loss, seed)`` (skipping finished ones), write the table.

    ``seeds`` is a count (seeds ``0..n-1``) or a list. Everything else comes from ``base``.
    Returns the ``results.json`` payload.
    """
    started = time.perf_counter()
    boxes = [resolve_loss_name(b, "box_loss") for b in box_losses]
    objs = [resolve_loss_name(o, "obj_loss") for o in obj_losses]
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not boxes or not objs or not seed_list:
        raise DetLossError.bad_argument("compare", "settings", "at least one box loss, objectness loss and seed",
                                        (boxes, objs, seed_list))
    out = Path(out)
    build_datasets(base)  # the data and the batch size pass their checks before a folder is made
    out.mkdir(parents=True, exist_ok=True)
    args = dict(args or {"box_losses": boxes, "obj_losses": objs, "seeds": seed_list, "config": asdict(base)})
    rows: list[dict[str, Any]] = []
    wall: dict[str, float] = {}
    plan = [(b, o, s) for b in boxes for o in objs for s in seed_list]
    for i, (box, obj, seed) in enumerate(plan):
        name = _run_name(box, obj, seed)
        folder = out / "runs" / name
        config = replace(base, box_loss=box, obj_loss=obj, seed=seed)
        results_file = folder / "results.json"
        if results_file.exists():
            try:
                result = json.loads(results_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise DetLossError(
                    f"compare(): {str(results_file)!r} cannot be read ({exc}); delete it to retrain"
                ) from None
            saved = _comparable(result.get("config", {}))
            if saved != _comparable(json.loads(json.dumps(asdict(config)))):
                raise DetLossError(
                    f"compare(): {str(folder)!r} was trained with other settings; use a new --out to compare these"
                )
            status = "done before"
        else:
            if progress:
                print(f"[{i + 1}/{len(plan)}] training {name}", flush=True)
            resume = (folder / "checkpoint.pt").exists()
            result = train(config, folder, resume=resume, progress=progress)
            status = "trained"
        wall[name] = float(result.get("train_seconds", 0.0))
        for kind in NMS_KINDS:
            metrics = result["metrics_by_nms"][kind]
            rows.append(
                {
                    "box_loss": box,
                    "obj_loss": obj,
                    "nms": kind,
                    "seed": seed,
                    **{m: metrics[m] for m in METRICS},
                    "train_seconds": wall[name],
                }
            )
        if progress:
            ap = result["metrics_by_nms"]["nms"]["AP"]
            print(f"[{i + 1}/{len(plan)}] {name}: {status}, AP {as_percent(ap)} (%)", flush=True)
        payload = _write(out, base, rows, args, started, wall)
    return payload

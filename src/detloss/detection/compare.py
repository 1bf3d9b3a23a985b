"""``detloss compare``: one model per loss setting and seed, everything else fixed; the table.

Like Table 1 of the DIoU paper (YOLOv3 on PASCAL VOC: AP / AP75 for IoU, GIoU, DIoU, CIoU
losses and CIoU with DIoU-NMS), at a size a CPU trains in minutes: every setting is trained
with each seed (the seed sets the initial weights, the data order and the flips; the data
themselves are fixed by ``data_seed``), then evaluated with NMS and with DIoU-NMS (same
threshold). A setting is, for the YOLOv3 head, a pair of a box loss and an objectness loss
(one class loss for all); for the anchor-free head, an assigner, a box loss, a class loss and
DFL on or off. Each model trains in ``out/runs/<name>/`` (:func:`run_name`); a model whose
``results.json`` exists is never trained again, a model with only a checkpoint resumes from
it, so an interrupted compare continues where it stopped.

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

__all__ = ["SETTING_KEYS", "compare", "markdown_table", "plan_settings", "run_name", "summarise"]

METRICS = ("AP", "AP50", "AP75")
NMS_LABEL = {"nms": "NMS", "diou_nms": "DIoU-NMS"}
#: What tells one trained setting from another in ``rows`` and ``summary`` (besides the seed).
SETTING_KEYS = ("head", "assigner", "box_loss", "obj_loss", "cls_loss", "dfl")
_SHORT = {key: alias for alias, key in ALIASES.items()}


def short(key: str | None) -> str:
    """The short name of a loss for tables and charts (``binary_cross_entropy`` -> ``bce``)."""
    return "-" if key is None else _SHORT.get(key, key)


def run_name(config: TrainConfig) -> str:
    """The folder of one model under ``out/runs/``: ``ciou-binary_cross_entropy-seed0`` (YOLOv3
    head: box and objectness losses) or ``anchor-free-tal-ciou-varifocal-dfl-seed0``.

    Example:
        >>> run_name(TrainConfig(head="anchor-free", assigner="atss", cls_loss="qfl", dfl=False, seed=2))
        'anchor-free-atss-ciou-quality_focal-nodfl-seed2'
    """
    if config.head == "anchor-free":
        dfl = "dfl" if config.dfl else "nodfl"
        return f"anchor-free-{config.assigner}-{config.box_loss}-{config.cls_loss}-{dfl}-seed{config.seed}"
    return f"{config.box_loss}-{config.obj_loss}-seed{config.seed}"


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved configuration as this version reads it (settings it did not know take their
    defaults), without the device."""
    full = json.loads(json.dumps(asdict(TrainConfig.from_dict(config))))
    return {k: v for k, v in full.items() if k != "device"}


def _setting(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(k) for k in SETTING_KEYS)


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (0 for one seed) of AP, AP50, AP75 per setting
    (:data:`SETTING_KEYS`, those the rows have) and NMS kind: the NMS rows first, then the
    DIoU-NMS rows, settings in the order they first appear.

    Example:
        >>> rows = [{"box_loss": "giou", "obj_loss": "bce", "nms": "nms", "seed": s, "AP": ap, "AP50": 0.5,
        ...          "AP75": 0.2} for s, ap in ((0, 0.30), (1, 0.34))]
        >>> s = summarise(rows)[0]
        >>> round(s["AP_mean"], 4), round(s["AP_std"], 4), s["seeds"]  # std: sqrt(2 * 0.02^2 / 1)
        (0.32, 0.0283, 2)
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((*_setting(row), row["nms"]), []).append(row)
    out = []
    for members in groups.values():
        first = members[0]
        entry: dict[str, Any] = {k: first[k] for k in SETTING_KEYS if k in first}
        entry.update(nms=first["nms"], seeds=len(members))
        for metric in METRICS:
            values = [float(m[metric] or 0.0) for m in members]
            entry[f"{metric}_mean"] = statistics.fmean(values)
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry["train_seconds_mean"] = statistics.fmean(float(m.get("train_seconds", 0.0)) for m in members)
        out.append(entry)
    order = {kind: i for i, kind in enumerate(NMS_KINDS)}
    return sorted(out, key=lambda e: order.get(e["nms"], len(order)))


def _anchor_free(summary: Sequence[Mapping[str, Any]]) -> bool:
    return any(s.get("head") == "anchor-free" for s in summary)


def _setting_cells(s: Mapping[str, Any], anchor_free: bool) -> list[str]:
    if anchor_free:
        dfl = "-" if s.get("dfl") is None else "on" if s["dfl"] else "off"
        return [str(s.get("assigner")), s["box_loss"], short(s.get("cls_loss")), dfl]
    return [s["box_loss"], short(s.get("obj_loss"))]


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a markdown table, in percent, with the AP gain over the first row with
    the same NMS (the first setting given), as the DIoU paper reports gains over its
    baseline; ``mean ± std`` over seeds (the mean alone for one seed). A setting is the box
    and objectness losses (YOLOv3 head), or the assigner, box loss, class loss and DFL
    (anchor-free head).

    Example:
        >>> row = {"box_loss": "iou", "obj_loss": "binary_cross_entropy", "nms": "nms", "seeds": 1,
        ...        "AP_mean": 0.1, "AP_std": 0.0, "AP50_mean": 0.3, "AP50_std": 0.0, "AP75_mean": 0.05,
        ...        "AP75_std": 0.0, "train_seconds_mean": 12.0}
        >>> print(markdown_table([row]).splitlines()[2])
        | iou | bce | NMS | 10.00 | 30.00 | 5.00 | +0.00 | 1 | 12 |
    """
    anchor_free = _anchor_free(summary)
    names = ["assigner", "box loss", "cls loss", "DFL"] if anchor_free else ["box loss", "obj loss"]
    columns = [*names, "NMS", "AP (%)", "AP50 (%)", "AP75 (%)", "AP vs first", "seeds", "train s"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    first: dict[str, float] = {}
    for s in summary:
        base = first.setdefault(s["nms"], s["AP_mean"])
        gain = f"{100 * (s['AP_mean'] - base):+.2f}"
        cells = [
            as_percent(s[f"{m}_mean"]) + (f" ± {as_percent(s[f'{m}_std'])}" if s["seeds"] > 1 else "") for m in METRICS
        ]
        lines.append(
            "| " + " | ".join(_setting_cells(s, anchor_free)) + f" | {NMS_LABEL.get(s['nms'], s['nms'])} | "
            + " | ".join(cells)
            + f" | {gain} | {s['seeds']} | {s['train_seconds_mean']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _bar_chart(path: Path, summary: Sequence[Mapping[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(_setting(s) for s in summary))
    kinds = list(dict.fromkeys(s["nms"] for s in summary))
    lookup = {(*_setting(s), s["nms"]): s for s in summary}
    # the labels name what varies between settings; the title names what does not
    varying = [i for i, key in enumerate(SETTING_KEYS) if len({setting[i] for setting in settings}) > 1]
    fixed = [i for i, key in enumerate(SETTING_KEYS) if i not in varying and settings and settings[0][i] is not None]
    varying = varying or [SETTING_KEYS.index("box_loss")]

    def text(i: int, value: Any) -> str:
        if SETTING_KEYS[i] == "dfl":
            return "DFL" if value else "no DFL"
        return short(value) if SETTING_KEYS[i].endswith("_loss") else str(value)

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.0 * len(METRICS) + 0.8 * len(settings), 4.0), squeeze=False)
    width = 0.8 / max(len(kinds), 1)
    for ax, metric in zip(axes[0], METRICS):
        for k, kind in enumerate(kinds):
            xs, means, stds = [], [], []
            for i, setting in enumerate(settings):
                s = lookup.get((*setting, kind))
                if s is not None:
                    xs.append(i + (k - (len(kinds) - 1) / 2) * width)
                    means.append(100 * s[f"{metric}_mean"])
                    stds.append(100 * s[f"{metric}_std"])
            label = NMS_LABEL.get(kind, kind)
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=label, alpha=0.9 if k == 0 else 0.6)
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels(["\n".join(text(i, setting[i]) for i in varying) for setting in settings], fontsize=8)
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
    spread = "mean ± std over seeds" if any(s["seeds"] > 1 for s in summary) else "one seed"
    names = {"head": "head", "assigner": "assigner", "box_loss": "box loss", "obj_loss": "objectness loss",
             "cls_loss": "class loss", "dfl": "DFL"}
    same = "; ".join(f"{names[SETTING_KEYS[i]]}: {text(i, settings[0][i])}" for i in fixed if i not in varying)
    fig.suptitle(f"{spread}; {same}" if same else spread, fontsize=9)
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
    runs = len({(*_setting(r), r["seed"]) for r in rows})
    spread = "Mean ± standard deviation over seeds" if any(s["seeds"] > 1 for s in summary) else "One seed"
    report = f"""# detloss compare

{runs} models ({len(summary)} rows = settings x NMS kinds), {_head_text(base)}, {base.steps} steps of batch
{base.batch_size} each, on {_data_text(base)}; NMS and DIoU-NMS at threshold {base.nms_threshold}. {spread};
COCO AP on the validation set, in percent (`results.json`: 0-1). "AP vs first": AP minus that of the first row
with the same NMS (the first setting), in points.

{table}
![AP, AP50, AP75 per setting](ap_bars.png)
"""
    atomic_write_text(out / "report.md", report)
    return payload


def _head_text(base: TrainConfig) -> str:
    if base.head == "anchor-free":
        return "anchor-free head (points, DFL box branch when on, class scores without objectness)"
    return f"YOLOv3 head (YOLOv3 assignment, class loss `{base.cls_loss}`)"


def _names(values: Sequence[str] | None, default: str | None, role: str) -> list[str | None]:
    return [resolve_loss_name(v, role) for v in values] if values else [default]


def plan_settings(
    base: TrainConfig,
    box_losses: Sequence[str],
    obj_losses: Sequence[str] | None = None,
    cls_losses: Sequence[str] | None = None,
    dfl: Sequence[bool] | None = None,
    assigners: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The settings to train, as overrides of ``base``, checked (each a valid
    :class:`TrainConfig`): box x objectness losses for the YOLOv3 head (one class loss), box
    x class losses x DFL x assigners for the anchor-free head (no objectness). A list left
    empty or None is ``base``'s value.

    Example:
        >>> settings = plan_settings(TrainConfig(head="anchor-free"), ["ciou"], cls_losses=["bce", "vfl"],
        ...                          dfl=[True, False])
        >>> [(s["cls_loss"], s["dfl"]) for s in settings]
        [('binary_cross_entropy', True), ('binary_cross_entropy', False), ('varifocal', True), ('varifocal', False)]
    """
    boxes = [resolve_loss_name(b, "box_loss") for b in box_losses] or [base.box_loss]
    objs = _names(obj_losses, base.obj_loss, "obj_loss")
    clss = _names(cls_losses, base.cls_loss, "cls_loss")
    dfls: list[bool | None] = list(dfl) if dfl else [base.dfl]
    assigner_list: list[str | None] = list(assigners) if assigners else [base.assigner]
    if base.head == "yolov3" and len(clss) > 1:
        expected = "one class loss with head 'yolov3' (a list with head 'anchor-free')"
        raise DetLossError.bad_argument("compare", "cls_loss", expected, ",".join(map(str, clss)))
    settings: list[dict[str, Any]] = [
        {"box_loss": b, "obj_loss": o, "cls_loss": c, "dfl": d, "assigner": a}
        for a in assigner_list for b in boxes for o in objs for c in clss for d in dfls
    ]
    for setting in settings:
        replace(base, **setting)  # every setting passes the checks of TrainConfig before anything trains
    return settings


def compare(
    box_losses: Sequence[str],
    obj_losses: Sequence[str] | None,
    seeds: int | Sequence[int],
    base: TrainConfig,
    out: Path,
    *,
    cls_losses: Sequence[str] | None = None,
    dfl: Sequence[bool] | None = None,
    assigners: Sequence[str] | None = None,
    progress: bool = True,
    args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train every setting of :func:`plan_settings` with every seed (skipping finished
    models), write the table.

    ``seeds`` is a count (seeds ``0..n-1``) or a list. Everything else comes from ``base``
    (its ``head`` included). Returns the ``results.json`` payload.
    """
    started = time.perf_counter()
    settings = plan_settings(base, box_losses, obj_losses, cls_losses, dfl, assigners)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise DetLossError.bad_argument("compare", "seeds", "at least one seed", seed_list)
    out = Path(out)
    build_datasets(base)  # the data and the batch size pass their checks before a folder is made
    out.mkdir(parents=True, exist_ok=True)
    args = dict(args or {"settings": settings, "seeds": seed_list, "config": asdict(base)})
    rows: list[dict[str, Any]] = []
    wall: dict[str, float] = {}
    plan = [replace(base, **setting, seed=seed) for setting in settings for seed in seed_list]
    for i, config in enumerate(plan):
        name = run_name(config)
        folder = out / "runs" / name
        results_file = folder / "results.json"
        if results_file.exists():
            try:
                result = json.loads(results_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise DetLossError(
                    f"compare(): {str(results_file)!r} cannot be read ({exc}); delete it to retrain"
                ) from None
            try:
                same = _comparable(result.get("config", {})) == _comparable(asdict(config))
            except DetLossError:  # saved settings this version refuses
                same = False
            if not same:
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
                    **{key: getattr(config, key) for key in SETTING_KEYS},
                    "nms": kind,
                    "seed": config.seed,
                    **{m: metrics[m] for m in METRICS},
                    "train_seconds": wall[name],
                }
            )
        if progress:
            ap = result["metrics_by_nms"]["nms"]["AP"]
            print(f"[{i + 1}/{len(plan)}] {name}: {status}, AP {as_percent(ap)} (%)", flush=True)
        payload = _write(out, base, rows, args, started, wall)
    return payload

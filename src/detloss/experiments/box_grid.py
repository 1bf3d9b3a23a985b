"""``detloss plot boxes``: the classic box configurations and what each IoU kind makes of them.

Disjoint, touching and nested pairs at different positions: where IoU is 0 for every
disjoint pair (no gradient, Yu et al. / Rezatofighi et al.), and where GIoU equals IoU
because the enclosing box is the union (nested boxes, and boxes touching along a whole
side), so that GIoU cannot tell a centred prediction from one in a corner while DIoU's
centre-distance term can (Zheng et al., AAAI 2020, Fig. 2).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from detloss.boxes import IOU_KINDS

__all__ = ["FIGSIZE", "CONFIGURATIONS", "KINDS", "configuration_table", "plot_boxes"]

#: Figure size in inches (PNG at 120 dpi, trimmed to its content).
FIGSIZE = (13.5, 12.5)

#: ``(name, prediction, ground truth)`` in ``xyxy``; image coordinates (y down).
CONFIGURATIONS: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...] = (
    ("disjoint, near", (5.0, 0.5, 7.0, 2.5), (0.0, 0.0, 4.0, 3.0)),
    ("disjoint, far", (8.0, 0.5, 10.0, 2.5), (0.0, 0.0, 4.0, 3.0)),
    ("disjoint, diagonal", (5.0, 4.0, 7.0, 6.0), (0.0, 0.0, 4.0, 3.0)),
    ("touching along a side", (4.0, 0.0, 6.0, 3.0), (0.0, 0.0, 4.0, 3.0)),
    ("touching at a corner", (4.0, 3.0, 6.0, 5.0), (0.0, 0.0, 4.0, 3.0)),
    ("partial overlap", (2.0, 1.0, 5.0, 4.0), (0.0, 0.0, 4.0, 3.0)),
    ("nested, centred", (1.0, 1.0, 3.0, 2.0), (0.0, 0.0, 4.0, 3.0)),
    ("nested, at a side", (2.0, 1.0, 4.0, 2.0), (0.0, 0.0, 4.0, 3.0)),
    ("nested, in a corner", (0.0, 0.0, 2.0, 1.0), (0.0, 0.0, 4.0, 3.0)),
)
KINDS: tuple[str, ...] = IOU_KINDS


def configuration_table() -> list[dict[str, Any]]:
    """One row per configuration: the boxes and every similarity from ``detloss.boxes.aligned_iou``."""
    from detloss.boxes import aligned_iou

    rows = []
    for name, pred, gt in CONFIGURATIONS:
        p = torch.tensor(pred, dtype=torch.float64)
        t = torch.tensor(gt, dtype=torch.float64)
        row: dict[str, Any] = {"configuration": name, "pred": list(pred), "gt": list(gt)}
        for kind in KINDS:
            row[kind] = float(aligned_iou(p, t, kind))  # type: ignore[arg-type]
        rows.append(row)
    return rows


def _fmt(value: float) -> str:
    return f"{round(value, 3) + 0.0:.3f}"  # + 0.0: no "-0.000" from an eps-sized negative


def _title(row: dict[str, Any]) -> str:
    same = abs(row["giou"] - row["iou"]) < 1e-9
    return (
        f"{row['configuration']}\n"
        f"IoU {_fmt(row['iou'])}   GIoU {_fmt(row['giou'])}{' (= IoU)' if same else ''}\n"
        f"DIoU {_fmt(row['diou'])}   CIoU {_fmt(row['ciou'])}"
    )


def plot_boxes(out: Path | None = None) -> Path:
    """Write ``boxes.png``, ``results.json``, ``results.csv`` and ``report.md`` to ``out``
    (a fresh ``runs/plot-boxes-<stamp>`` if None); return the folder."""
    from detloss.experiments.figures import draw_box_pair
    from detloss.experiments.report import pyplot, write_plot_report
    from detloss.experiments.runs import new_run_dir, run_header, save_figure, write_csv, write_json

    started = time.perf_counter()
    out = new_run_dir("plot-boxes", out)
    rows = configuration_table()
    plt = pyplot()
    fig, axes = plt.subplots(3, 3, figsize=FIGSIZE)
    for ax, row in zip(axes.flat, rows):
        draw_box_pair(ax, tuple(row["pred"]), tuple(row["gt"]), _title(row))
        ax.set_xlim(-0.8, 10.8)
        ax.set_ylim(6.8, -0.8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, fontsize=11)
    fig.suptitle(
        "Classic configurations (xyxy, y down): every disjoint pair has IoU 0; GIoU = IoU whenever the "
        "enclosing box is the union;\nonly the centre distance (DIoU, CIoU) separates the nested positions",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    save_figure(fig, out / "boxes.png")
    plt.close(fig)
    write_csv(
        out / "results.csv",
        (
            {
                "configuration": r["configuration"],
                **{f"pred_{c}": v for c, v in zip(("x1", "y1", "x2", "y2"), r["pred"])},
                **{f"gt_{c}": v for c, v in zip(("x1", "y1", "x2", "y2"), r["gt"])},
                **{k: r[k] for k in KINDS},
            }
            for r in rows
        ),
    )
    payload = run_header("plot boxes", {"out": str(out)}, started)
    payload.update({"figures": ["boxes.png"], "rows": rows})
    write_json(out / "results.json", payload)
    write_plot_report(
        out,
        "Classic box configurations",
        {"boxes.png": "Prediction (red), ground truth (green), enclosing box (dashed), centre distance rho."},
        (
            "Each panel gives IoU, GIoU, DIoU and CIoU from `detloss.boxes.aligned_iou` (results.csv also has "
            "EIoU and SIoU). The three nested predictions have the same IoU and GIoU; DIoU and CIoU rank the "
            "centred one best.",
        ),
    )
    return out

"""``detloss boxes``: every IoU kind and its loss for one ground truth and several predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from detloss.boxes import IOU_KINDS, aligned_iou, convert
from detloss.experiments.figures import draw_box_pair
from detloss.experiments.runs import save_figure

__all__ = ["box_table", "draw_boxes"]


def box_table(gt: Sequence[float], preds: Sequence[Sequence[float]], box_format: str) -> list[dict[str, Any]]:
    """One row per prediction: the similarity of every kind and its loss ``1 - similarity``."""
    target = torch.tensor([list(gt)], dtype=torch.float64)
    rows = []
    for pred in preds:
        p = torch.tensor([list(pred)], dtype=torch.float64)
        row: dict[str, Any] = {"pred": list(pred)}
        for kind in IOU_KINDS:
            value = float(aligned_iou(p, target, kind, box_format)[0])  # type: ignore[arg-type]
            row[kind] = value
            row[f"{kind}_loss"] = 1.0 - value
        rows.append(row)
    return rows


def draw_boxes(
    gt: Sequence[float], preds: Sequence[Sequence[float]], box_format: str, path: Path, rows: list[dict[str, Any]]
) -> None:
    """One panel per prediction, titled with its number and coordinates (as in the table of
    ``detloss boxes``), with both boxes, the enclosing box, rho and c."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def xyxy(b: Sequence[float]) -> tuple[float, ...]:
        return tuple(convert(torch.tensor(list(b), dtype=torch.float64), box_format, "xyxy").tolist())  # type: ignore[arg-type]

    n = len(preds)
    cols = min(n, 3)
    fig, axes = plt.subplots(
        (n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.9 * ((n + cols - 1) // cols)), squeeze=False
    )
    for i, (ax, pred, row) in enumerate(zip(axes.flat, preds, rows)):
        title = (
            f"prediction {i + 1}: " + ",".join(f"{v:g}" for v in pred) + f" ({box_format})\n"
            f"IoU {row['iou']:.3f}  GIoU {row['giou']:.3f}  DIoU {row['diou']:.3f}\n"
            f"CIoU {row['ciou']:.3f}  EIoU {row['eiou']:.3f}  SIoU {row['siou']:.3f}"
        )
        draw_box_pair(ax, xyxy(pred), xyxy(gt), title)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path)
    plt.close(fig)

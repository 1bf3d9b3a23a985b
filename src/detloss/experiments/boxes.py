"""``detloss boxes``: every IoU kind and its loss for one ground truth and several predictions;
``--rotated``: the rotated IoU and GIoU, the Gaussian distances and KFIoU, and their losses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from detloss.boxes import IOU_KINDS, aligned_iou, convert, convert_rotated, gaussian_distance, kfiou, rotated_iou
from detloss.experiments.figures import draw_box_pair, draw_rotated_pair
from detloss.experiments.runs import save_figure

__all__ = ["ROTATED_COLUMNS", "box_table", "draw_boxes", "draw_rotated_boxes", "rotated_box_table"]

#: The columns of ``detloss boxes --rotated``: key and header. Each value is a similarity
#: (IoU, GIoU, KFIoU) or a distance (the Gaussian ones); each loss is the detloss loss of the
#: registry with its defaults (``rotated_iou`` for IoU and GIoU, ``probiou`` for B).
ROTATED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("iou", "IoU"),
    ("giou", "GIoU"),
    ("bhattacharyya", "B (ProbIoU)"),
    ("kld", "KLD"),
    ("gwd", "GWD"),
    ("kfiou", "KFIoU"),
)


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


def _panels(n: int, height: float) -> tuple[Any, Any]:
    """A figure of ``n`` panels, three to a row, each 4.2 x ``height`` inches."""
    from detloss.experiments.report import pyplot

    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    return pyplot().subplots(rows, cols, figsize=(4.2 * cols, height * rows), squeeze=False)


def _finish(fig: Any, axes: Any, n: int, path: Path, columns: int) -> None:
    """Blank the unused panels, one legend under them all, save and close."""
    from detloss.experiments.report import pyplot

    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=columns, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path)
    pyplot().close(fig)


def rotated_box_table(
    gt: Sequence[float], preds: Sequence[Sequence[float]], box_format: str = "cxcywha", angle_unit: str = "deg"
) -> list[dict[str, Any]]:
    """One row per prediction: every :data:`ROTATED_COLUMNS` value and its loss, in float64."""
    from detloss import functional as F

    geometry: dict[str, Any] = {"box_format": box_format, "angle_unit": angle_unit}
    target = torch.tensor([list(gt)], dtype=torch.float64)
    rows = []
    for pred in preds:
        p = torch.tensor([list(pred)], dtype=torch.float64)
        row: dict[str, Any] = {"pred": list(pred)}
        for kind in ("iou", "giou"):
            row[kind] = float(rotated_iou(p, target, kind, **geometry)[0])
            row[f"{kind}_loss"] = float(F.rotated_iou_loss(p, target, kind=kind, **geometry))
        for kind, loss in (("bhattacharyya", F.probiou_loss), ("kld", F.kld_loss), ("gwd", F.gwd_loss)):
            row[kind] = float(gaussian_distance(p, target, kind, **geometry)[0])  # type: ignore[arg-type]
            row[f"{kind}_loss"] = float(loss(p, target, **geometry))
        row["kfiou"] = float(kfiou(p, target, **geometry)[0])
        row["kfiou_loss"] = float(F.kfiou_loss(p, target, **geometry))
        rows.append(row)
    return rows


def draw_rotated_boxes(
    gt: Sequence[float],
    preds: Sequence[Sequence[float]],
    box_format: str,
    angle_unit: str,
    path: Path,
    rows: list[dict[str, Any]],
) -> None:
    """One panel per prediction (numbered as in the table of ``detloss boxes --rotated``): both
    boxes, their intersection polygon and the convex hull that rotated GIoU encloses them in."""
    from detloss.boxes import rotated_outline

    target = torch.tensor(list(gt), dtype=torch.float64)
    fig, axes = _panels(len(preds), 4.5)
    for i, (ax, pred, row) in enumerate(zip(axes.flat, preds, rows)):
        p = torch.tensor(list(pred), dtype=torch.float64)
        inter, hull = rotated_outline(p, target, box_format, angle_unit)  # type: ignore[arg-type]
        corners = [convert_rotated(b, box_format, "xyxyxyxy", angle_unit=angle_unit).reshape(4, 2) for b in (p, target)]  # type: ignore[arg-type]
        title = (
            f"prediction {i + 1}: " + ",".join(f"{v:g}" for v in pred) + "\n"
            f"IoU {row['iou']:.3f}  GIoU {row['giou']:.3f}  KFIoU {row['kfiou']:.3f}\n"
            f"B {row['bhattacharyya']:.3f}  KLD {row['kld']:.3f}  GWD {row['gwd']:.1f}"
        )
        draw_rotated_pair(ax, corners[0].tolist(), corners[1].tolist(), inter.tolist(), hull.tolist(), title)
    _finish(fig, axes, len(preds), path, 4)


def draw_boxes(
    gt: Sequence[float], preds: Sequence[Sequence[float]], box_format: str, path: Path, rows: list[dict[str, Any]]
) -> None:
    """One panel per prediction, titled with its number and coordinates (as in the table of
    ``detloss boxes``), with both boxes, the enclosing box, rho and c."""

    def xyxy(b: Sequence[float]) -> tuple[float, ...]:
        return tuple(convert(torch.tensor(list(b), dtype=torch.float64), box_format, "xyxy").tolist())  # type: ignore[arg-type]

    fig, axes = _panels(len(preds), 3.9)
    for i, (ax, pred, row) in enumerate(zip(axes.flat, preds, rows)):
        title = (
            f"prediction {i + 1}: " + ",".join(f"{v:g}" for v in pred) + f" ({box_format})\n"
            f"IoU {row['iou']:.3f}  GIoU {row['giou']:.3f}  DIoU {row['diou']:.3f}\n"
            f"CIoU {row['ciou']:.3f}  EIoU {row['eiou']:.3f}  SIoU {row['siou']:.3f}"
        )
        draw_box_pair(ax, xyxy(pred), xyxy(gt), title)
    _finish(fig, axes, len(preds), path, 3)

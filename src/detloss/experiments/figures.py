"""Drawings shared by ``detloss boxes`` and ``detloss plot``."""

from __future__ import annotations

from typing import Any

__all__ = ["draw_box_pair", "draw_rotated_pair"]


def _rect(ax: Any, box: tuple[float, float, float, float], **kw: Any) -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **kw))


def draw_box_pair(ax: Any, pred: tuple[float, ...], gt: tuple[float, ...], title: str = "") -> None:
    """Draw ``pred`` and ``gt`` (xyxy, image coordinates: y down), their smallest enclosing
    box, the centre distance rho and the enclosing diagonal c, labelled."""
    px1, py1, px2, py2 = pred
    gx1, gy1, gx2, gy2 = gt
    cx1, cy1, cx2, cy2 = min(px1, gx1), min(py1, gy1), max(px2, gx2), max(py2, gy2)
    _rect(ax, (cx1, cy1, cx2, cy2), edgecolor="0.55", linestyle="--", linewidth=1.2, label="enclosing box C")
    _rect(ax, (gx1, gy1, gx2, gy2), edgecolor="tab:green", linewidth=2.2, label="ground truth")
    _rect(ax, (px1, py1, px2, py2), edgecolor="tab:red", linewidth=2.2, label="prediction")
    pc = ((px1 + px2) / 2, (py1 + py2) / 2)
    gc = ((gx1 + gx2) / 2, (gy1 + gy2) / 2)
    ax.plot([cx1, cx2], [cy1, cy2], color="0.55", linestyle=":", linewidth=1.2)
    ax.annotate(
        "c (diagonal)", (cx1 + 0.2 * (cx2 - cx1), cy1 + 0.2 * (cy2 - cy1)), color="0.35", fontsize=8, va="bottom"
    )
    ax.plot([pc[0], gc[0]], [pc[1], gc[1]], color="tab:blue", linewidth=1.6, marker="o", markersize=4)
    ax.annotate("ρ (centres)", ((pc[0] + gc[0]) / 2, (pc[1] + gc[1]) / 2), color="tab:blue", fontsize=8, va="top")
    pad = 0.08 * max(cx2 - cx1, cy2 - cy1, 1e-9)
    ax.set_xlim(cx1 - pad, cx2 + pad)
    ax.set_ylim(cy2 + pad, cy1 - pad)
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y (down)")
    if title:
        ax.set_title(title, fontsize=9)


def draw_rotated_pair(
    ax: Any,
    pred: list[list[float]],
    gt: list[list[float]],
    intersection: list[list[float]],
    hull: list[list[float]],
    title: str = "",
) -> None:
    """Draw the corners of ``pred`` and ``gt`` (image coordinates: y down), their intersection
    polygon (filled) and the convex hull of the eight corners (dashed), labelled."""
    from matplotlib.patches import Polygon

    ax.add_patch(
        Polygon(hull, closed=True, fill=False, edgecolor="0.55", linestyle="--", linewidth=1.2, label="convex hull C")
    )
    if len(intersection) >= 3:
        ax.add_patch(
            Polygon(
                intersection, closed=True, facecolor="tab:orange", alpha=0.45, edgecolor="none", label="intersection"
            )
        )
    ax.add_patch(Polygon(gt, closed=True, fill=False, edgecolor="tab:green", linewidth=2.2, label="ground truth"))
    ax.add_patch(Polygon(pred, closed=True, fill=False, edgecolor="tab:red", linewidth=2.2, label="prediction"))
    xs, ys = [p[0] for p in hull], [p[1] for p in hull]
    pad = 0.08 * max(max(xs) - min(xs), max(ys) - min(ys), 1e-9)
    ax.set_xlim(min(xs) - pad, max(xs) + pad)
    ax.set_ylim(max(ys) + pad, min(ys) - pad)
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y (down)")
    if title:
        ax.set_title(title, fontsize=9)

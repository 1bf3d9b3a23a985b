"""Drawings shared by ``detloss boxes`` and ``detloss plot``."""

from __future__ import annotations

from typing import Any

__all__ = ["draw_box_pair"]


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

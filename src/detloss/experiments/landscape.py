"""``detloss plot landscape --loss ciou``: a box loss and its gradient field around a fixed target.

The target is the ``cxcywh`` box ``(0, 0, 2, 1)`` (not square, so CIoU's aspect term is
alive). Three panels, all from ``build_loss(loss, reduction="none", box_format="cxcywh")``
with autograd:

- the loss as a ``1 x 1`` prediction moves (its centre on a grid), with unit arrows along
  the descent direction ``-(dL/dx, dL/dy)`` (no arrow where the gradient is zero);
- the size of that gradient (log scale): zero where the loss gives no signal (IoU for
  disjoint boxes);
- the loss as the prediction stretches (``w, h`` on a grid, centre fixed on the target's),
  with unit arrows along ``-(dL/dw, dL/dh)``.

A loss of rotated boxes (``probiou``, ``kld``, ``gwd``, ``kfiou``, ``rotated_iou``) gets the
boxes as ``cxcywha`` with angle 0 (the target ``(0, 0, 2, 1, 0)``) on those grids, and a fourth
panel: the loss as a prediction of the target's size moves along x and turns (``x, a`` on a
grid), with unit arrows along ``-(dL/dx, dL/da)``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["FIGSIZE", "ROTATED_FIGSIZE", "TARGET", "landscape_data", "landscape_losses", "plot_landscape"]

#: Figure size in inches (PNG at 120 dpi, trimmed to its content); rotated losses: four panels.
FIGSIZE = (20.0, 6.0)
ROTATED_FIGSIZE = (26.0, 6.0)

#: The fixed target, ``cxcywh``.
TARGET: tuple[float, float, float, float] = (0.0, 0.0, 2.0, 1.0)
_MOVE_SIZE = (1.0, 1.0)
_STRETCH_CENTRE = (0.0, 0.0)
_X = (-4.0, 4.0)
_Y = (-3.0, 3.0)
_WH = (0.1, 5.0)
_ANGLE = (-math.pi / 2, math.pi / 2)


def landscape_losses() -> list[str]:
    """The losses the landscape draws: every loss of a pair of boxes, axis-aligned or rotated."""
    from detloss.experiments.simulation import box_losses
    from detloss.registry import LOSSES

    return [*box_losses(), *(key for key, spec in LOSSES.items() if spec.inputs == "rotated_boxes")]


def _is_rotated(loss: str) -> bool:
    from detloss.registry import get_spec

    return get_spec(loss).inputs == "rotated_boxes"


def _loss_and_grad(loss: str, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and gradient of ``cxcywh`` boxes, or of ``cxcywha`` ones (angle column) for rotated losses."""
    from detloss.registry import build_loss

    rotated = boxes.shape[-1] == 5
    module = build_loss(loss, reduction="none", box_format="cxcywha" if rotated else "cxcywh")
    pred = boxes.detach().clone().requires_grad_(True)
    target = torch.tensor((*TARGET, 0.0)[: boxes.shape[-1]], dtype=boxes.dtype).expand_as(boxes)
    with torch.enable_grad():
        value = module(pred, target)
        (grad,) = torch.autograd.grad(value.sum(), pred)
    return value.detach(), grad


def landscape_data(loss: str = "ciou", size: int = 161) -> dict[str, Any]:
    """Loss and gradient on the two grids: ``move`` (centres) and ``stretch`` (sizes); rotated
    losses also on ``turn`` (``x`` and the angle ``a``, the target's size), with ``a``."""
    from detloss._checks import check_choice

    check_choice("plot landscape", "loss", loss, landscape_losses())
    rotated = _is_rotated(loss)
    xs = torch.linspace(*_X, size, dtype=torch.float64)
    ys = torch.linspace(*_Y, size, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    move = torch.stack((gx, gy, torch.full_like(gx, _MOVE_SIZE[0]), torch.full_like(gx, _MOVE_SIZE[1])), dim=-1)
    ws = torch.linspace(*_WH, size, dtype=torch.float64)
    gh, gw = torch.meshgrid(ws, ws, indexing="ij")
    stretch = torch.stack(
        (torch.full_like(gw, _STRETCH_CENTRE[0]), torch.full_like(gw, _STRETCH_CENTRE[1]), gw, gh), dim=-1
    )
    if rotated:  # the same boxes at angle 0
        move, stretch = (torch.cat((g, torch.zeros_like(g[..., :1])), dim=-1) for g in (move, stretch))
    columns = move.shape[-1]
    move_loss, move_grad = _loss_and_grad(loss, move.reshape(-1, columns))
    stretch_loss, stretch_grad = _loss_and_grad(loss, stretch.reshape(-1, columns))
    data = {
        "loss": loss,
        "x": xs,
        "y": ys,
        "w": ws,
        "move_loss": move_loss.reshape(size, size),
        "move_grad": move_grad.reshape(size, size, columns),
        "stretch_loss": stretch_loss.reshape(size, size),
        "stretch_grad": stretch_grad.reshape(size, size, columns),
    }
    if rotated:
        angles = torch.linspace(*_ANGLE, size, dtype=torch.float64)
        ga, gx = torch.meshgrid(angles, xs, indexing="ij")
        _, _, tw, th = TARGET
        turn = torch.stack((gx, torch.zeros_like(gx), torch.full_like(gx, tw), torch.full_like(gx, th), ga), dim=-1)
        turn_loss, turn_grad = _loss_and_grad(loss, turn.reshape(-1, 5))
        data.update(a=angles, turn_loss=turn_loss.reshape(size, size), turn_grad=turn_grad.reshape(size, size, 5))
    return data


def _unit(u: Any, v: Any) -> tuple[Any, Any]:
    """Arrows of length 1 along ``(u, v)``, none where the vector is zero."""
    import numpy as np

    norm = np.sqrt(u * u + v * v)
    safe = np.where(norm > 1e-12, norm, 1.0)
    keep = norm > 1e-12
    return np.ma.masked_where(~keep, u / safe), np.ma.masked_where(~keep, v / safe)


def _draw(data: dict[str, Any], path: Path) -> None:
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    from detloss.experiments.report import loss_label, pyplot
    from detloss.experiments.runs import save_figure

    plt = pyplot()
    name = loss_label(data["loss"])
    x, y, w = data["x"].numpy(), data["y"].numpy(), data["w"].numpy()
    rotated = "turn_loss" in data
    fig, axes = plt.subplots(
        1, 4 if rotated else 3, figsize=ROTATED_FIGSIZE if rotated else FIGSIZE, layout="constrained"
    )
    step = max(len(x) // 16, 1)
    sl = slice(step // 2, None, step)

    ax = axes[0]
    field = ax.contourf(x, y, data["move_loss"].numpy(), levels=24, cmap="viridis")
    fig.colorbar(field, ax=ax, label=f"{name} loss")
    grad = data["move_grad"].numpy()
    u, v = _unit(-grad[sl, sl, 0], -grad[sl, sl, 1])
    ax.quiver(x[sl], y[sl], u, v, color="white", angles="xy", pivot="mid", width=0.004, scale=28)
    cx, cy, tw, th = TARGET
    for a in axes[:2]:
        a.add_patch(
            Rectangle((cx - tw / 2, cy - th / 2), tw, th, fill=False, edgecolor="red", linewidth=2, label="target")
        )
        a.set_xlabel("prediction centre x")
        a.set_ylabel("prediction centre y")
        a.set_aspect("equal")
    ax.set_title(f"{name}: a {_MOVE_SIZE[0]:g} x {_MOVE_SIZE[1]:g} prediction moves; arrows: -dL/d(x, y)", fontsize=10)
    ax.legend(loc="upper right", fontsize=9)

    ax = axes[1]
    norm_grad = np.sqrt(grad[..., 0] ** 2 + grad[..., 1] ** 2)
    floor = 1e-6
    image = ax.pcolormesh(
        x,
        y,
        np.maximum(norm_grad, floor),
        norm=LogNorm(vmin=floor, vmax=max(norm_grad.max(), 10 * floor)),
        cmap="magma",
        shading="auto",
    )
    fig.colorbar(image, ax=ax, label="|dL/d(x, y)| (log; 1e-6 = no gradient)")
    ax.set_title(f"{name}: size of the centre gradient", fontsize=10)
    ax.legend(loc="upper right", fontsize=9)

    ax = axes[2]
    field = ax.contourf(w, w, data["stretch_loss"].numpy(), levels=24, cmap="viridis")
    fig.colorbar(field, ax=ax, label=f"{name} loss")
    sgrad = data["stretch_grad"].numpy()
    u, v = _unit(-sgrad[sl, sl, 2], -sgrad[sl, sl, 3])
    ax.quiver(w[sl], w[sl], u, v, color="white", angles="xy", pivot="mid", width=0.004, scale=28)
    ax.plot([tw], [th], marker="*", color="red", markersize=14, linestyle="none", label=f"target size {tw:g} x {th:g}")
    ax.set_xlabel("prediction width w")
    ax.set_ylabel("prediction height h")
    ax.set_aspect("equal")
    ax.set_title(f"{name}: the prediction stretches on the target's centre; arrows -dL/d(w, h)", fontsize=10)
    ax.legend(loc="upper right", fontsize=9)
    box = f"(cx, cy, w, h) = {TARGET}"
    if rotated:
        box = f"(cx, cy, w, h, a) = {(*TARGET, 0.0)}"
        ax = axes[3]
        a = data["a"].numpy()
        field = ax.contourf(x, a, data["turn_loss"].numpy(), levels=24, cmap="viridis")
        fig.colorbar(field, ax=ax, label=f"{name} loss")
        tgrad = data["turn_grad"].numpy()
        u, v = _unit(-tgrad[sl, sl, 0], -tgrad[sl, sl, 4])
        ax.quiver(x[sl], a[sl], u, v, color="white", angles="xy", pivot="mid", width=0.004, scale=28)
        ax.plot([cx], [0.0], marker="*", color="red", markersize=14, linestyle="none", label="target")
        ax.set_xlabel("prediction centre x")
        ax.set_ylabel("prediction angle a (rad)")
        ax.set_title(f"{name}: a {tw:g} x {th:g} prediction moves along x and turns; arrows -dL/d(x, a)", fontsize=10)
        ax.legend(loc="upper right", fontsize=9)
    fig.suptitle(f"{name} loss landscape around the target box {box}", fontsize=12)
    save_figure(fig, path)
    plt.close(fig)


def plot_landscape(loss: str = "ciou", out: Path | None = None, *, size: int = 161) -> Path:
    """Write ``landscape_<loss>.png``, ``results.json``, ``results.csv`` and ``report.md`` to
    ``out`` (a fresh ``runs/plot-landscape-<stamp>`` if None); return the folder."""
    from detloss.experiments.report import loss_label, write_plot_report
    from detloss.experiments.runs import new_run_dir, run_header, write_csv, write_json

    started = time.perf_counter()
    data = landscape_data(loss, size)
    out = new_run_dir("plot-landscape", out)
    figure = f"landscape_{loss}.png"
    _draw(data, out / figure)
    rows = []
    grids = [("move", "x", "y", "x", "y"), ("stretch", "w", "h", "w", "w")]
    if "turn_loss" in data:
        grids.append(("turn", "x", "a", "x", "a"))
    for grid, a, b, first_axis, second_axis in grids:
        values, grads = data[f"{grid}_loss"], data[f"{grid}_grad"]
        first, second = data[first_axis], data[second_axis]
        for i in range(0, size, 4):
            for j in range(0, size, 4):
                g = grads[i, j].tolist()
                row = {"grid": grid, a: float(first[j]), b: float(second[i]), "loss": float(values[i, j])}
                row.update({f"dL/d{name}": value for name, value in zip("xywha", g)})
                rows.append(row)
    write_csv(out / "results.csv", rows)
    payload = run_header("plot landscape", {"loss": loss, "out": str(out), "size": size}, started)
    payload.update({"figures": [figure], "target_cxcywh": list(TARGET)})
    write_json(out / "results.json", payload)
    write_plot_report(
        out,
        f"{loss_label(loss)} loss landscape",
        {figure: f"{loss_label(loss)} loss and its descent directions as a prediction moves and stretches."},
        ("results.csv holds every fourth grid point of both grids (loss and all four partial derivatives).",),
    )
    return out

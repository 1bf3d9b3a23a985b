"""``detloss plot curves``: the losses and their gradients over the error, side by side.

Six panels, every value computed by the library's own functions (looked up in the registry)
and every gradient by autograd through them:

- the regression losses L1, L2, smooth L1, Huber and balanced L1 over the error
  ``x = pred - target`` and their gradients ``dL/dx`` (smooth L1: Girshick, Fast R-CNN, ICCV
  2015; Huber, Ann. Math. Statist. 1964; Libra R-CNN's Fig. 5 compares balanced L1 with smooth
  L1 the same way);
- cross-entropy against the focal loss for ``gamma`` in 0, 0.5, 1, 2, 5 over the probability
  of the ground-truth class (Lin et al., ICCV 2017, Fig. 1; ``alpha`` off as there);
- quality focal loss (Li et al., NeurIPS 2020) and varifocal loss (Zhang et al., CVPR 2021)
  over the predicted score for several targets, and their gradients with respect to the logit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["FIGSIZE", "REGRESSION", "FOCAL_GAMMAS", "TARGETS", "curve_data", "plot_curves"]

#: Figure size in inches (PNG at 120 dpi, trimmed to its content).
FIGSIZE = (16.0, 9.6)

#: (registry key, label) of the regression losses, at their default settings.
REGRESSION: tuple[tuple[str, str], ...] = (
    ("l1", "L1"),
    ("l2", "L2"),
    ("smooth_l1", "smooth L1 (beta 1)"),
    ("huber", "Huber (delta 1)"),
    ("balanced_l1", "balanced L1 (alpha .5, gamma 1.5)"),
)
#: The focal paper's Fig. 1 values of gamma (0 is the cross-entropy).
FOCAL_GAMMAS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 5.0)
#: Targets (IoU scores) for QFL and varifocal.
TARGETS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def _function(key: str) -> Any:
    from detloss.registry import get_spec

    return get_spec(key).function


def _value_and_grad(
    key: str, pred: torch.Tensor, target: torch.Tensor, **options: Any
) -> tuple[list[float], list[float]]:
    """Elementwise loss of ``key`` and its derivative with respect to ``pred`` (autograd)."""
    x = pred.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = _function(key)(x, target, reduction="none", **options)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach().tolist(), grad.tolist()


def curve_data(points: int = 401) -> dict[str, Any]:
    """Every plotted series: ``{"error": [...], "prob": [...], "series": {name: [...]}}``."""
    error = torch.linspace(-3.0, 3.0, points, dtype=torch.float64)
    zeros = torch.zeros_like(error)
    prob = torch.linspace(0.001, 0.999, points, dtype=torch.float64)
    logit = torch.log(prob) - torch.log1p(-prob)
    series: dict[str, list[float]] = {}
    for key, _ in REGRESSION:
        series[f"{key}"], series[f"d{key}/dx"] = _value_and_grad(key, error, zeros)
    ones = torch.ones_like(prob)
    series["binary_cross_entropy"], _ = _value_and_grad("binary_cross_entropy", logit, ones)
    for gamma in FOCAL_GAMMAS:
        series[f"sigmoid_focal gamma={gamma:g}"], _ = _value_and_grad(
            "sigmoid_focal", logit, ones, alpha=None, gamma=gamma
        )
    for q in TARGETS:
        target = torch.full_like(prob, q)
        series[f"quality_focal y={q:g}"], series[f"dquality_focal/dlogit y={q:g}"] = _value_and_grad(
            "quality_focal", logit, target
        )
        series[f"varifocal q={q:g}"], series[f"dvarifocal/dlogit q={q:g}"] = _value_and_grad("varifocal", logit, target)
    return {"error": error.tolist(), "prob": prob.tolist(), "series": series}


def _draw(data: Mapping[str, Any], path: Path) -> None:
    from detloss.experiments.report import pyplot
    from detloss.experiments.runs import save_figure

    plt = pyplot()
    s = data["series"]
    error, prob = data["error"], data["prob"]
    fig, axes = plt.subplots(2, 3, figsize=FIGSIZE)
    styles = ("-", "--", "-.", ":", "-")
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    (ax_l, ax_g, ax_f), (ax_q, ax_v, ax_d) = axes
    for (key, label), style, colour in zip(REGRESSION, styles, colours):
        ax_l.plot(error, s[key], style, color=colour, linewidth=2, label=label)
        ax_g.plot(error, s[f"d{key}/dx"], style, color=colour, linewidth=2, label=label)
    ax_l.set_ylim(-0.1, 4.0)
    ax_l.set_title("regression losses over the error")
    ax_l.set_xlabel("error x = pred - target")
    ax_l.set_ylabel("loss")
    ax_g.set_ylim(-3.2, 3.2)
    ax_g.set_title("their gradients")
    ax_g.set_xlabel("error x = pred - target")
    ax_g.set_ylabel("dL/dx")
    ax_f.plot(prob, s["binary_cross_entropy"], color="black", linewidth=3.2, alpha=0.35, label="CE (BCE)")
    for gamma, colour in zip(FOCAL_GAMMAS, colours):
        ax_f.plot(prob, s[f"sigmoid_focal gamma={gamma:g}"], color=colour, linewidth=1.8, label=f"FL gamma = {gamma:g}")
    ax_f.set_ylim(0, 5)
    ax_f.set_title("cross-entropy vs focal loss (focal paper, Fig. 1)")
    ax_f.set_xlabel("probability of the ground-truth class p_t")
    ax_f.set_ylabel("loss")
    for q, colour in zip(TARGETS, colours):
        ax_q.plot(prob, s[f"quality_focal y={q:g}"], color=colour, linewidth=2, label=f"target y = {q:g}")
        ax_v.plot(prob, s[f"varifocal q={q:g}"], color=colour, linewidth=2, label=f"target q = {q:g}")
        ax_d.plot(prob, s[f"dquality_focal/dlogit y={q:g}"], "-", color=colour, linewidth=2)
        ax_d.plot(prob, s[f"dvarifocal/dlogit q={q:g}"], "--", color=colour, linewidth=2)
    for ax, name in ((ax_q, "quality focal loss (GFL), beta 2"), (ax_v, "varifocal loss, alpha .75, gamma 2")):
        ax.set_ylim(0, 2.5)
        ax.set_title(f"{name}: minimum at p = target")
        ax.set_xlabel("predicted score p = sigmoid(logit)")
        ax.set_ylabel("loss")
    ax_d.set_title("their gradients: QFL (solid), varifocal (dashed)")
    ax_d.set_xlabel("predicted score p = sigmoid(logit)")
    ax_d.set_ylabel("dL/dlogit")
    ax_d.axhline(0, color="0.6", linewidth=0.8)
    for q, colour in zip(TARGETS, colours):
        ax_d.plot([], [], color=colour, linewidth=2, label=f"target {q:g}")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8.5)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_curves(out: Path | None = None, *, points: int = 401) -> Path:
    """Write ``curves.png``, ``results.json``, ``results.csv`` and ``report.md`` to ``out``
    (a fresh ``runs/plot-curves-<stamp>`` if None); return the folder."""
    from detloss.experiments.report import write_plot_report
    from detloss.experiments.runs import new_run_dir, run_header, write_csv, write_json

    started = time.perf_counter()
    out = new_run_dir("plot-curves", out)
    data = curve_data(points)
    _draw(data, out / "curves.png")
    rows = []
    for i in range(points):
        row = {"error": data["error"][i], "prob": data["prob"][i]}
        row.update({name: values[i] for name, values in data["series"].items()})
        rows.append(row)
    write_csv(out / "results.csv", rows)
    payload = run_header("plot curves", {"out": str(out), "points": points}, started)
    payload.update({"figures": ["curves.png"], "series": sorted(data["series"])})
    write_json(out / "results.json", payload)
    write_plot_report(
        out,
        "Losses and their gradients",
        {"curves.png": "Regression losses and gradients; CE vs focal; QFL and varifocal over the score."},
        (
            "Every curve is the library's own function at its default settings (focal: alpha off), "
            "gradients by autograd. The regression errors are in `error`, the scores in `prob` of results.csv "
            "(the p_t of CE/focal equals `prob`, the logit is log(p / (1 - p))).",
        ),
    )
    return out

"""``detloss simulate``: the box-regression simulation of the DIoU paper, at full size.

Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding Box Regression",
AAAI 2020, Algorithm 1 and Fig. 3. Seven target boxes of area 1 centred at (10, 10) with
aspect ratios (w:h) 1:4, 1:3, 1:2, 1:1, 2:1, 3:1, 4:1; ``points`` anchor centres uniform in
the disc of radius 3 around (10, 10) (5,000 in the paper); at each centre 49 anchors (areas
0.5, 0.67, 0.75, 1, 1.33, 1.5, 2 times the target's, times the same 7 aspect ratios), each
regressed to each target: 343 cases per centre, 1,715,000 in all. A box is its raw
``(x, y, w, h)``; each step is

    B_t = B_{t-1} + eta_t * (2 - IoU_{t-1}) * D_{t-1},   t = 1..T (T = 200),

with ``eta = 0.1`` up to step 0.8 T, ``0.01`` up to 0.9 T and ``0.001`` after, and ``D`` the
descent direction: ``-grad`` of the loss (``gradient="exact"``), or the direction the
authors' published MATLAB code computes (``gradient="paper"``, IoU, GIoU, DIoU and CIoU
only; see :func:`paper_direction`). The error after step t is
``E(t) = sum over cases of |B_t - B_gt|_1`` over ``(x, y, w, h)``.

The work is vectorised over chunks of anchor centres (343 cases each), one thread per chunk,
chunks in parallel in ``workers`` processes; each finished chunk is checkpointed, so
``resume=True`` continues an interrupted run to the same numbers as an uninterrupted one
(the chunks are computed independently and summed in a fixed order). A chunk runs all its
steps in one call of the native kernel ``torch.ops.detloss.regress_boxes`` where
:func:`runs_native` (CPU, the ``native`` backend, the losses of :data:`NATIVE_LOSSES`), with
the numbers of the torch loop :func:`regress` (float64: to the last bit), else that loop.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from detloss._backend import torch_threads
from detloss._checks import check_choice, check_range
from detloss.errors import DetLossError

__all__ = [
    "ASPECT_RATIOS",
    "SCALES",
    "CASES_PER_POINT",
    "PAPER_LOSSES",
    "GRADIENTS",
    "TABLE_STEPS",
    "CONVERGED_L1",
    "REFERENCE",
    "Setup",
    "box_losses",
    "anchor_points",
    "case_boxes",
    "learning_rate",
    "exact_direction",
    "paper_direction",
    "regress",
    "regress_at",
    "regress_cases",
    "runs_native",
    "NATIVE_LOSSES",
    "simulate",
]

#: Aspect ratios ``w : h`` of the targets and of the anchors (the paper's 1:4 ... 4:1).
ASPECT_RATIOS: tuple[float, ...] = (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0)
#: Anchor areas relative to the target's (the target's area is 1).
SCALES: tuple[float, ...] = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)
#: Cases per anchor centre: 7 targets x 7 scales x 7 aspect ratios.
CASES_PER_POINT = len(ASPECT_RATIOS) * len(SCALES) * len(ASPECT_RATIOS)
#: Losses whose published simulation code we reproduce (``gradient="paper"``).
PAPER_LOSSES: tuple[str, ...] = ("iou", "giou", "diou", "ciou")
GRADIENTS: tuple[str, ...] = ("exact", "paper")
#: Steps at which the report tabulates E(t).
TABLE_STEPS: tuple[int, ...] = (1, 50, 100, 160, 200)
#: A case has converged when its final l1 error is below this.
CONVERGED_L1 = 0.01
#: Final errors E(200) at full size to compare with: read off the paper's Fig. 3(b), and
#: what an independent reimplementation of the authors' code gave at full size.
REFERENCE: dict[str, dict[str, dict[str, float]]] = {
    "paper_figure": {"paper": {"iou": 5.9e6, "giou": 1.5e6, "diou": 0.0, "ciou": 0.0}},
    "reimplementation": {
        "paper": {"iou": 5.86e6, "giou": 1.53e6, "diou": 4.1e3, "ciou": 4.1e3},
        "exact": {"iou": 5.86e6, "giou": 2.9e4, "diou": 5.3e4, "ciou": 7.5e3},
    },
}

#: Options a loss needs in this simulation: MPDIoU normalises by the image size, here the
#: 20 x 20 field around (10, 10) that holds every anchor and target.
LOSS_OPTIONS: dict[str, dict[str, Any]] = {"mpdiou": {"image_size": (20.0, 20.0)}}

_WHERE = "simulate"
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class Setup:
    """Everything that decides the numbers of a run (saved with its checkpoints for ``resume``)."""

    points: int = 5000
    steps: int = 200
    seed: int = 0
    dtype: str = "float64"
    chunk_points: int = 400

    @property
    def cases(self) -> int:
        return self.points * CASES_PER_POINT

    @property
    def chunks(self) -> int:
        return -(-self.points // self.chunk_points)

    def check(self) -> None:
        check_range(_WHERE, "points", self.points, 1, None)
        check_range(_WHERE, "steps", self.steps, 1, None)
        check_range(_WHERE, "chunk_points", self.chunk_points, 1, None)
        check_choice(_WHERE, "dtype", self.dtype, tuple(_DTYPES))
        for name in ("points", "steps", "seed", "chunk_points"):
            if not isinstance(getattr(self, name), int):
                raise DetLossError.bad_argument(_WHERE, name, "an integer", repr(getattr(self, name)))


def box_losses() -> list[str]:
    """Registry keys of every loss that takes a pair of boxes (the IoU family and kin):
    IoU, GIoU, DIoU, CIoU first, then the others in the registry's order."""
    from detloss.registry import LOSSES

    keys = [key for key, spec in LOSSES.items() if spec.inputs == "boxes"]
    return [k for k in PAPER_LOSSES if k in keys] + [k for k in keys if k not in PAPER_LOSSES]


# ------------------------------------------------------------------------------ the cases


def anchor_points(points: int, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(points, 2)`` anchor centres uniform in the disc of radius 3 around (10, 10).

    Radius ``3 sqrt(u)`` and angle ``2 pi v`` for uniform ``u, v`` (as the authors' code
    draws them), from a generator seeded with ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    radius = 3.0 * torch.sqrt(torch.rand(points, generator=g, dtype=torch.float64))
    angle = 2.0 * math.pi * torch.rand(points, generator=g, dtype=torch.float64)
    xy = torch.stack((10.0 + radius * torch.cos(angle), 10.0 + radius * torch.sin(angle)), dim=-1)
    return xy.to(dtype)


def case_boxes(points_xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors and targets ``(P * 343, 4)`` in ``cxcywh`` for anchor centres ``(P, 2)``.

    Case ``((p * 7 + target) * 7 + scale) * 7 + aspect`` is anchor ``(scale, aspect)`` at
    centre ``p`` regressed to target ``target`` (the authors' loop order). A box of area
    ``a`` and aspect ratio ``r = w / h`` has ``w = sqrt(a r)``, ``h = sqrt(a / r)``.
    """
    dtype = points_xy.dtype
    ratio = torch.tensor(ASPECT_RATIOS, dtype=torch.float64)
    scale = torch.tensor(SCALES, dtype=torch.float64)
    n_t, n_s, n_a = len(ASPECT_RATIOS), len(SCALES), len(ASPECT_RATIOS)
    target_wh = torch.stack((ratio.sqrt(), (1.0 / ratio).sqrt()), dim=-1)  # area 1
    anchor_wh = torch.stack(((scale[:, None] * ratio).sqrt(), (scale[:, None] / ratio).sqrt()), dim=-1)  # (s, a, 2)
    p = points_xy.shape[0]
    anchor_wh = anchor_wh.expand(p, n_t, n_s, n_a, 2)
    anchor_xy = points_xy.to(torch.float64)[:, None, None, None, :].expand(p, n_t, n_s, n_a, 2)
    target_wh = target_wh[None, :, None, None, :].expand(p, n_t, n_s, n_a, 2)
    target_xy = torch.full((p, n_t, n_s, n_a, 2), 10.0, dtype=torch.float64)
    anchors = torch.cat((anchor_xy, anchor_wh), dim=-1).reshape(-1, 4)
    targets = torch.cat((target_xy, target_wh), dim=-1).reshape(-1, 4)
    return anchors.to(dtype).contiguous(), targets.to(dtype).contiguous()


def learning_rate(step: int, steps: int) -> float:
    """``eta`` of step ``step`` (1-based): 0.1 up to 0.8 T, 0.01 up to 0.9 T, 0.001 after."""
    if 10 * step <= 8 * steps:
        return 0.1
    if 10 * step <= 9 * steps:
        return 0.01
    return 0.001


# -------------------------------------------------------------------------- the directions

Direction = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def exact_direction(loss: str) -> Direction:
    """``(boxes, targets) -> (-grad, IoU)``: the true gradient of registry loss ``loss``.

    Built with the public API, ``build_loss(loss, reduction="sum", box_format="cxcywh")``;
    autograd differentiates the sum with respect to each case's ``(x, y, w, h)`` (the cases
    are independent, so this is each case's own gradient). CIoU keeps its ``alpha``
    constant, as the paper and the library do; other options are the defaults, except those
    in :data:`LOSS_OPTIONS`. ``IoU`` (for the step size) is ``detloss.boxes.aligned_iou``.
    """
    from detloss.boxes import aligned_iou
    from detloss.registry import build_loss

    module = build_loss(loss, reduction="sum", box_format="cxcywh", **LOSS_OPTIONS.get(loss, {}))

    def direction(boxes: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = boxes.detach().requires_grad_(True)
        with torch.enable_grad():
            value = module(pred, targets)
            (grad,) = torch.autograd.grad(value, pred)
        with torch.no_grad():
            iou = aligned_iou(boxes, targets, "iou", "cxcywh")
        return -grad, iou

    return direction


def paper_direction(kind: str) -> Direction:
    """``(boxes, targets) -> (D, IoU)``: the direction of the authors' simulation code.

    Facts about the MATLAB code that Zheng et al. (AAAI 2020) published with the paper, in
    ``(x, y, w, h)``, ``t = y - h/2``, ``b = y + h/2``, ``l = x - w/2``, ``r = x + w/2``:

    1. IoU part, in ``(t, b, l, r)``: intersection sides from ``max``/``min`` NOT clamped at
       0, ``I = (ib - it)(ir - il)``, ``U = |B| + |B_gt| - I``; one-sided partials of ``I``
       (e.g. ``dI/dt = -(ir - il)`` if ``t > t_gt``) and of ``U``; the direction is
       ``(U dI - I dU) / U^2`` where the boxes overlap (strictly), else 0. An inverted side
       copies one partial over the other (``dt = db`` if ``t >= b``), as the code does.
    2. ``(t, b, l, r) -> (x, y, w, h)``: ``dx = dl + dr``, ``dy = dt + db``,
       ``dw = dr - dl``, ``dh = db - dt`` (twice the chain rule on ``w`` and ``h``).
    3. GIoU: the IoU part plus ``(C dU - U dC) / C^2`` per side, ``C`` the enclosing area,
       with the unclamped ``I`` and ``U`` (a wrong union for disjoint boxes).
    4. DIoU, in ``(x, y, w, h)``: the same side partials for ``C_w`` and ``C_h`` (except
       ``dC_w/dw = -1`` when the prediction encloses the target horizontally, ``dC_h/dh = -1``
       vertically), and ``-`` where the exact ascent of ``-rho^2 / c^2`` has ``+``.
    5. CIoU: DIoU plus ``alpha (8/pi^2)(atan(w_gt/h_gt) - atan(w/h)) h`` on ``w`` and minus
       ``... w`` on ``h`` (the ``1/(w^2 + h^2)`` dropped), ``alpha = v / (1 - IoU + v + 1e-7)``.
    6. ``IoU`` (for the step size and CIoU's alpha) is 0 without overlap.
    """
    check_choice("paper_direction", "kind", kind, PAPER_LOSSES)

    def direction(boxes: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, w, h = boxes.unbind(-1)
        gx, gy, gw, gh = targets.unbind(-1)
        top, bot, lef, rig = y - 0.5 * h, y + 0.5 * h, x - 0.5 * w, x + 0.5 * w
        g_t, g_b, g_l, g_r = gy - 0.5 * gh, gy + 0.5 * gh, gx - 0.5 * gw, gx + 0.5 * gw
        zero = torch.zeros_like(x)
        # 1. intersection and union, unclamped
        it, ib = torch.maximum(top, g_t), torch.minimum(bot, g_b)
        il, ir = torch.maximum(lef, g_l), torch.minimum(rig, g_r)
        ih, iw = ib - it, ir - il
        inter = ih * iw
        union = (bot - top) * (rig - lef) + (g_b - g_t) * (g_r - g_l) - inter
        overlap = (it < ib) & (il < ir)
        iou = torch.where(overlap, inter / union, zero)
        di_t = torch.where(top > g_t, -iw, zero)
        di_b = torch.where(bot < g_b, iw, zero)
        di_l = torch.where(lef > g_l, -ih, zero)
        di_r = torch.where(rig < g_r, ih, zero)
        du_t, du_b = -(rig - lef) - di_t, (rig - lef) - di_b
        du_l, du_r = -(bot - top) - di_l, (bot - top) - di_r
        iou_ok = overlap & (union > 0)
        u2 = union * union

        def iou_side(di: torch.Tensor, du: torch.Tensor) -> torch.Tensor:
            return torch.where(iou_ok, (union * di - inter * du) / u2, zero)

        s_t, s_b, s_l, s_r = iou_side(di_t, du_t), iou_side(di_b, du_b), iou_side(di_l, du_l), iou_side(di_r, du_r)
        # the code's handling of an inverted side: both partials take the second one's value
        s_t = torch.where(top < bot, s_t, s_b)
        s_l = torch.where(lef < rig, s_l, s_r)
        if kind == "giou":
            ct, cb = torch.minimum(top, g_t), torch.maximum(bot, g_b)
            cl, cr = torch.minimum(lef, g_l), torch.maximum(rig, g_r)
            cw, ch = cr - cl, cb - ct
            area_c = ch * cw
            dc_t = torch.where(top < g_t, -cw, zero)
            dc_b = torch.where(bot > g_b, cw, zero)
            dc_l = torch.where(lef < g_l, -ch, zero)
            dc_r = torch.where(rig > g_r, ch, zero)
            c2 = area_c * area_c
            use = ~overlap | (area_c > 0)

            def penalty(du: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
                return torch.where(use, (area_c * du - union * dc) / c2, zero)

            s_t = torch.where(overlap, s_t, zero) + penalty(du_t, dc_t)
            s_b = torch.where(overlap, s_b, zero) + penalty(du_b, dc_b)
            s_l = torch.where(overlap, s_l, zero) + penalty(du_l, dc_l)
            s_r = torch.where(overlap, s_r, zero) + penalty(du_r, dc_r)
        # 2. to (x, y, w, h), without the factor 1/2 on w and h
        dx, dy, dw, dh = s_l + s_r, s_t + s_b, s_r - s_l, s_b - s_t
        if kind in ("diou", "ciou"):
            ct, cb = torch.minimum(top, g_t), torch.maximum(bot, g_b)
            cl, cr = torch.minimum(lef, g_l), torch.maximum(rig, g_r)
            cw, ch = cr - cl, cb - ct
            diag = cw * cw + ch * ch
            above, below = (top < g_t).to(x.dtype), (bot > g_b).to(x.dtype)
            left, right = (lef < g_l).to(x.dtype), (rig > g_r).to(x.dtype)
            part_x, part_y = right - left, below - above
            part_w, part_h = 0.5 * (right + left), 0.5 * (below + above)
            one = torch.ones_like(x)
            cw_w = torch.where((left > 0) & (right > 0), -one, part_w)  # dC_w/dw
            ch_h = torch.where((above > 0) & (below > 0), -one, part_h)  # dC_h/dh
            dist = (x - gx) ** 2 + (y - gy) ** 2
            diag2 = diag * diag
            # the code uses part_* for both C_w and C_h, except dC_w/dw and dC_h/dh
            dx = dx + (2.0 * (gx - x) * diag - 2.0 * (cw + ch) * part_x * dist) / diag2
            dy = dy + (2.0 * (gy - y) * diag - 2.0 * (cw + ch) * part_y * dist) / diag2
            dw = dw + 2.0 * (cw * cw_w + ch * part_w) * dist / diag2
            dh = dh + 2.0 * (cw * part_h + ch * ch_h) * dist / diag2
            if kind == "ciou":
                delta = torch.atan(gw / gh) - torch.atan(w / h)
                v = (4.0 / math.pi**2) * delta * delta
                alpha = v / (1.0 - iou + v + 1e-7)
                dw = dw + alpha * (8.0 / math.pi**2) * delta * h
                dh = dh - alpha * (8.0 / math.pi**2) * delta * w
        return torch.stack((dx, dy, dw, dh), dim=-1), iou

    return direction


def make_direction(loss: str, gradient: str) -> Direction:
    """The direction function of ``loss`` under ``gradient`` (``"exact"`` or ``"paper"``)."""
    check_choice(_WHERE, "gradient", gradient, GRADIENTS)
    if gradient == "paper":
        return paper_direction(loss)
    return exact_direction(loss)


def regress(
    anchors: torch.Tensor, targets: torch.Tensor, direction: Direction, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the update ``steps`` times from ``anchors``; return the final boxes ``(n, 4)``
    and the curve ``E(0..steps)`` (float64 sums of the l1 error over the cases)."""
    return regress_at(anchors, targets, direction, [learning_rate(t, steps) for t in range(1, steps + 1)])


def regress_at(
    anchors: torch.Tensor, targets: torch.Tensor, direction: Direction, rates: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`regress` with the rate of each step given: ``eta_t = rates[t - 1]``."""
    boxes = anchors.clone()
    curve = torch.empty(len(rates) + 1, dtype=torch.float64)
    curve[0] = (boxes - targets).abs().sum(dtype=torch.float64)
    with torch.no_grad():
        for step, rate in enumerate(rates, start=1):
            move, iou = direction(boxes, targets)
            boxes = boxes + rate * (2.0 - iou)[:, None] * move
            curve[step] = (boxes - targets).abs().sum(dtype=torch.float64)
    return boxes, curve


#: What the native kernel (``torch.ops.detloss.regress_boxes``) runs, per gradient: the losses
#: whose module is the native loss operator with its defaults, and the paper's four.
NATIVE_LOSSES: dict[str, tuple[str, ...]] = {
    "exact": ("iou", "giou", "diou", "ciou", "eiou", "siou"),
    "paper": PAPER_LOSSES,
}


def runs_native(loss: str, gradient: str, boxes: torch.Tensor) -> bool:
    """Whether :func:`regress_cases` runs ``loss`` under ``gradient`` on ``boxes`` by the native
    kernel: CPU float32/float64 under the ``native`` backend (:func:`detloss.get_backend`).

    Args:
        loss: a key of :func:`box_losses`; the kernel runs those of :data:`NATIVE_LOSSES`.
        gradient: ``"exact"`` or ``"paper"``.
        boxes: the anchors the run starts from (their device and dtype decide).

    Example:
        >>> import detloss
        >>> boxes = torch.zeros(3, 4)
        >>> with detloss.use_backend("reference"):
        ...     runs_native("ciou", "paper", boxes)
        False
    """
    from detloss._backend import resolve

    return (
        loss in NATIVE_LOSSES.get(gradient, ())
        and boxes.device.type == "cpu"
        and boxes.dtype in (torch.float32, torch.float64)
        and resolve(boxes.device) == "native"
    )


def regress_cases(
    anchors: torch.Tensor, targets: torch.Tensor, loss: str, gradient: str, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`regress` with the direction of ``loss`` under ``gradient``: every step in one call
    of the native kernel where :func:`runs_native`, with the same numbers (float64: to the
    last bit), else the torch loop. A fresh loss per call: a stateful loss (Wise-IoU's running
    mean) depends on these cases only.

    Args:
        anchors: ``(n, 4)`` ``cxcywh`` start boxes (float32 or float64 for the native kernel).
        targets: ``(n, 4)`` ``cxcywh`` targets, ``anchors``' dtype.
        loss: a key of :func:`box_losses`.
        gradient: ``"exact"`` or ``"paper"`` (``paper``: the keys of :data:`PAPER_LOSSES`).
        steps: ``T``; the rates are :func:`learning_rate`'s.

    Example (the 343 cases of one anchor centre, 20 steps):
        >>> anchors, targets = case_boxes(torch.tensor([[10.5, 9.0]], dtype=torch.float64))
        >>> boxes, curve = regress_cases(anchors, targets, "diou", "paper", 20)
        >>> boxes.shape, curve.shape, bool(curve[20] < curve[0])
        (torch.Size([343, 4]), torch.Size([21]), True)
    """
    rates = [learning_rate(t, steps) for t in range(1, steps + 1)]
    if runs_native(loss, gradient, anchors):
        rate_tensor = torch.tensor(rates, dtype=torch.float64)
        boxes, curve = torch.ops.detloss.regress_boxes(anchors, targets, rate_tensor, loss, gradient)
        return boxes, curve
    return regress_at(anchors, targets, make_direction(loss, gradient), rates)


# -------------------------------------------------------------------------- the command

ChunkHook = Callable[[str, str, int], None]


def _checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def _save_chunk(path: Path, payload: Mapping[str, Any]) -> None:
    from detloss.experiments.runs import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_chunk(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, weights_only=True)  # type: ignore[no-any-return]
    except Exception:  # a damaged checkpoint is recomputed
        return None


def _saved_plan(out: Path) -> dict[str, Any] | None:
    marker = _checkpoint_dir(out) / "plan.json"
    return json.loads(marker.read_text()) if marker.exists() else None  # type: ignore[no-any-return]


def _start_checkpoints(out: Path, plan: Mapping[str, Any]) -> None:
    """A fresh ``out/checkpoints`` holding the plan (what ``resume`` continues)."""
    from detloss.experiments.runs import write_json

    folder = _checkpoint_dir(out)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(folder / "plan.json", plan)


def _add_wall_seconds(out: Path, seconds: float) -> float:
    """Add this invocation's computing time to the run's total (kept with the checkpoints, so
    a resumed run reports the time of all its invocations); return the total."""
    from detloss.experiments.runs import write_json

    path = _checkpoint_dir(out) / "wall.json"
    total = seconds + (json.loads(path.read_text())["seconds"] if path.exists() else 0.0)
    write_json(path, {"seconds": total})
    return total


def latest_run(root: Path = Path("runs")) -> Path | None:
    """The newest ``root/simulate-*`` folder that has checkpoints, if any."""
    found = sorted(root.glob("simulate-*/checkpoints/plan.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent.parent if found else None


def _chunk_path(out: Path, loss: str, gradient: str, k: int) -> Path:
    return _checkpoint_dir(out) / f"{loss}-{gradient}" / f"chunk-{k:05d}.pt"


def compute_chunk(setup: Setup, loss: str, gradient: str, k: int, path: Path) -> None:
    """Regress the cases of anchor centres ``k * chunk_points ...`` and checkpoint the chunk's
    curve, per-centre final errors, converged and non-finite counts and compute seconds."""
    points_xy = anchor_points(setup.points, seed=setup.seed, dtype=_DTYPES[setup.dtype])
    lo, hi = k * setup.chunk_points, min(setup.points, (k + 1) * setup.chunk_points)
    anchors, targets = case_boxes(points_xy[lo:hi])
    started = time.perf_counter()
    # a fresh loss per chunk: a stateful loss (Wise-IoU's running mean) then depends on its
    # chunk only, and a resumed run repeats it exactly
    final, curve = regress_cases(anchors, targets, loss, gradient, setup.steps)
    l1 = (final - targets).abs().sum(dim=-1, dtype=torch.float64)
    saved = {
        "path": "native" if runs_native(loss, gradient, anchors) else "torch",
        "curve": curve,
        "point_error": l1.reshape(hi - lo, CASES_PER_POINT).sum(dim=-1),
        "converged": int((l1 < CONVERGED_L1).sum()),
        "nonfinite": int((~torch.isfinite(l1)).sum()),
        "seconds": time.perf_counter() - started,
    }
    _save_chunk(path, saved)


def _worker_init() -> None:
    torch.set_num_threads(1)


def run_cases(
    setup: Setup,
    runs: Sequence[tuple[str, str]],
    out: Path,
    *,
    workers: int = 1,
    progress: bool = True,
    on_chunk: ChunkHook | None = None,
) -> list[dict[str, Any]]:
    """Compute every ``(loss, gradient)`` of ``runs`` chunk by chunk, checkpointing each
    chunk under ``out/checkpoints`` and reusing chunks already there; return one summary
    per run (curve, per-centre final errors, converged count, compute seconds).

    Each chunk runs on one thread: in this process (``workers=1``) or in a pool of
    ``workers`` processes. Processes, not threads: on a loaded machine OpenMP threads that
    wait on each other slowed this work down a hundredfold in our measurements, and
    single-threaded chunks give the same numbers whatever the number of workers.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from detloss.experiments.progress import progress_bar

    columns = (
        TextColumn("[bold]{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with progress_bar(*columns, enabled=progress) as bar:
        tasks = {run: bar.add_task(f"{run[0]} / {run[1]}", total=setup.chunks) for run in runs}
        todo = []
        for loss, gradient in runs:
            for k in range(setup.chunks):
                path = _chunk_path(out, loss, gradient, k)
                if path.exists() and _load_chunk(path) is not None:
                    bar.advance(tasks[(loss, gradient)])
                else:
                    todo.append((loss, gradient, k))

        def finished(loss: str, gradient: str, k: int) -> None:
            bar.advance(tasks[(loss, gradient)])
            if on_chunk is not None:
                on_chunk(loss, gradient, k)

        if workers <= 1 or len(todo) <= 1:
            with torch_threads(1):
                for loss, gradient, k in todo:
                    compute_chunk(setup, loss, gradient, k, _chunk_path(out, loss, gradient, k))
                    finished(loss, gradient, k)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")  # no fork of a process that runs OpenMP
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init)
            try:
                futures = {}
                for item in todo:
                    futures[pool.submit(compute_chunk, setup, *item, _chunk_path(out, *item))] = item
                for future in as_completed(futures):
                    future.result()
                    finished(*futures[future])
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    summaries = []
    for loss, gradient in runs:
        chunks = [_load_chunk(_chunk_path(out, loss, gradient, k)) for k in range(setup.chunks)]
        if any(c is None for c in chunks):
            raise DetLossError(f"simulate(): a checkpoint of {loss}/{gradient} in {out} could not be read")
        done = [c for c in chunks if c is not None]
        curve = torch.stack([c["curve"] for c in done]).sum(dim=0)
        summaries.append(
            {
                "loss": loss,
                "gradient": gradient,
                "curve": curve.tolist(),
                "point_error": torch.cat([c["point_error"] for c in done]).tolist(),
                "converged": sum(int(c["converged"]) for c in done),
                "nonfinite": sum(int(c["nonfinite"]) for c in done),
                "seconds": sum(float(c["seconds"]) for c in done),
                "path": "/".join(sorted({str(c.get("path", "torch")) for c in done})),
            }
        )
    return summaries


def default_workers() -> int:
    """Worker processes for ``detloss simulate``: one per CPU, at most 8."""
    import os

    return max(1, min(os.cpu_count() or 1, 8))


def parse_names(
    text: str, where: str, name: str, choices: Sequence[str], aliases: Mapping[str, Sequence[str]]
) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``, with aliases expanded and every name checked."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            names += list(aliases.get(part, (part,)))
    if not names:
        raise DetLossError.bad_argument(where, name, "a comma-separated list", repr(text))
    for value in names:
        check_choice(where, name, value, choices)
    return list(dict.fromkeys(names))


def parse_losses(text: str) -> list[str]:
    """``--losses``: registry keys of box losses, ``classic`` (IoU, GIoU, DIoU, CIoU) or ``all``."""
    return parse_names(text, _WHERE, "losses", box_losses(), {"classic": PAPER_LOSSES, "all": box_losses()})


def parse_gradients(text: str) -> list[str]:
    """``--gradient``: ``exact``, ``paper``, or both (``exact,paper`` or ``both``)."""
    return parse_names(text, _WHERE, "gradient", GRADIENTS, {"both": GRADIENTS})


def plan_runs(losses: Sequence[str], gradients: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The ``(loss, gradient)`` pairs to run, paper mode first, and notes on what is skipped."""
    known = box_losses()
    for loss in losses:
        check_choice(_WHERE, "losses", loss, known)
    for gradient in gradients:
        check_choice(_WHERE, "gradient", gradient, GRADIENTS)
    runs: list[tuple[str, str]] = []
    notes: list[str] = []
    skipped: list[str] = []
    for gradient in sorted(set(gradients), key=GRADIENTS[::-1].index):
        for loss in dict.fromkeys(losses):
            if gradient == "paper" and loss not in PAPER_LOSSES:
                skipped.append(loss)
                continue
            runs.append((loss, gradient))
    if skipped:
        notes.append(
            f"{', '.join(skipped)}: no published simulation code to reproduce, so exact gradients only "
            "(`paper` mode exists for iou, giou, diou, ciou)."
        )
    for loss, options in LOSS_OPTIONS.items():
        if loss in losses:
            notes.append(f"{loss}: run with {options}.")
    if "wiou" in losses:
        notes.append("wiou: its running mean of the IoU loss starts afresh for each chunk of anchor centres.")
    return runs, notes


def simulate(
    *,
    losses: Sequence[str] = PAPER_LOSSES,
    gradients: Sequence[str] = ("exact",),
    setup: Setup | None = None,
    out: Path | None = None,
    resume: bool = False,
    workers: int = 1,
    progress: bool = True,
    figures: bool = True,
    on_chunk: ChunkHook | None = None,
) -> Path:
    """Run the simulation and write ``results.json``, ``results.csv``, ``curves.csv``,
    ``point_errors.csv``, the figures and ``report.md`` to ``out`` (a fresh
    ``runs/simulate-<stamp>`` if None); return the folder.

    ``resume=True`` continues the interrupted run in ``out`` (the newest
    ``runs/simulate-*`` if None) with the settings it was started with, reusing its
    checkpointed chunks. ``on_chunk(loss, gradient, k)`` is called after each computed chunk
    (tests use it to interrupt a run).
    """
    from detloss.experiments.runs import new_run_dir, run_header, write_csv, write_json

    started = time.perf_counter()
    if resume:
        if out is None:
            out = latest_run()
        plan = _saved_plan(out) if out is not None else None
        if out is None or plan is None:
            raise DetLossError.bad_argument(
                _WHERE, "resume", "a folder with an interrupted simulate run (runs/simulate-*/checkpoints)", str(out)
            )
        setup = Setup(**plan["setup"])
        losses, gradients = plan["losses"], plan["gradients"]
    setup = setup or Setup()
    setup.check()
    runs, notes = plan_runs(list(losses), list(gradients))
    if not runs:
        raise DetLossError.bad_argument(_WHERE, "losses", "at least one loss to run", list(losses))
    out = new_run_dir("simulate", out)
    if not resume:
        _start_checkpoints(out, {"setup": asdict(setup), "losses": list(losses), "gradients": list(gradients)})
    check_range(_WHERE, "workers", workers, 1, None)
    computing = time.perf_counter()
    summaries = run_cases(setup, runs, out, workers=int(workers), progress=progress, on_chunk=on_chunk)
    wall_seconds = _add_wall_seconds(out, time.perf_counter() - computing)
    steps = setup.steps
    table_steps = [t for t in TABLE_STEPS if t <= steps] + ([steps] if steps not in TABLE_STEPS else [])
    results_runs = []
    for s in summaries:
        curve = s["curve"]
        results_runs.append(
            {
                "loss": s["loss"],
                "gradient": s["gradient"],
                "error_at": {str(t): curve[t] for t in table_steps},
                "final_error": curve[steps],
                "converged_fraction": s["converged"] / setup.cases,
                "nonfinite_cases": s["nonfinite"],
                "seconds": round(s["seconds"], 3),
                "path": s["path"],
                "curve": curve,
            }
        )
    notes = [*notes, _path_note(results_runs)]
    header_args = {
        "losses": list(losses),
        "gradient": list(gradients),
        **asdict(setup),
        "out": str(out),
        "resume": resume,
    }
    payload: dict[str, Any] = run_header("simulate", header_args, started)
    payload.update(
        {
            "cases": setup.cases,
            "points": setup.points,
            "steps": steps,
            "initial_error": summaries[0]["curve"][0],
            "wall_seconds": round(wall_seconds, 3),
            "workers": workers,
            "compute_seconds": round(sum(s["seconds"] for s in summaries), 3),
            "runs": results_runs,
            "notes": notes,
            "reference": REFERENCE,
        }
    )
    write_json(out / "results.json", payload)
    write_csv(
        out / "results.csv",
        (
            {
                "loss": r["loss"],
                "gradient": r["gradient"],
                **{f"E({t})": r["error_at"][str(t)] for t in table_steps},
                "converged_fraction": r["converged_fraction"],
                "seconds": r["seconds"],
            }
            for r in results_runs
        ),
    )
    names = [f"{r['loss']}/{r['gradient']}" for r in results_runs]
    write_csv(
        out / "curves.csv",
        ({"step": t, **{n: r["curve"][t] for n, r in zip(names, results_runs)}} for t in range(steps + 1)),
    )
    points_xy = anchor_points(setup.points, seed=setup.seed).tolist()
    write_csv(
        out / "point_errors.csv",
        (
            {
                "x": f"{xy[0]:.6f}",
                "y": f"{xy[1]:.6f}",
                **{n: f"{s['point_error'][i]:.6g}" for n, s in zip(names, summaries)},
            }
            for i, xy in enumerate(points_xy)
        ),
    )
    if figures:
        from detloss.experiments.report import write_simulation_report

        write_simulation_report(out, payload, points_xy, summaries)
    payload["seconds"] = round(time.perf_counter() - started, 3)
    write_json(out / "results.json", payload)
    if progress:
        plural = "es" if workers != 1 else ""
        print(
            f"simulate: {len(results_runs)} run{'s' if len(results_runs) != 1 else ''} of {setup.cases:,} cases x "
            f"{steps} steps in {wall_seconds:.1f} s wall clock ({workers} worker process{plural}). "
            f"{_path_note(results_runs)}"
        )
    return out


def _path_note(runs: Sequence[Mapping[str, Any]]) -> str:
    """Which runs the native kernel computed, and which the torch loop."""
    native = [f"{r['loss']}/{r['gradient']}" for r in runs if r["path"] == "native"]
    other = [f"{r['loss']}/{r['gradient']}" for r in runs if r["path"] != "native"]
    parts = []
    if native:
        parts.append(f"native kernel (`detloss::regress_boxes`, every step in C++): {', '.join(native)}")
    if other:
        parts.append(f"torch loop (`regress`): {', '.join(other)}")
    return "Computed by the " + "; by the ".join(parts) + "."

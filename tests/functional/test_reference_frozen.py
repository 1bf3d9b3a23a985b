"""The reference compositions against frozen copies of their earlier, op-by-op forms.

The reference path was rewritten for speed (corner pairs instead of single coordinates,
in-place ops on fresh intermediates, shared terms). The earlier compositions are written out
here as they were; on the fuzz generator's edge-case families (degenerate, inverted, huge,
tiny, far-off boxes; extreme and saturating logits, hard, soft and edge targets) the new ones
must give the same values and gradients, float32 and float64: bit for bit where the
arithmetic per element is the same, and within one unit in the last place where only the
order in which autograd sums a gradient's contributions changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as tnf

from detloss import use_backend
from detloss.boxes.iou import box_similarity
from detloss.experiments.fuzz.generators import (
    BINARY_TARGETS,
    BOX_FAMILIES,
    LOGIT_FAMILIES,
    LOGIT_LIMIT,
    _binary_targets,
    _box_rows,
    _logit_values,
)
from detloss.functional import (
    binary_cross_entropy_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    varifocal_loss,
)
from tests._fused.test_fused import VARIANTS

DTYPES = (torch.float32, torch.float64)
N = 257

# ------------------------------------------------------------------ frozen: box_similarity


def _old_extent(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = hi >= lo
    return torch.where(valid, lo, hi), torch.where(valid, hi, lo)


def old_box_similarity(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    eps: float,
    *,
    alpha_gate: bool = False,
    aspect_grad: str = "exact",
    siou_theta: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The single-coordinate composition, as it was."""
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    pw, ph = (px2 - px1).clamp(min=0), (py2 - py1).clamp(min=0)
    tw, th = (tx2 - tx1).clamp(min=0), (ty2 - ty1).clamp(min=0)
    iw = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0)
    ih = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp(min=0)
    inter = iw * ih
    union_area = pw * ph + tw * th - inter
    union = union_area + eps
    iou = inter / union
    if kind == "iou":
        return iou, iou
    (pl, pr), (tl, tr) = _old_extent(px1, px2), _old_extent(tx1, tx2)
    (pt, pb), (tt, tb) = _old_extent(py1, py2), _old_extent(ty1, ty2)
    cw = torch.maximum(pr, tr) - torch.minimum(pl, tl)
    ch = torch.maximum(pb, tb) - torch.minimum(pt, tt)
    if kind == "giou":
        enclosing = cw * ch + eps
        return iou - (enclosing - union) / enclosing, iou
    dx = 0.5 * ((tx1 + tx2) - (px1 + px2))
    dy = 0.5 * ((ty1 + ty2) - (py1 + py2))
    rho2 = dx * dx + dy * dy
    if kind == "wiou":
        return 1.0 - torch.exp(rho2 / (cw * cw + ch * ch + eps).detach()) * (1.0 - iou), iou
    if kind == "siou":
        angle = 2.0 * (dx * dy).abs() / (rho2 + eps)
        gamma = 2.0 - angle
        distance = (1 - torch.exp(-gamma * (dx / (cw + eps)) ** 2)) + (1 - torch.exp(-gamma * (dy / (ch + eps)) ** 2))
        omega_w = (pw - tw).abs() / (torch.maximum(pw, tw) + eps)
        omega_h = (ph - th).abs() / (torch.maximum(ph, th) + eps)
        shape = (1 - torch.exp(-omega_w)) ** siou_theta + (1 - torch.exp(-omega_h)) ** siou_theta
        return iou - 0.5 * (distance + shape), iou
    diou = iou - rho2 / (cw * cw + ch * ch + eps)
    if kind == "diou":
        return diou, iou
    if kind == "eiou":
        return diou - (pw - tw) ** 2 / (cw * cw + eps) - (ph - th) ** 2 / (ch * ch + eps), iou
    v = 4.0 / math.pi**2 * (torch.atan2(tw + eps, th + eps) - torch.atan2(pw + eps, ph + eps)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
        if alpha_gate:
            gate = (2 * inter >= union_area) & (inter > 0)
            alpha = torch.where(gate, alpha, torch.zeros_like(alpha))
    if aspect_grad == "paper":
        scale = (pw * pw + ph * ph).detach()
        v = v.detach() + scale * (v - v.detach())
    return diou - alpha * v, iou


# ------------------------------------------------------------------ frozen: binary family


def _old_bce(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -(t * tnf.logsigmoid(x) + (1 - t) * tnf.logsigmoid(-x))


def _old_pow(base: torch.Tensor, exponent: float) -> torch.Tensor:
    if exponent == 0:
        return torch.ones_like(base)
    if exponent >= 1:
        return base.clamp(min=0) ** exponent
    floor = torch.finfo(base.dtype).tiny
    exact = base.detach().clamp(min=0) ** exponent
    return torch.where(base < floor, exact, base.clamp(min=floor) ** exponent)


def old_focal(x: torch.Tensor, t: torch.Tensor, alpha: float | None, gamma: float) -> torch.Tensor:
    loss = _old_bce(x, t)
    if gamma != 0:
        loss = loss * _old_pow(t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x), gamma)
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def old_quality(x: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    loss = _old_bce(x, t)
    if beta != 0:
        loss = loss * _old_pow((t * torch.sigmoid(-x) - (1 - t) * torch.sigmoid(x)).abs(), beta)
    return loss


def old_varifocal(x: torch.Tensor, t: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    loss = _old_bce(x, t)
    return loss * torch.where(t > 0, t, alpha * _old_pow(torch.sigmoid(x), gamma))


# ------------------------------------------------------------------ comparison


def assert_same(new: torch.Tensor, old: torch.Tensor, what: str, ulps: int) -> None:
    """Equal, NaN where NaN, or (``ulps`` = 1) each element at most one float step away."""
    assert new.shape == old.shape and new.dtype == old.dtype, what
    same = (new == old) | (new.isnan() & old.isnan())
    if ulps and not bool(same.all()):
        up = torch.nextafter(old, torch.full_like(old, math.inf))
        down = torch.nextafter(old, torch.full_like(old, -math.inf))
        same |= (new == up) | (new == down)
    if not bool(same.all()):
        i = int((~same).nonzero()[0, 0]) if new.dim() else 0
        bad = int((~same).sum())
        raise AssertionError(
            f"{what}: {bad} of {new.numel()} differ, first {new.flatten()[i]!r} vs {old.flatten()[i]!r}"
        )


def _values_and_grads(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: tuple[torch.Tensor, ...],
    seed: int,
    grad: tuple[bool, ...] = (True, True),
) -> list[torch.Tensor]:
    """The outputs, then the gradients of the inputs flagged in ``grad`` for a random upstream."""
    leaves = [t.detach().clone().requires_grad_(g) for t, g in zip(inputs, grad)]
    out = fn(*leaves)
    outs = list(out) if isinstance(out, tuple) else [out]
    g = torch.Generator().manual_seed(seed)
    upstream = [torch.rand(o.shape, generator=g, dtype=o.dtype) + 0.5 for o in outs]
    wanted = [x for x in leaves if x.requires_grad]
    grads = torch.autograd.grad(outs, wanted, upstream, allow_unused=True)
    return [o.detach() for o in outs] + [torch.zeros_like(x) if gr is None else gr for x, gr in zip(wanted, grads)]


BOX_CASES = [*VARIANTS, ("wiou", {})]  # every kind and option of the fast path, and Wise-IoU v1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("kind", "options"), BOX_CASES, ids=[f"{k}-{'-'.join(map(str, o.values()))}" for k, o in BOX_CASES]
)
def test_box_similarity_matches_the_frozen_composition(
    kind: str, options: dict[str, object], dtype: torch.dtype
) -> None:
    for j, family in enumerate(BOX_FAMILIES):
        pred, target = (t.to(dtype) for t in _box_rows(torch.Generator().manual_seed(j), family, N))
        for eps in (1e-7, 1.0):
            new = _values_and_grads(lambda p, t, eps=eps: box_similarity(p, t, kind, eps, **options), (pred, target), j)
            old = _values_and_grads(
                lambda p, t, eps=eps: old_box_similarity(p, t, kind, eps, **options), (pred, target), j
            )
            for name, a, b in zip(("similarity", "iou", "grad pred", "grad target"), new, old):
                assert_same(a, b, f"{kind} {family} eps={eps} {name}", ulps=0 if name in ("similarity", "iou") else 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_box_similarity_matches_on_broadcast_blocks(dtype: torch.dtype) -> None:
    """The pairwise layout, ``(n, 1, 4)`` against ``(1, m, 4)``: values bit for bit; a
    broadcast input's gradient is a sum over the broadcast dimension, which torch adds up in
    an order that depends on the layout (pairs of corners now), so it agrees to the rounding
    of that sum: within one float step of the largest gradient entry."""
    pred, target = (t.to(dtype) for t in _box_rows(torch.Generator().manual_seed(5), "mixed", 24))
    for kind in ("iou", "giou", "diou", "ciou", "eiou", "siou"):
        new = _values_and_grads(
            lambda p, t, kind=kind: box_similarity(p[:, None], t[None], kind, 1e-7), (pred, target), 1
        )
        old = _values_and_grads(
            lambda p, t, kind=kind: old_box_similarity(p[:, None], t[None], kind, 1e-7), (pred, target), 1
        )
        for name, a, b in zip(("similarity", "iou"), new, old):
            assert_same(a, b, f"{kind} {name}", ulps=0)
        for name, a, b in zip(("grad pred", "grad target"), new[2:], old[2:]):
            step = torch.finfo(dtype).eps * float(b.abs().max())
            assert float((a - b).abs().max()) <= step, f"{kind} {name}"


def _binary_inputs(j: int, family: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + j)
    logits = _logit_values(g, family, (N // 8, 8), LOGIT_LIMIT)
    target = _binary_targets(g, BINARY_TARGETS[j % len(BINARY_TARGETS)], logits)
    return logits.to(dtype), target.to(dtype)


BINARY_CASES: list[tuple[str, Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = [
    ("bce", lambda x, t: binary_cross_entropy_loss(x, t, reduction="none"), _old_bce),
    ("focal", lambda x, t: sigmoid_focal_loss(x, t, reduction="none"), lambda x, t: old_focal(x, t, 0.25, 2.0)),
    (
        "focal-noalpha-g0.5",
        lambda x, t: sigmoid_focal_loss(x, t, alpha=None, gamma=0.5, reduction="none"),
        lambda x, t: old_focal(x, t, None, 0.5),
    ),
    (
        "focal-g0",
        lambda x, t: sigmoid_focal_loss(x, t, alpha=0.4, gamma=0.0, reduction="none"),
        lambda x, t: old_focal(x, t, 0.4, 0.0),
    ),
    ("quality", lambda x, t: quality_focal_loss(x, t, reduction="none"), lambda x, t: old_quality(x, t, 2.0)),
    (
        "quality-b0.3",
        lambda x, t: quality_focal_loss(x, t, beta=0.3, reduction="none"),
        lambda x, t: old_quality(x, t, 0.3),
    ),
    ("varifocal", lambda x, t: varifocal_loss(x, t, reduction="none"), lambda x, t: old_varifocal(x, t, 0.75, 2.0)),
    (
        "varifocal-g1.5",
        lambda x, t: varifocal_loss(x, t, alpha=0.5, gamma=1.5, reduction="none"),
        lambda x, t: old_varifocal(x, t, 0.5, 1.5),
    ),
]


@pytest.mark.parametrize("target_grad", [False, True], ids=["target-fixed", "target-grad"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "new_fn", "old_fn"), BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_binary_reference_matches_the_frozen_composition(
    name: str,
    new_fn: Callable[..., torch.Tensor],
    old_fn: Callable[..., torch.Tensor],
    dtype: torch.dtype,
    target_grad: bool,
) -> None:
    """With a fixed target (the common case) the focal family shares ``1 - target``; with a
    target that needs a gradient each term makes its own, as before."""
    with use_backend("reference"):
        for j, family in enumerate(LOGIT_FAMILIES):
            x, t = _binary_inputs(j, family, dtype)
            new = _values_and_grads(new_fn, (x, t), j, (True, target_grad))
            old = _values_and_grads(old_fn, (x, t), j, (True, target_grad))
            for what, a, b in zip(("loss", "grad pred", "grad target"), new, old):
                assert_same(a, b, f"{name} {family} {what}", ulps=0 if what == "loss" else 1)

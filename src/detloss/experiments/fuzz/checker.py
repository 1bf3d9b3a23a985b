r"""The checks of one case: finite value, finite gradient, agreement with float64.

The rule and its tolerances are described in :mod:`detloss.experiments.fuzz`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from detloss.experiments.fuzz.generators import Case, _spec

_STORAGE = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "autocast_bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class Tolerance:
    """``|l - l64| <= atol + rtol |l64| + k u kappa`` (see :mod:`detloss.experiments.fuzz`)."""

    atol: float
    rtol: float
    k: float
    unit: float

    def describe(self) -> str:
        return f"atol {self.atol:g} + rtol {self.rtol:g} |ref| + {self.k:g} u kappa (u = {self.unit:.3g})"


_F32 = Tolerance(atol=1e-5, rtol=1e-5, k=16.0, unit=2.0**-24)
#: Per dtype mode. Half inputs are computed in float32 (the dtype policy), so their
#: arithmetic is float32's; their inputs are rounded first, and the reference uses the
#: rounded inputs.
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(atol=1e-12, rtol=1e-10, k=16.0, unit=2.0**-53),
    "float32": _F32,
    "float16": _F32,
    "bfloat16": _F32,
    "autocast_bf16": _F32,
}

#: The change of the loss under sampled moves of the inputs is a lower bound of its largest
#: change within the ball (a discontinuity such as CIoU's gate at IoU = 0.5 may be crossed by
#: a move that lands just past it); the allowance is this multiple of the largest seen.
SAMPLING_MARGIN = 2.0
#: Losses that are discontinuous functions of their inputs by design: their value is not
#: compared with float64 except in float64 itself (finiteness is checked everywhere).
DISCONTINUOUS: dict[str, str] = {
    "ghm_c": "weights from bins of |sigmoid(x) - t|: an element within rounding of a bin edge (sigmoid(17) is "
    "1 in float32) falls on either side, and the weights of its whole batch change",
}
#: Largest |coordinate| and |regression value| generated.


@dataclass
class Outcome:
    """What :func:`check_case` found. ``failure`` is None, "value", "gradient", "mismatch" or "error"."""

    case: Case
    failure: str | None = None
    detail: str = ""
    max_error: float = 0.0
    #: Largest ``error / tolerance`` over the output (< 1 passes).
    ratio: float = 0.0
    #: Counted, not failed: "conditioned" (agreement needed the conditioning allowance),
    #: "gradient_overflow" (a half-precision gradient beyond the dtype's range is ``inf``)
    #: or "not_compared" (a discontinuous loss outside float64).
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def _storage_dtype(mode: str, differentiated: bool) -> torch.dtype:
    if mode == "autocast_bf16" and not differentiated:
        return torch.float32
    return _STORAGE[mode]


def _round(master: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``master`` in ``dtype``, clamped first into its finite range (float16 ends at 65504)."""
    if not master.is_floating_point():
        return master.clone()
    big = torch.finfo(dtype).max / 2
    return master.clamp(-big, big).to(dtype)


def _noncontiguous(values: torch.Tensor) -> torch.Tensor:
    """A new tensor with the values of ``values`` but not contiguous in memory: reversed
    (column-major) strides from 2 dimensions up, a stride of 2 for one dimension."""
    if values.dim() >= 2:
        strides, acc = [], 1
        for s in values.shape:
            strides.append(acc)
            acc *= max(s, 1)
    else:
        strides = [2] * values.dim()
    out = torch.empty_strided(tuple(values.shape), tuple(strides), dtype=values.dtype)
    out.copy_(values)
    return out


def _leaves(case: Case) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(leaves, call_tensors)``: what requires grad, and what is passed to the loss."""
    leaves: list[torch.Tensor] = []
    calls: list[torch.Tensor] = []
    for i, (master, diff) in enumerate(zip(case.inputs, case.grad)):
        value = _round(master, _storage_dtype(case.dtype, diff))
        if case.layout == "broadcast" and i == case.broadcast_input and value.dim() >= 1 and value.shape[0] > 0:
            leaf = value[:1].clone()
            if diff and leaf.is_floating_point():
                leaf.requires_grad_(True)
            call = leaf.expand(value.shape)
        elif case.layout == "noncontiguous" and value.numel() > 1:
            leaf = _noncontiguous(value)
            if diff and leaf.is_floating_point():
                leaf.requires_grad_(True)
            call = leaf
        else:
            leaf = value.clone()
            if diff and leaf.is_floating_point():
                leaf.requires_grad_(True)
            call = leaf
        leaves.append(leaf)
        calls.append(call)
    return leaves, calls


_SHAPES: dict[tuple[Any, ...], torch.Size] = {}


def _elementwise_shape(case: Case, inputs: Sequence[torch.Tensor]) -> torch.Size:
    """The shape of the loss with ``reduction="none"`` (what ``weight`` has), cached."""
    key = (
        case.loss,
        tuple(tuple(t.shape) for t in inputs),
        tuple(sorted((k, repr(v)) for k, v in case.options.items())),
    )
    if key not in _SHAPES:
        with torch.no_grad():
            _SHAPES[key] = _call(case.loss, inputs, case, None, "none").shape
    return _SHAPES[key]


def _weight_tensor(case: Case, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor | None:
    if case.weight == "none":
        return None
    g = torch.Generator().manual_seed(case.seed * 7919 + case.index + 17)
    if case.weight == "zeros":
        w = torch.zeros(shape, dtype=torch.float64)
    else:
        w = torch.rand(shape, generator=g, dtype=torch.float64) * 2
        if case.weight == "some_zeros":
            w = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.5, 0.0, w)
    return w.to(dtype)


def _call(
    key: str, inputs: Sequence[torch.Tensor], case: Case, weight: torch.Tensor | None, reduction: str
) -> torch.Tensor:
    kwargs: dict[str, Any] = dict(case.options)
    kwargs["reduction"] = reduction
    if weight is not None:
        kwargs["weight"] = weight
    if case.avg_factor is not None and reduction == "mean":
        kwargs["avg_factor"] = case.avg_factor
    return _spec(key).function(*inputs, **kwargs)


def _perturbation_scales(
    key: str, xs: Sequence[torch.Tensor], options: dict[str, Any] | None = None
) -> list[torch.Tensor | None]:
    """How far rounding in the arithmetic can move each input, in units of ``u``.

    Numbers that the loss adds to or subtracts from each other share the scale of the
    largest of them (a box's corners and its target's corners, a row of softmax logits, a
    prediction and its regression target): ``x1 = cx - w / 2`` at ``cx = 1e6`` moves ``x1`` by
    ``u * 1e6`` however small ``w`` is. Numbers used only multiplicatively (sigmoid logits,
    targets in [0, 1], scores) have their own magnitude as scale. Integers are not moved.
    Rotated boxes in ``cxcywha`` are compared relative to each other (the centres are
    subtracted first): centres and sides share the largest of the centre offset and the four
    sides of the pair; the angle enters through ``cos`` and ``sin``, whose rounding is absolute,
    so its scale is 1 radian (``deg``: 57.3, or the angle itself when larger, for the
    conversion). Corners (``xyxyxyxy``) share their row's largest magnitude, as boxes do.
    """
    kind = _spec(key).inputs
    scales: list[torch.Tensor | None] = [x.detach().abs().double() if x.is_floating_point() else None for x in xs]

    def share(*idx: int, rows: bool = True) -> None:
        # inputs idx get one scale: the largest magnitude of the row (last dimension) if
        # rows, else elementwise, across all of them
        parts = [scales[i] for i in idx]
        tensors = [t for t in parts if t is not None]
        if len(tensors) != len(idx):
            return
        if rows:
            tensors = [t.amax(-1, keepdim=True) if t.numel() else t[..., :1] for t in tensors]
        common = tensors[0]
        for t in tensors[1:]:
            common = torch.maximum(common, t)
        for i in idx:
            scales[i] = common.expand_as(xs[i])

    if kind == "rotated_boxes" and len(xs) >= 2:
        if (options or {}).get("box_format", "cxcywha") == "xyxyxyxy":
            share(0, 1)
        else:
            _rotated_scales(xs, scales, (options or {}).get("angle_unit", "rad"))
    elif kind == "boxes" and len(xs) >= 2:
        share(0, 1)
    elif kind == "iou_aware" and len(xs) >= 3:
        share(1, 2)
    elif kind == "values" and len(xs) >= 2:
        share(0, 1, rows=False)
    elif kind in ("class_logits", "distribution"):
        share(0)
    elif kind == "distill" and len(xs) >= 2:
        share(0)
        share(1)
    return scales


def _rotated_scales(xs: Sequence[torch.Tensor], scales: list[torch.Tensor | None], angle_unit: str) -> None:
    """Scales of a pred/target pair of ``cxcywha`` rotated boxes (see :func:`_perturbation_scales`)."""
    p, t = (x.detach().double() for x in xs[:2])
    p, t = torch.broadcast_tensors(p, t)
    offset = (p[..., :2] - t[..., :2]).abs()
    common = torch.cat((offset, p[..., 2:4].abs(), t[..., 2:4].abs()), dim=-1).amax(-1, keepdim=True)
    for i, box in enumerate((p, t)):
        angle = box[..., 4:]
        angle_scale = torch.ones_like(angle) if angle_unit == "rad" else angle.abs().clamp(min=180 / math.pi)
        scales[i] = torch.cat((common.expand(*common.shape[:-1], 4), angle_scale), dim=-1).expand_as(xs[i])


def _to_groups(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Per-element ``t`` (shaped like an input) summed onto output elements of ``shape``."""
    g = len(shape)
    if tuple(t.shape[:g]) == tuple(shape):
        return t.reshape(*shape, -1).sum(-1) if t.numel() else torch.zeros(shape, dtype=t.dtype)
    if tuple(shape[: t.dim()]) == tuple(t.shape):
        return t.reshape(tuple(t.shape) + (1,) * (g - t.dim())).expand(shape)
    return t.sum().expand(shape)


def _explained_error(
    case: Case, ref_inputs: list[torch.Tensor], weight: torch.Tensor | None, needed: torch.Tensor | None = None
) -> torch.Tensor:
    """The error the conditioning of the input explains, per element of the float64 output:
    the larger of ``k u kappa`` (``kappa`` from the float64 gradient) and the largest change
    of the float64 loss when the inputs move by up to ``k u`` times their scale (the boxes'
    corners rounded to float32; random moves at three radii, half of them to corners of the
    box; rigid moves of predicted boxes; and the same around the rounded corners). Stops as
    soon as every element explains ``needed``."""
    tol = TOLERANCES[case.dtype]
    xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in ref_inputs]
    scales = _perturbation_scales(case.loss, xs, case.options)
    out = _call(case.loss, xs, case, weight, case.reduction)
    diff = [(x, s) for x, s in zip(xs, scales) if x.requires_grad and s is not None]
    grads = torch.autograd.grad(out.sum(), [x for x, _ in diff], allow_unused=True) if out.requires_grad else []
    kappa = torch.zeros(out.shape, dtype=torch.float64)
    for (_, s), gx in zip(diff, grads):
        if gx is not None:
            kappa = kappa + _to_groups((gx.detach().double().abs() * s).nan_to_num(posinf=1e300), out.shape)
    explained = tol.k * tol.unit * kappa
    base = out.detach().double()
    with torch.no_grad():
        for moved in _moves(case, [x.detach() for x in xs], scales):
            if needed is not None and bool((explained >= needed).all()):
                break
            try:
                other = _call(case.loss, moved, case, weight, case.reduction).double()
            except Exception:  # a move outside the loss's domain teaches nothing
                continue
            change = (other - base).abs().nan_to_num(nan=0.0, posinf=1e300)
            explained = torch.maximum(explained, SAMPLING_MARGIN * change)
    return explained


def _moves(case: Case, xs: list[torch.Tensor], scales: list[torch.Tensor | None]) -> Iterator[list[torch.Tensor]]:
    """The moved inputs :func:`_explained_error` tries, most telling first."""
    tol = TOLERANCES[case.dtype]
    g = torch.Generator().manual_seed(case.seed * 31 + case.index)
    radius = tol.k * tol.unit
    centres = [xs]
    corners = _corners_in_working_precision(case, xs)
    if corners is not None:
        yield corners
        centres.insert(0, corners)
    for centre in centres:
        for trial in range(12):
            size = radius / 4 ** (trial % 3)  # 16 u, 4 u and u: big moves miss narrow features
            moved = []
            for x, scale in zip(centre, scales):
                r = 2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1
                moved.append(x if scale is None else x + (r.sign() if trial % 2 else r) * size * scale)
            yield moved
        for size in (radius, radius / 4, radius / 16):
            yield from _translations(case, centre, scales, size, g)
        for size in (radius / 16, radius):
            yield from _axis_moves(centre, scales, size)


def _axis_moves(xs: list[torch.Tensor], scales: list[torch.Tensor | None], size: float) -> Iterator[list[torch.Tensor]]:
    """One column (the same number of every row: ``x1`` of every predicted box, the logit of
    class 2, ...) moved up or down, the others kept. At a kink or a jump (boxes that share
    edges; CIoU's gate at IoU = 0.5) only a few directions change the loss one way, and
    random moves of every number at once rarely pick them."""
    for i, (x, scale) in enumerate(zip(xs, scales)):
        if scale is None or x.dim() == 0 or x.shape[-1] > 32:
            continue
        for col in range(x.shape[-1]):
            for sign in (1.0, -1.0):
                step = torch.zeros_like(x)
                step[..., col] = sign * size * scale[..., col]
                moved = list(xs)
                moved[i] = x + step
                yield moved


def _translations(
    case: Case, xs: list[torch.Tensor], scales: list[torch.Tensor | None], radius: float, g: torch.Generator
) -> list[list[torch.Tensor]]:
    """The predicted boxes moved rigidly by up to ``radius`` times their scale: rounding the
    centres (``(x1 + x2) / 2`` at ``x = 1e6``) shifts a box without changing its size, which
    independent moves of the four numbers rarely reproduce."""
    kind = _spec(case.loss).inputs
    i = 0 if kind in ("boxes", "rotated_boxes") else 1 if kind == "iou_aware" else -1
    if i < 0 or scales[i] is None or xs[i].dim() < 2:
        return []
    fmt = case.options.get("box_format", "xyxy")
    out = []
    for trial in range(2):
        r = 2 * torch.rand((*xs[i].shape[:-1], 2), generator=g, dtype=torch.float64) - 1
        shift = (r.sign() if trial % 2 else r) * radius * scales[i][..., :2]  # type: ignore[index]
        zero = torch.zeros_like(shift)
        if fmt == "xyxyxyxy":  # every corner
            step = shift.repeat(*(1,) * (shift.dim() - 1), 4)
        elif fmt == "cxcywha":  # the centre only
            step = torch.cat((shift, zero, zero[..., :1]), dim=-1)
        else:
            step = torch.cat((shift, shift if fmt == "xyxy" else zero), dim=-1)
        moved = list(xs)
        moved[i] = xs[i] + step
        out.append(moved)
    return out


def _corners_in_working_precision(case: Case, xs: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """The inputs with the boxes' corners rounded to float32, or None when that changes nothing.

    A box loss works on corners: ``x2 = x + w`` (``xywh``) or ``cx + w / 2`` (``cxcywh``),
    rounded to float32 for float32 and half inputs. Far from the origin that rounding alone
    can change a thin box's width by a large fraction (``w = 0.03`` at ``x = 4e5``, where
    float32's spacing is 0.03), which no small random move of the inputs reproduces; the loss
    at the rounded corners, in float64, shows the error it causes."""
    fmt = case.options.get("box_format", "xyxy")
    kind = _spec(case.loss).inputs
    idx = (0, 1) if kind == "boxes" else (1, 2) if kind == "iou_aware" else ()
    if fmt == "xyxy" or not idx or TOLERANCES[case.dtype].unit != _F32.unit:
        return None
    from detloss.boxes import convert

    out = list(xs)
    for i in idx:
        out[i] = convert(convert(xs[i], fmt, "xyxy").float().double(), "xyxy", fmt)
    return out


def _overflowed_gradients(
    case: Case, calls: list[torch.Tensor], weight: torch.Tensor | None, grads: Sequence[torch.Tensor | None]
) -> str | None:
    """None if every non-finite gradient entry of a half-precision input is the rounding of
    a finite float32 gradient beyond the half range (float16 ends at 65504; the loss computes
    in float32 and autograd casts the gradient back to the input's dtype, which is what
    mixed-precision training's gradient scaler watches for); otherwise what went wrong."""
    half = case.dtype in ("float16", "bfloat16", "autocast_bf16")
    if not half:
        for i, got in enumerate(grads):
            if got is not None and not bool(torch.isfinite(got).all()):
                return f"non-finite gradient of input {i}: {_brief(got)}"
        return None
    calls32 = [c.detach().float().contiguous().requires_grad_(c.requires_grad) for c in calls]
    out = _call(case.loss, calls32, case, None if weight is None else weight.float(), case.reduction)
    diff = [c for c in calls32 if c.requires_grad]
    in_float32 = torch.autograd.grad(out.sum(), diff, allow_unused=True)
    for i, (got, want, call) in enumerate(zip(grads, in_float32, [c for c in calls if c.requires_grad])):
        if got is None or bool(torch.isfinite(got).all()):
            continue
        if want is None or not bool(torch.isfinite(want).all()):
            return f"non-finite gradient of input {i}, non-finite in float32 too: {_brief(got)}"
        bad = ~torch.isfinite(got)
        limit = torch.finfo(call.dtype).max
        rounded_away = torch.isinf(got) & (want.abs() >= limit) & (torch.sign(got.float()) == torch.sign(want))
        if not bool(rounded_away[bad].all()):
            j = int(torch.nonzero((bad & ~rounded_away).reshape(-1))[0])
            return (
                f"non-finite gradient of input {i}: {float(got.reshape(-1)[j])} where float32 gives "
                f"{float(want.reshape(-1)[j]):.6g}; {_brief(got)}"
            )
    return None


def _forward(
    case: Case,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    """``(loss, tensors handed to the loss, their float64 copies, weight)`` of ``case``: the
    weight in the case's storage dtype (float32 under autocast), the loss under autocast for
    ``autocast_bf16``."""
    _, calls = _leaves(case)
    ref_inputs = [c.detach().to(torch.float64).contiguous() if c.is_floating_point() else c.detach() for c in calls]
    weight = None
    if case.weight != "none":
        shape = _elementwise_shape(case, ref_inputs)
        weight = _weight_tensor(case, shape, torch.float32 if case.dtype == "autocast_bf16" else _STORAGE[case.dtype])
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if case.dtype == "autocast_bf16" else contextlib.nullcontext()
    with ctx:
        out = _call(case.loss, calls, case, weight, case.reduction)
    return out, calls, ref_inputs, weight


def evaluate(case: Case) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The loss of ``case`` and the gradients of the differentiated inputs (no checks)."""
    out, calls, _, _ = _forward(case)
    diff = [c for c in calls if c.requires_grad]
    if not diff or not out.requires_grad:
        return out, [None] * len(diff)
    return out, list(torch.autograd.grad(out.sum(), diff, allow_unused=True))


def check_case(case: Case) -> Outcome:
    """Run ``case`` and return what went wrong, if anything (never raises for the loss)."""
    outcome = Outcome(case)
    tol = TOLERANCES[case.dtype]
    try:
        out, calls, ref_inputs, weight = _forward(case)
        weight_ref = weight.double() if weight is not None else None
    except Exception as exc:
        outcome.failure, outcome.detail = "error", f"{type(exc).__name__}: {exc}"
        return outcome
    if not bool(torch.isfinite(out).all()):
        outcome.failure, outcome.detail = "value", f"non-finite loss: {_brief(out)}"
        return outcome
    try:
        # the gradient of each tensor handed to the loss (for a broadcast input, before
        # autograd sums it onto the stride-0 leaf)
        diff = [c for c in calls if c.requires_grad]
        if diff and out.requires_grad:
            grads = torch.autograd.grad(out.sum(), diff, allow_unused=True)
            if not all(gr is None or bool(torch.isfinite(gr).all()) for gr in grads):
                problem = _overflowed_gradients(case, calls, weight, grads)
                if problem is not None:
                    outcome.failure, outcome.detail = "gradient", problem
                    return outcome
                outcome.note = "gradient_overflow"
        with torch.no_grad():
            ref = _call(case.loss, ref_inputs, case, weight_ref, case.reduction)
    except Exception as exc:
        outcome.failure, outcome.detail = "error", f"{type(exc).__name__}: {exc}"
        return outcome
    if not bool(torch.isfinite(ref).all()):
        outcome.failure, outcome.detail = "value", f"non-finite float64 reference: {_brief(ref)}"
        return outcome
    if out.shape != ref.shape:
        outcome.failure, outcome.detail = "mismatch", f"shape {tuple(out.shape)} vs float64 {tuple(ref.shape)}"
        return outcome
    if case.loss in DISCONTINUOUS and case.dtype != "float64":
        outcome.note = outcome.note or "not_compared"
        return outcome
    got = out.detach().double()
    err = (got - ref).abs()
    plain = tol.atol + tol.rtol * ref.abs()
    outcome.max_error = float(err.max()) if err.numel() else 0.0
    outcome.ratio = float((err / plain).max()) if err.numel() else 0.0
    if outcome.ratio <= 1.0:
        return outcome
    # the plain tolerance failed: allow the error that the conditioning of the input explains
    try:
        explained = _explained_error(case, ref_inputs, weight_ref, needed=err - plain)
    except Exception as exc:
        outcome.failure, outcome.detail = "error", f"{type(exc).__name__} in the float64 sensitivity: {exc}"
        return outcome
    allowed = plain + explained
    ratio = err / allowed
    outcome.ratio = float(ratio.max())
    outcome.note = outcome.note or "conditioned"
    if outcome.ratio > 1.0:
        worst = int(ratio.reshape(-1).argmax())
        outcome.failure = "mismatch"
        outcome.detail = (
            f"|loss - float64| = {float(err.reshape(-1)[worst]):.3g} > {float(allowed.reshape(-1)[worst]):.3g} "
            f"allowed (element {worst}); got {_brief(got)}, "
            f"float64 {_brief(ref)}"
        )
    return outcome


def _brief(t: torch.Tensor, limit: int = 6) -> str:
    flat = t.detach().reshape(-1)
    shown = ", ".join(f"{float(v):.6g}" for v in flat[:limit])
    return f"[{shown}{', ...' if flat.numel() > limit else ''}] {str(t.dtype).replace('torch.', '')}"

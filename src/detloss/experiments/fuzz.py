r"""Adversarial inputs for every registered loss, and the runner that checks them.

Shared by ``tests/robustness`` and ``detloss fuzz``. A *case* is one call of a loss: a
batch of inputs built by a seeded generator from one *family* (identical boxes, disjoint
far apart, touching, nested, zero-width, zero-height, points, inverted, coordinates from
1e-6 to 1e6, a mixed batch, logits up to 1e4, targets at exactly 0 and 1, ...), one
*dtype mode* (``float64``, ``float32``, ``float16``, ``bfloat16``, or ``autocast_bf16``:
bfloat16 predictions and float32 targets under ``torch.autocast("cpu", dtype=torch.bfloat16)``),
one *layout* (contiguous, non-contiguous, or one input broadcast with stride 0), one
reduction, and optionally a ``weight`` (random, partly zero or all zero) and an
``avg_factor``. Batches of 0 rows are part of the mix. Case ``i`` of seed ``s`` is always
the same case, so a failure can be replayed with :func:`make_case`.

Each case is checked three ways (:func:`check_case`):

1. **value**: the loss is finite;
2. **gradient**: the gradient of every tensor handed to the loss is finite. For half inputs
   the loss computes in float32 and autograd casts the gradient back to float16: a float32
   gradient beyond 65504 becomes ``inf`` there, as it would for any float16 tensor (what a
   gradient scaler watches for). Such a case is counted (``gradient_overflow``), not failed;
   a gradient that is not finite in float32 already is a failure;
3. **agreement** with a float64 evaluation *on the same rounded inputs* (so that a half
   precision case measures the computation, not the rounding of its inputs), per element
   of the output:

   .. math::
       |\ell - \ell_{64}| \le \text{atol} + \text{rtol}\,|\ell_{64}| + E

   ``E`` is the error that the conditioning of the input explains, computed in float64
   only when the first two terms do not suffice (then the case is counted ``conditioned``):
   the larger of ``k u kappa``, :math:`\kappa = \sum_i |\partial \ell / \partial x_i|\, s_i`,
   and ``SAMPLING_MARGIN`` times the largest change of the loss when every input moves by
   up to ``k u s_i`` (random moves, rigid moves of the predicted boxes, and the boxes'
   corners rounded to float32, which is what ``x + w`` or ``cx - w / 2`` does). ``u`` is
   the unit roundoff of the arithmetic (``2^-24``: float32, also for half inputs;
   ``2^-53``: float64) and ``s_i`` the scale at which input ``i`` is rounded: the largest
   magnitude among the numbers it is added to (a box's four numbers and its target's; a
   row of softmax logits; a prediction and its regression target), else its own.
   No algorithm in precision ``u`` does better in general: unit boxes at ``x = 1e6`` have
   ``s = 1e6``, and float32 (spacing 0.0625 there) agrees with float64 to about 1e-2,
   while the same boxes at the origin agree to 1e-5. Losses that are discontinuous by
   design (:data:`DISCONTINUOUS`) are compared in float64 only.

The tolerances are :data:`TOLERANCES`; ``results.json`` of ``detloss fuzz`` records them.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

__all__ = [
    "BOX_FAMILIES",
    "DTYPE_MODES",
    "LAYOUTS",
    "TOLERANCES",
    "Case",
    "Outcome",
    "Summary",
    "Tolerance",
    "case_plan",
    "check_case",
    "evaluate",
    "families_for",
    "make_case",
    "run_fuzz",
]

#: How the inputs reach the loss: ``autocast_bf16`` is bfloat16 predictions and float32
#: targets inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what a network under
#: autocast hands to its loss).
DTYPE_MODES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16", "autocast_bf16")
LAYOUTS: tuple[str, ...] = ("contiguous", "noncontiguous", "broadcast")
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")
_STORAGE = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "autocast_bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class Tolerance:
    """``|l - l64| <= atol + rtol |l64| + k u kappa`` (see the module docstring)."""

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
#: Largest |logit| generated.
LOGIT_LIMIT = 1e4
#: Losses that are discontinuous functions of their inputs by design: their value is not
#: compared with float64 except in float64 itself (finiteness is checked everywhere).
DISCONTINUOUS: dict[str, str] = {
    "ghm_c": "weights from bins of |sigmoid(x) - t|: an element within rounding of a bin edge (sigmoid(17) is "
    "1 in float32) falls on either side, and the weights of its whole batch change",
}
#: Largest |coordinate| and |regression value| generated.
COORD_LIMIT = 1e6

BOX_FAMILIES: tuple[str, ...] = (
    "random",
    "identical",
    "disjoint_far",
    "touching",
    "nested",
    "zero_width",
    "zero_height",
    "point",
    "inverted",
    "scales",
    "large_offset",
    "same_centre",
    "fp16_overflow",
    "mixed",
)
LOGIT_FAMILIES: tuple[str, ...] = ("normal", "extreme", "saturation", "log_scale", "zeros", "equal", "mixed")
VALUE_FAMILIES: tuple[str, ...] = ("normal", "identical", "near", "boundary", "huge", "tiny", "mixed")
BINARY_TARGETS: tuple[str, ...] = ("hard", "soft", "edge", "agree", "oppose", "mixed")
LABEL_FAMILIES: tuple[str, ...] = ("random", "argmax", "argmin")
DISTRIBUTION_TARGETS: tuple[str, ...] = ("uniform", "integers", "ends", "near_ends", "mixed")
BATCH_SIZES: tuple[int, ...] = (0, 1, 2, 3, 5, 8, 13, 16)


@dataclass
class Case:
    """One call of one loss. ``inputs`` are float64 (labels: int64) masters, contiguous."""

    loss: str
    dtype: str
    family: str
    layout: str
    reduction: str
    inputs: tuple[torch.Tensor, ...]
    grad: tuple[bool, ...]
    options: dict[str, Any] = field(default_factory=dict)
    weight: str = "none"  # "none", "random", "some_zeros", "zeros"
    avg_factor: float | None = None
    broadcast_input: int = -1
    seed: int = 0
    index: int = -1

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        n = self.inputs[0].shape[0] if self.inputs and self.inputs[0].dim() else 0
        extra = f", avg_factor={self.avg_factor}" if self.avg_factor is not None else ""
        return (
            f"{self.loss} [{self.dtype}] family={self.family} layout={self.layout} n={n} "
            f"reduction={self.reduction} weight={self.weight}{extra}" + (f" ({opts})" if opts else "")
        )


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


# ------------------------------------------------------------------ registry access


def _spec(key: str) -> Any:
    from detloss.registry import get_spec

    return get_spec(key)


def _call_options(key: str) -> dict[str, Any]:
    return dict(getattr(_spec(key), "call_options", None) or ())


@cache
def _option_choices(key: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """Keyword options worth varying and their values: booleans, and string choices read
    from the loss's own error message for an unknown value."""
    from detloss.errors import DetLossError
    from detloss.testing import sample_inputs

    spec = _spec(key)
    fixed = _call_options(key)
    out: list[tuple[str, tuple[Any, ...]]] = []
    for p in inspect.signature(spec.function).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.name in ("reduction", "weight", "avg_factor", "box_format"):
            continue
        if p.name in fixed:
            continue
        if isinstance(p.default, bool):
            out.append((p.name, (False, True)))
        elif isinstance(p.default, str):
            try:
                spec.function(*sample_inputs(key, 2, requires_grad=False), **fixed, **{p.name: "\x00no-such-choice"})
            except DetLossError as exc:
                choices = tuple(re.findall(r"'([^']*)'", str(exc).split("expected", 1)[-1]))
                if p.default in choices:
                    out.append((p.name, tuple(c for c in choices if "no-such-choice" not in c)))
            except Exception:
                pass
    return tuple(out)


@cache
def _takes_box_format(key: str) -> bool:
    return "box_format" in inspect.signature(_spec(key).function).parameters


@cache
def _grad_pattern(key: str) -> tuple[bool, ...]:
    from detloss.testing import sample_inputs

    return tuple(bool(t.requires_grad) for t in sample_inputs(key, 1))


# ------------------------------------------------------------------ generators


def _u(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def _pick(g: torch.Generator, items: Sequence[Any]) -> Any:
    return items[int(torch.randint(0, len(items), (1,), generator=g))]


def _log_uniform(g: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return torch.exp(math.log(low) + _u(g, *shape) * (math.log(high) - math.log(low)))


def _signs(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.where(_u(g, *shape) < 0.5, -1.0, 1.0).double()


def _boxes_at(centre: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def _box_rows(g: torch.Generator, family: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` xyxy rows of one family, coordinates within ``COORD_LIMIT``."""
    if family == "mixed":
        parts = [_box_rows(g, _pick(g, BOX_FAMILIES[:-1]), 1) for _ in range(n)]
        if not parts:
            return torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.float64)
        return torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts])
    # a unit-scale layout first, then a common scale and offset (except where the family
    # is itself about scale)
    size = _log_uniform(g, 0.2, 5.0, n, 2)
    centre = (_u(g, n, 2) - 0.5) * 20
    target = _boxes_at(centre, size)
    if family == "random":
        pred = _boxes_at(centre + (_u(g, n, 2) - 0.5) * size, size * _log_uniform(g, 0.5, 2.0, n, 2))
    elif family == "identical":
        pred = target.clone()
    elif family == "disjoint_far":
        away = _signs(g, n, 2) * _log_uniform(g, 10.0, 1e5, n, 2)
        pred = _boxes_at(centre + away, _log_uniform(g, 0.2, 5.0, n, 2))
    elif family == "touching":
        psize = _log_uniform(g, 0.2, 5.0, n, 2)
        # share the right edge of the target (x) and, for half the rows, a corner (y too)
        pcx = target[:, 2] + psize[:, 0] / 2
        corner = _u(g, n) < 0.5
        pcy = torch.where(corner, target[:, 3] + psize[:, 1] / 2, centre[:, 1])
        pred = _boxes_at(torch.stack((pcx, pcy), dim=-1), psize)
        pred[:, 0] = target[:, 2]  # exactly the same coordinate, not a rounded copy
        pred[corner, 1] = target[corner, 3]
    elif family == "nested":
        frac = _u(g, n, 4) * 0.45
        inner = torch.stack(
            (
                target[:, 0] + frac[:, 0] * size[:, 0],
                target[:, 1] + frac[:, 1] * size[:, 1],
                target[:, 2] - frac[:, 2] * size[:, 0],
                target[:, 3] - frac[:, 3] * size[:, 1],
            ),
            dim=-1,
        )
        swap = _u(g, n, 1) < 0.5
        pred = torch.where(swap, target, inner)
        target = torch.where(swap, inner, target)
    elif family in ("zero_width", "zero_height", "point"):
        pred = _boxes_at(centre + (_u(g, n, 2) - 0.5) * size, size * _log_uniform(g, 0.5, 2.0, n, 2))
        cols = {"zero_width": (0,), "zero_height": (1,), "point": (0, 1)}[family]
        which = _u(g, n)
        for c in cols:
            # pred degenerate, target degenerate, or both (identical degenerate boxes too)
            pred[:, c + 2] = torch.where(which < 2 / 3, pred[:, c], pred[:, c + 2])
            target[:, c + 2] = torch.where(which > 1 / 3, target[:, c], target[:, c + 2])
        same = _u(g, n) < 0.2
        pred[same] = target[same]
    elif family == "inverted":
        pred = _boxes_at(centre + (_u(g, n, 2) - 0.5) * size, size * _log_uniform(g, 0.5, 2.0, n, 2))
        for boxes in (pred, target):
            flip = _u(g, n, 2) < 0.5
            for c in (0, 1):
                lo, hi = boxes[:, c].clone(), boxes[:, c + 2].clone()
                boxes[:, c] = torch.where(flip[:, c], hi, lo)
                boxes[:, c + 2] = torch.where(flip[:, c], lo, hi)
    elif family == "scales":
        # positions and sizes anywhere from 1e-6 to 1e6, pred near or far
        csize = _log_uniform(g, 1e-6, 1e6, n, 2)
        tcentre = _signs(g, n, 2) * _log_uniform(g, 1e-6, 1e6, n, 2)
        target = _boxes_at(tcentre, csize)
        near = _u(g, n, 1) < 0.5
        pcentre = torch.where(
            near, tcentre + (_u(g, n, 2) - 0.5) * csize, _signs(g, n, 2) * _log_uniform(g, 1e-6, 1e6, n, 2)
        )
        pred = _boxes_at(
            pcentre, torch.where(near, csize * _log_uniform(g, 0.5, 2.0, n, 2), _log_uniform(g, 1e-6, 1e6, n, 2))
        )
        return pred.clamp(-COORD_LIMIT, COORD_LIMIT), target.clamp(-COORD_LIMIT, COORD_LIMIT)
    elif family == "large_offset":
        # small overlapping boxes far from the origin: the float32 precision stress
        bsize = _log_uniform(g, 1e-3, 1e3, n, 2)
        tcentre = _signs(g, n, 2) * _log_uniform(g, 1e4, COORD_LIMIT / 2, n, 2)
        target = _boxes_at(tcentre, bsize)
        pred = _boxes_at(tcentre + (_u(g, n, 2) - 0.5) * bsize, bsize * _log_uniform(g, 0.5, 2.0, n, 2))
        return pred, target
    elif family == "same_centre":
        # same centre, different aspect ratios (CIoU's v, SIoU's shape cost)
        pred = _boxes_at(centre, size.flip(-1) * _log_uniform(g, 0.5, 2.0, n, 1))
    elif family == "fp16_overflow":
        # 200-600 pixel boxes: their areas (4e4 to 3.6e5) overflow float16 (max 65504)
        bsize = 200 + _u(g, n, 2) * 400
        tcentre = 300 + _u(g, n, 2) * 400
        target = _boxes_at(tcentre, bsize)
        pred = _boxes_at(tcentre + (_u(g, n, 2) - 0.5) * 200, bsize * _log_uniform(g, 0.7, 1.4, n, 2))
        return pred, target
    else:
        raise ValueError(f"unknown box family {family!r}")
    # a common scale and offset, keeping every coordinate within COORD_LIMIT
    extent = float(torch.cat((pred, target)).abs().max()) if n else 1.0
    scale = min(float(_log_uniform(g, 1e-3, 1e3, 1)), COORD_LIMIT / (2 * max(extent, 1.0)))
    offset = (_u(g, 1, 2) - 0.5) * min(scale * 200, COORD_LIMIT)
    shift = torch.cat((offset, offset), dim=-1)
    return pred * scale + shift, target * scale + shift


def _logit_values(g: torch.Generator, family: str, shape: tuple[int, ...], limit: float) -> torch.Tensor:
    if family == "mixed":
        parts = [_logit_values(g, _pick(g, LOGIT_FAMILIES[:-1]), shape, limit) for _ in range(3)]
        choice = torch.randint(0, 3, shape, generator=g)
        return torch.stack(parts, dim=-1).gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    if family == "normal":
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    elif family == "extreme":
        x = _signs(g, *shape) * limit
    elif family == "saturation":
        levels = torch.tensor([0.0, 1e-6, 15.0, 17.0, 20.0, 30.0, 50.0, 88.0, 89.0, 100.0, 104.0, 700.0, 1e3, 1e4])
        x = _signs(g, *shape) * levels[torch.randint(0, len(levels), shape, generator=g)].double()
    elif family == "log_scale":
        x = _signs(g, *shape) * _log_uniform(g, 1e-6, limit, *shape)
    elif family == "zeros":
        x = torch.zeros(shape, dtype=torch.float64)
    elif family == "equal":
        row = _signs(g, *shape[:1]) * _log_uniform(g, 1e-6, limit, *shape[:1])
        x = row.reshape(shape[:1] + (1,) * (len(shape) - 1)).expand(shape).clone()
    else:
        raise ValueError(f"unknown logit family {family!r}")
    return x.clamp(-limit, limit)


def _value_rows(g: torch.Generator, family: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    if family == "mixed":
        parts = [_value_rows(g, _pick(g, VALUE_FAMILIES[:-1]), shape) for _ in range(3)]
        choice = torch.randint(0, 3, shape, generator=g).unsqueeze(-1)
        return (
            torch.stack([p for p, _ in parts], dim=-1).gather(-1, choice).squeeze(-1),
            torch.stack([t for _, t in parts], dim=-1).gather(-1, choice).squeeze(-1),
        )
    target = torch.randn(shape, generator=g, dtype=torch.float64) * float(_log_uniform(g, 1e-3, 1e3, 1))
    if family == "normal":
        scale = float(_log_uniform(g, 1e-6, COORD_LIMIT, 1))
        target = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        pred = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    elif family == "identical":
        pred = target.clone()
    elif family == "near":
        pred = target * (1 + (_u(g, *shape) - 0.5) * 1e-6)
    elif family == "boundary":
        # differences on the kinks of smooth L1, Huber and balanced L1 (beta, delta = 1 and
        # other common settings) and around them
        d = torch.tensor([0.0, 1.0, 0.5, 1 / 9, 0.11, 2.0, 1e-6, 1 - 1e-7, 1 + 1e-7])
        pred = target + _signs(g, *shape) * d[torch.randint(0, len(d), shape, generator=g)].double()
    elif family == "huge":
        target = _signs(g, *shape) * _log_uniform(g, 1e3, COORD_LIMIT, *shape)
        pred = _signs(g, *shape) * _log_uniform(g, 1e3, COORD_LIMIT, *shape)
    elif family == "tiny":
        target = _signs(g, *shape) * _log_uniform(g, 1e-6, 1e-3, *shape)
        pred = _signs(g, *shape) * _log_uniform(g, 1e-6, 1e-3, *shape)
    else:
        raise ValueError(f"unknown value family {family!r}")
    return pred.clamp(-COORD_LIMIT, COORD_LIMIT), target.clamp(-COORD_LIMIT, COORD_LIMIT)


def _binary_targets(g: torch.Generator, family: str, logits: torch.Tensor) -> torch.Tensor:
    shape = tuple(logits.shape)
    if family == "mixed":
        parts = [_binary_targets(g, f, logits) for f in BINARY_TARGETS[:-1]]
        choice = torch.randint(0, len(parts), shape, generator=g).unsqueeze(-1)
        return torch.stack(parts, dim=-1).gather(-1, choice).squeeze(-1)
    if family == "hard":
        return (_u(g, *shape) < 0.3).double()
    if family == "soft":
        return _u(g, *shape)
    if family == "edge":
        levels = torch.tensor([0.0, 1.0, 1e-6, 1 - 1e-6, 0.5])
        return levels[torch.randint(0, len(levels), shape, generator=g)].double()
    if family == "agree":
        return (logits > 0).double()
    if family == "oppose":
        return (logits <= 0).double()
    raise ValueError(f"unknown target family {family!r}")


def _distribution_targets(g: torch.Generator, family: str, shape: tuple[int, ...], reg_max: int) -> torch.Tensor:
    if family == "mixed":
        parts = [_distribution_targets(g, f, shape, reg_max) for f in DISTRIBUTION_TARGETS[:-1]]
        choice = torch.randint(0, len(parts), shape, generator=g).unsqueeze(-1)
        return torch.stack(parts, dim=-1).gather(-1, choice).squeeze(-1)
    if family == "uniform":
        return _u(g, *shape) * reg_max
    if family == "integers":
        return torch.randint(0, reg_max + 1, shape, generator=g).double()
    if family == "ends":
        return torch.where(_u(g, *shape) < 0.5, 0.0, float(reg_max)).double()
    if family == "near_ends":
        levels = torch.tensor([1e-6, reg_max - 1e-6, 1 - 1e-6, 1 + 1e-6, reg_max / 2 + 1e-6])
        return levels[torch.randint(0, len(levels), shape, generator=g)].double()
    raise ValueError(f"unknown distribution target family {family!r}")


def families_for(key: str) -> tuple[str, ...]:
    """The families the generator knows for the input kind of loss ``key``."""
    kind = _spec(key).inputs
    if kind in ("boxes", "iou_aware"):
        return BOX_FAMILIES
    if kind == "values":
        return VALUE_FAMILIES
    if kind in ("binary_logits", "class_logits", "distribution", "distill", "signed_scores"):
        return LOGIT_FAMILIES
    return ("sample",)


def _inputs_for(key: str, family: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Master inputs (float64; labels int64) of loss ``key``, in sample_inputs' order."""
    from detloss.testing import NUM_CLASSES, REG_MAX, sample_inputs

    kind = _spec(key).inputs
    limit = LOGIT_LIMIT
    if kind == "boxes":
        return _box_rows(g, family, n)
    if kind == "values":
        return _value_rows(g, family, (n, 4))
    if kind == "binary_logits":
        logits = _logit_values(g, family, (n, NUM_CLASSES), limit)
        return logits, _binary_targets(g, _pick(g, BINARY_TARGETS), logits)
    if kind == "class_logits":
        logits = _logit_values(g, family, (n, NUM_CLASSES), limit)
        how = _pick(g, LABEL_FAMILIES)
        if how == "argmax" and n:
            labels = logits.argmax(-1)
        elif how == "argmin" and n:
            labels = logits.argmin(-1)
        else:
            labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        return logits, labels
    if kind == "distribution":
        logits = _logit_values(g, family, (n, 4, REG_MAX + 1), limit)
        return logits, _distribution_targets(g, _pick(g, DISTRIBUTION_TARGETS), (n, 4), REG_MAX)
    if kind == "distill":
        student = _logit_values(g, family, (n, NUM_CLASSES), limit)
        teacher_family = _pick(g, (*LOGIT_FAMILIES, "identical"))
        teacher = (
            student.clone()
            if teacher_family == "identical"
            else _logit_values(g, teacher_family, (n, NUM_CLASSES), limit)
        )
        return student, teacher
    if kind == "iou_aware":
        pred, target = _box_rows(g, family, n)
        return _logit_values(g, _pick(g, LOGIT_FAMILIES), (n,), limit), pred, target
    if kind == "signed_scores":
        scores = _logit_values(g, family, (n,), limit)
        how = _pick(g, ("random", "agree", "oppose"))
        if how == "agree":
            labels = torch.where(scores > 0, 1.0, -1.0).double()
        elif how == "oppose":
            labels = torch.where(scores > 0, -1.0, 1.0).double()
        else:
            labels = _signs(g, n)
        return scores, labels
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    return tuple(t.detach() for t in sample_inputs(key, n, dtype=torch.float64, seed=seed, requires_grad=False))


def _to_format(boxes: torch.Tensor, box_format: str) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    if box_format == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    if box_format == "cxcywh":
        return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)
    return boxes


def make_case(
    key: str,
    dtype: str,
    seed: int = 0,
    index: int = 0,
    *,
    family: str | None = None,
    layout: str | None = None,
    reduction: str | None = None,
    n: int | None = None,
) -> Case:
    """Case ``index`` of ``seed`` for loss ``key`` in dtype mode ``dtype`` (deterministic).

    Anything given (``family``, ``layout``, ``reduction``, ``n``) overrides the draw.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))
    family = family or _pick(g, families_for(key))
    n = _pick(g, BATCH_SIZES) if n is None else n
    inputs = _inputs_for(key, family, n, g)
    options = _call_options(key)
    for name, values in _option_choices(key):
        options[name] = _pick(g, values)
    if _takes_box_format(key) and "box_format" not in _call_options(key):
        fmt = _pick(g, ("xyxy", "xyxy", "xywh", "cxcywh"))
        options["box_format"] = fmt
        kind = _spec(key).inputs
        box_idx = (0, 1) if kind == "boxes" else (1, 2) if kind == "iou_aware" else ()
        inputs = tuple(_to_format(t, fmt) if i in box_idx else t for i, t in enumerate(inputs))
    r = _u(g, 3)
    layout = layout or ("contiguous" if r[0] < 0.5 else "noncontiguous" if r[0] < 0.75 else "broadcast")
    if n == 0 and layout == "broadcast":
        layout = "contiguous"
    reduction = reduction or ("none" if r[1] < 0.45 else "mean" if r[1] < 0.8 else "sum")
    weight = "none" if r[2] < 0.5 else "random" if r[2] < 0.7 else "some_zeros" if r[2] < 0.85 else "zeros"
    avg_factor = None
    if reduction == "mean" and float(_u(g, 1)) < 0.3:
        avg_factor = 0.0 if weight == "zeros" else float(_u(g, 1)) * 2 * max(n, 1) + 0.5
    grad = _grad_pattern(key)
    return Case(
        loss=key,
        dtype=dtype,
        family=family,
        layout=layout,
        reduction=reduction,
        inputs=tuple(inputs),
        grad=grad,
        options=options,
        weight=weight,
        avg_factor=avg_factor,
        broadcast_input=int(torch.randint(0, len(inputs), (1,), generator=g)),
        seed=seed,
        index=index,
    )


# ------------------------------------------------------------------ the runner


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


def _perturbation_scales(key: str, xs: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """How far rounding in the arithmetic can move each input, in units of ``u``.

    Numbers that the loss adds to or subtracts from each other share the scale of the
    largest of them (a box's corners and its target's corners, a row of softmax logits, a
    prediction and its regression target): ``x1 = cx - w / 2`` at ``cx = 1e6`` moves ``x1`` by
    ``u * 1e6`` however small ``w`` is. Numbers used only multiplicatively (sigmoid logits,
    targets in [0, 1], scores) have their own magnitude as scale. Integers are not moved.
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

    if kind == "boxes" and len(xs) >= 2:
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
    scales = _perturbation_scales(case.loss, xs)
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
    i = 0 if kind == "boxes" else 1 if kind == "iou_aware" else -1
    if i < 0 or scales[i] is None or xs[i].dim() < 2:
        return []
    fmt = case.options.get("box_format", "xyxy")
    out = []
    for trial in range(2):
        r = 2 * torch.rand((*xs[i].shape[:-1], 2), generator=g, dtype=torch.float64) - 1
        shift = (r.sign() if trial % 2 else r) * radius * scales[i][..., :2]  # type: ignore[index]
        zero = torch.zeros_like(shift)
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


def evaluate(case: Case) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The loss of ``case`` and the gradients of the differentiated inputs (no checks)."""
    _, calls = _leaves(case)
    weight = None
    if case.weight != "none":
        ref = [c.detach().double() if c.is_floating_point() else c for c in calls]
        shape = _elementwise_shape(case, ref)
        weight = _weight_tensor(case, shape, torch.float32 if case.dtype == "autocast_bf16" else _STORAGE[case.dtype])
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if case.dtype == "autocast_bf16" else contextlib.nullcontext()
    with ctx:
        out = _call(case.loss, calls, case, weight, case.reduction)
    diff = [c for c in calls if c.requires_grad]
    if not diff or not out.requires_grad:
        return out, [None] * len(diff)
    return out, list(torch.autograd.grad(out.sum(), diff, allow_unused=True))


def check_case(case: Case) -> Outcome:
    """Run ``case`` and return what went wrong, if anything (never raises for the loss)."""
    outcome = Outcome(case)
    tol = TOLERANCES[case.dtype]
    try:
        _, calls = _leaves(case)
        ref_inputs = [c.detach().to(torch.float64).contiguous() if c.is_floating_point() else c.detach() for c in calls]
        weight_ref = None
        weight = None
        if case.weight != "none":
            shape = _elementwise_shape(case, ref_inputs)
            wdtype = torch.float32 if case.dtype == "autocast_bf16" else _STORAGE[case.dtype]
            weight = _weight_tensor(case, shape, wdtype)
            weight_ref = weight.double() if weight is not None else None
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if case.dtype == "autocast_bf16" else contextlib.nullcontext()
        with ctx:
            out = _call(case.loss, calls, case, weight, case.reduction)
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


# ------------------------------------------------------------------ many cases


def case_plan(keys: Sequence[str], cases: int, start: int = 0) -> Iterator[tuple[int, str, str]]:
    """``(index, loss, dtype mode)`` for cases ``start .. cases - 1``, spread evenly over
    losses and modes (case ``i`` is ``(loss, mode)`` number ``i mod (losses x modes)``)."""
    combos = [(k, d) for k in keys for d in DTYPE_MODES]
    for i in range(start, cases):
        k, d = combos[i % len(combos)]
        yield i, k, d


#: What :class:`Summary` counts per ``(loss, dtype)``: the failures, then the notes.
COUNTS = ("cases", "value", "gradient", "mismatch", "error", "conditioned", "gradient_overflow", "not_compared")


@dataclass
class Summary:
    """Counts per ``(loss, dtype)`` and the failures (up to ``keep`` kept in full)."""

    rows: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    failures: list[Outcome] = field(default_factory=list)
    total: int = 0
    failed: int = 0
    seconds: float = 0.0
    keep: int = 200

    def _row(self, key: tuple[str, str]) -> dict[str, int]:
        return self.rows.setdefault(key, dict.fromkeys(COUNTS, 0))

    def add(self, outcome: Outcome) -> None:
        c = outcome.case
        row = self._row((c.loss, c.dtype))
        row["cases"] += 1
        if outcome.note is not None:
            row[outcome.note] += 1
        self.total += 1
        if outcome.failure is not None:
            row[outcome.failure] += 1
            self.failed += 1
            if len(self.failures) < self.keep:
                self.failures.append(outcome)

    def merge(self, other: Summary) -> None:
        for key, counts in other.rows.items():
            row = self._row(key)
            for name, value in counts.items():
                row[name] += value
        self.total += other.total
        self.failed += other.failed
        self.failures.extend(other.failures[: max(self.keep - len(self.failures), 0)])


def _run_range(keys: Sequence[str], seed: int, start: int, stop: int) -> Summary:
    summary = Summary()
    for i, key, mode in case_plan(keys, stop, start):
        try:
            case = make_case(key, mode, seed, i)
        except Exception as exc:  # a generator bug is a failure to report, not a crash
            dummy = Case(key, mode, "?", "?", "?", (), (), index=i, seed=seed)
            summary.add(Outcome(dummy, "error", f"case generation: {type(exc).__name__}: {exc}"))
            continue
        summary.add(check_case(case))
    return summary


def _backend_setting() -> str | None:
    from detloss import _backend

    return _backend._chosen


def _run_range_star(args: tuple[Sequence[str], int, int, int, str | None]) -> Summary:
    import detloss

    torch.set_num_threads(1)
    if args[4] is not None:
        detloss.set_backend(args[4])
    return _run_range(*args[:4])


def run_fuzz(
    keys: Sequence[str],
    cases: int,
    seed: int = 0,
    *,
    jobs: int = 1,
    backend: str | None = None,
    progress: Callable[[int], None] | None = None,
    chunk: int = 500,
) -> Summary:
    """Run cases ``0 .. cases - 1`` over ``keys`` (all five dtype modes), in ``jobs``
    processes, with the losses' ``backend`` (None: the library's default, the fastest)."""
    import detloss

    summary = Summary()
    started = time.perf_counter()
    ranges = [(keys, seed, lo, min(lo + chunk, cases), backend) for lo in range(0, cases, chunk)]
    if jobs <= 1:
        previous = _backend_setting()
        detloss.set_backend(backend if backend is not None else previous)
        try:
            for r in ranges:
                summary.merge(_run_range(*r[:4]))
                if progress is not None:
                    progress(r[3] - r[2])
        finally:
            detloss.set_backend(previous)
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for part in pool.imap(_run_range_star, ranges):
                summary.merge(part)
                if progress is not None:
                    progress(part.total)
    summary.seconds = time.perf_counter() - started
    return summary


# ------------------------------------------------------------------ detloss fuzz


def parse_losses(values: Sequence[str] | None) -> list[str]:
    """``--losses`` (repeatable, comma-separated; empty or ``all`` = every registered loss)."""
    from detloss.errors import DetLossError
    from detloss.registry import available_losses

    known = available_losses()
    names = [n.strip() for v in (values or ()) for n in v.split(",") if n.strip()]
    if not names or names == ["all"]:
        return known
    for name in names:
        if name not in known:
            raise DetLossError.bad_argument(
                "detloss fuzz", "--losses", "registry keys: " + ", ".join(known), repr(name)
            )
    return list(dict.fromkeys(names))


def _failure_record(outcome: Outcome) -> dict[str, Any]:
    c = outcome.case
    n = int(c.inputs[0].shape[0]) if c.inputs and c.inputs[0].dim() else 0
    return {
        "loss": c.loss,
        "dtype": c.dtype,
        "failure": outcome.failure,
        "detail": outcome.detail,
        "family": c.family,
        "layout": c.layout,
        "n": n,
        "reduction": c.reduction,
        "weight": c.weight,
        "avg_factor": c.avg_factor,
        "options": {k: v if isinstance(v, (bool, int, float, str)) else repr(v) for k, v in c.options.items()},
        "seed": c.seed,
        "index": c.index,
        "replay": f"detloss.experiments.fuzz.check_case(make_case({c.loss!r}, {c.dtype!r}, {c.seed}, {c.index}))",
        "inputs": [t.tolist() for t in c.inputs] if sum(t.numel() for t in c.inputs) <= 400 else "(large)",
    }


def _default_backend() -> str:
    import detloss

    return f"default ({detloss.get_backend()} on this machine)"


def fuzz_report(
    keys: Sequence[str],
    cases: int,
    seed: int,
    out: Any = None,
    *,
    jobs: int = 1,
    backend: str | None = None,
    show_progress: bool = True,
) -> tuple[Summary, Any]:
    """Run :func:`run_fuzz`, print the table, write ``runs/fuzz-<stamp>/``; ``(summary, folder)``."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from detloss._checks import check_choice
    from detloss.errors import DetLossError
    from detloss.experiments.runs import atomic_write_text, new_run_dir, run_header, write_csv, write_json

    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise DetLossError.bad_argument("detloss fuzz", "--cases", "an integer >= 1", repr(cases))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise DetLossError.bad_argument("detloss fuzz", "--jobs", "an integer >= 1", repr(jobs))
    from detloss._backend import BACKENDS

    if backend is not None:
        check_choice("detloss fuzz", "--backend", backend, BACKENDS)
    started = time.perf_counter()
    folder = new_run_dir("fuzz", Path(out) if out is not None else None)
    console = Console(width=200)
    if show_progress and cases >= 2000:
        columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("fuzz", total=cases)
            summary = run_fuzz(keys, cases, seed, jobs=jobs, backend=backend, progress=lambda k: bar.advance(task, k))
    else:
        summary = run_fuzz(keys, cases, seed, jobs=jobs, backend=backend)
    headers = {
        "cases": "cases",
        "value": "non-finite value",
        "gradient": "non-finite grad",
        "mismatch": "mismatch vs float64",
        "error": "error",
        "conditioned": "needed κ",
        "gradient_overflow": "grad > half max",
    }
    table = Table(title=f"detloss fuzz: {summary.total} cases, seed {seed}")
    for col in ("loss", "dtype", *headers.values(), "tolerance"):
        table.add_column(col, justify="left" if col in ("loss", "dtype", "tolerance") else "right")
    rows: list[dict[str, Any]] = []
    for (key, mode), counts in sorted(summary.rows.items(), key=lambda kv: (kv[0][0], DTYPE_MODES.index(kv[0][1]))):
        tol = TOLERANCES[mode]
        compared = key not in DISCONTINUOUS or mode == "float64"
        short = f"{tol.atol:g} + {tol.rtol:g}|ref| + {tol.k:g}u·κ" if compared else "not compared (discontinuous)"
        rows.append({"loss": key, "dtype": mode, **{k: counts[k] for k in headers}, "tolerance": short})
        table.add_row(key, mode, *(str(counts[k]) for k in headers), short)
    console.print(table)
    for outcome in summary.failures[:20]:
        console.print(f"FAILED {outcome.case.describe()} [{outcome.failure}] {outcome.detail}", markup=False)
    totals = {k: sum(r[k] for r in rows) for k in headers}
    verdict = (
        f"{summary.total} cases, {summary.failed} failures (non-finite value {totals['value']}, non-finite gradient "
        f"{totals['gradient']}, mismatch {totals['mismatch']}, error {totals['error']}) in {summary.seconds:.0f} s"
    )
    console.print(verdict, markup=False)
    console.print(
        "tolerance: "
        + "; ".join(f"{m}: {TOLERANCES[m].describe()}" for m in ("float64", "float32"))
        + "; float16, bfloat16, autocast_bf16: as float32 (computed in float32 on the rounded inputs)",
        markup=False,
    )
    payload = {
        **run_header(
            "fuzz", {"cases": cases, "losses": list(keys), "seed": seed, "jobs": jobs, "backend": backend}, started
        ),
        "backend": backend or _default_backend(),
        "cases": summary.total,
        "failures": summary.failed,
        "totals": totals,
        "dtype_modes": list(DTYPE_MODES),
        "tolerances": {m: {**TOLERANCES[m].__dict__, "rule": TOLERANCES[m].describe()} for m in DTYPE_MODES},
        "sampling_margin": SAMPLING_MARGIN,
        "discontinuous": DISCONTINUOUS,
        "rows": rows,
        "failed_cases": [_failure_record(o) for o in summary.failures],
    }
    write_json(folder / "results.json", payload)
    write_csv(folder / "results.csv", rows)
    lines = [
        "# detloss fuzz",
        "",
        f"{verdict}. Seed {seed}; case `i` is replayed by `check_case(make_case(loss, dtype, {seed}, i))`.",
        "",
        "Tolerance per dtype mode (`kappa`: the condition number of the input, see `detloss.experiments.fuzz`):",
        "",
        *(f"- `{m}`: {TOLERANCES[m].describe()}" for m in DTYPE_MODES),
        "",
        "| loss | dtype | " + " | ".join(headers.values()) + " |",
        "|---|---|" + "---:|" * len(headers),
        *(f"| {r['loss']} | {r['dtype']} | " + " | ".join(str(r[k]) for k in headers) + " |" for r in rows),
    ]
    if summary.failures:
        lines += ["", "## Failures (first 50)", ""]
        lines += [f"- {o.case.describe()}: **{o.failure}** {o.detail}" for o in summary.failures[:50]]
    atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")
    console.print(f"results: {folder / 'results.json'}", markup=False)
    return summary, folder

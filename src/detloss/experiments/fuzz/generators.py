"""Seeded generators: one case (a call of one loss) from a seed and an index.

Case ``i`` of seed ``s`` is always the same case; the families, dtype modes, layouts and
batch sizes drawn from are the tuples below (see :mod:`detloss.experiments.fuzz`).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

#: How the inputs reach the loss: ``autocast_bf16`` is bfloat16 predictions and float32
#: targets inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what a network under
#: autocast hands to its loss).
DTYPE_MODES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16", "autocast_bf16")
LAYOUTS: tuple[str, ...] = ("contiguous", "noncontiguous", "broadcast")
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")

#: Largest |logit| generated.
LOGIT_LIMIT = 1e4
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

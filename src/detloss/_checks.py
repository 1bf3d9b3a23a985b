"""Cheap argument checks. None of them reads tensor values, so none forces a device sync."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from detloss.errors import DetLossError

__all__ = [
    "check_boxes",
    "check_broadcasts_to",
    "check_broadcasts_with",
    "check_choice",
    "check_finite_number",
    "check_flag",
    "check_floating",
    "check_integer",
    "check_range",
    "check_rotated_boxes",
    "check_same_device",
    "check_same_shape",
    "upcast",
]


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + (",)" if t.dim() == 1 else ")")


def check_choice(where: str, name: str, value: Any, choices: Iterable[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    options = choices if isinstance(choices, tuple) else tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise DetLossError.bad_argument(where, name, "one of " + ", ".join(map(repr, options)), repr(value))


def check_flag(where: str, name: str, value: Any) -> None:
    """Raise unless ``value`` is a bool (``"no"`` or ``1`` must not silently mean True)."""
    if not isinstance(value, bool):
        raise DetLossError.bad_argument(where, name, "True or False", repr(value))


def check_floating(where: str, name: str, t: Any) -> None:
    """Raise unless ``t`` is a floating-point tensor."""
    if not isinstance(t, torch.Tensor):
        raise DetLossError.bad_argument(where, name, "a torch.Tensor", type(t).__name__)
    if not t.is_floating_point():
        raise DetLossError.bad_argument(where, name, "a floating-point tensor", f"dtype {t.dtype}")


def check_boxes(where: str, name: str, t: Any) -> None:
    """Raise unless ``t`` is a floating tensor of shape ``(..., 4)``."""
    check_floating(where, name, t)
    if t.dim() == 0 or t.shape[-1] != 4:
        raise DetLossError.bad_argument(where, name, "last dimension 4", f"shape {_shape(t)}")


def check_rotated_boxes(where: str, name: str, t: Any, box_format: str) -> None:
    """Raise unless ``t`` is a floating tensor of shape ``(..., 5)`` (``cxcywha``) or
    ``(..., 8)`` (``xyxyxyxy``); ``box_format`` must already be checked."""
    check_floating(where, name, t)
    size = 8 if box_format == "xyxyxyxy" else 5
    if t.dim() == 0 or t.shape[-1] != size:
        raise DetLossError.bad_argument(where, name, f"last dimension {size} ({box_format})", f"shape {_shape(t)}")


def check_same_shape(where: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise DetLossError.bad_argument(where, name_b, f"the shape of `{name_a}` {_shape(a)}", f"shape {_shape(b)}")


def check_same_device(where: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise unless ``a`` and ``b`` live on the same device."""
    if a.device != b.device:
        raise DetLossError.bad_argument(where, name_b, f"device {a.device} (that of `{name_a}`)", b.device)


def _broadcast(a: torch.Size, b: torch.Size) -> torch.Size | None:
    if a == b:  # the common case, without torch.broadcast_shapes' Python (tens of us per call)
        return a
    try:
        return torch.broadcast_shapes(a, b)
    except RuntimeError:
        return None


def check_broadcasts_to(where: str, name: str, t: torch.Tensor, shape: torch.Size) -> None:
    """Raise unless ``t`` broadcasts to ``shape`` itself (a per-element ``weight``, ``pos_weight``)."""
    if _broadcast(shape, t.shape) != shape:
        raise DetLossError.bad_argument(where, name, f"a shape that broadcasts to {tuple(shape)}", f"shape {_shape(t)}")


def check_broadcasts_with(where: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> torch.Size:
    """The broadcast shape of ``a`` and ``b``; raise, naming ``name_b``, if they do not broadcast."""
    shape = _broadcast(a.shape, b.shape)
    if shape is None:
        expected = f"a shape that broadcasts with `{name_a}` {tuple(a.shape)}"
        raise DetLossError.bad_argument(where, name_b, expected, f"shape {_shape(b)}")
    return shape


def check_range(
    where: str,
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise unless ``value`` is a real number within ``[low, high]`` (ends open if asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:  # the message is built only here: checks run on every call
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        span = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise DetLossError.bad_argument(where, name, f"a number in {span}", repr(value))


def check_integer(where: str, name: str, value: Any, low: int) -> None:
    """Raise unless ``value`` is an integer ``>= low`` (a bool is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DetLossError.bad_argument(where, name, f"an integer >= {low}", repr(value))


def check_finite_number(where: str, name: str, value: Any) -> None:
    """Raise unless ``value`` is a finite real number (``loss_weight``: no NaN, no inf, no string)."""
    check_range(where, name, value, -math.inf, math.inf, low_open=True, high_open=True)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half and bfloat16 become float32 (the dtype policy); float32 and float64 stay."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

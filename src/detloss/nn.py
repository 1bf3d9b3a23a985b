"""``torch.nn.Module`` forms of every loss: shells that store settings and make one call.

Each class is generated from its function in :mod:`detloss.functional`, so the module's
options and defaults are the function's own (``inspect.signature`` shows them) and can never
drift apart. ``__init__`` takes the hyper-parameters (keyword-only), ``reduction`` and
``loss_weight``; ``forward(*inputs, weight=None, avg_factor=None)`` calls the function.

Example:
    >>> loss = CIoULoss(reduction="sum", loss_weight=2.0)
    >>> loss
    CIoULoss(alpha_gate=False, grad_mode='exact', box_format='xyxy', eps=1e-07, reduction='sum', loss_weight=2.0)
    >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    >>> loss(pred, torch.tensor([[0.0, 0.0, 4.0, 2.0]]))  # 2 x ciou_loss(...) = 2 x 0.5532
    tensor(1.1065)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from detloss import functional as F
from detloss.errors import DetLossError

__all__ = ["LossModule", "loss_module", "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "EIoULoss"]

#: Arguments given per call, not stored in the module.
CALL_ARGUMENTS = ("weight", "avg_factor")


class LossModule(nn.Module):
    """Base of every detloss module: ``options`` are passed to ``function`` on each call."""

    function: ClassVar[Callable[..., torch.Tensor]]

    def __init__(self, *, loss_weight: float = 1.0, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.loss_weight = loss_weight

    def forward(
        self, *inputs: torch.Tensor, weight: torch.Tensor | None = None, avg_factor: Any = None
    ) -> torch.Tensor:
        loss = type(self).function(*inputs, **self.options, weight=weight, avg_factor=avg_factor)
        return loss if self.loss_weight == 1.0 else loss * self.loss_weight

    def extra_repr(self) -> str:
        items = [*self.options.items(), ("loss_weight", self.loss_weight)]
        return ", ".join(f"{k}={v!r}" for k, v in items)


def function_options(function: Callable[..., Any]) -> list[inspect.Parameter]:
    """The keyword-only hyper-parameters of a loss function (``reduction`` included)."""
    params = inspect.signature(function).parameters.values()
    return [p for p in params if p.kind is p.KEYWORD_ONLY and p.name not in CALL_ARGUMENTS]


def loss_module(function: Callable[..., torch.Tensor], name: str, base: type[LossModule] = LossModule) -> type[LossModule]:
    """Build the module class ``name`` whose options and defaults are those of ``function``."""
    options = function_options(function)
    defaults = {p.name: p.default for p in options}

    def __init__(self: LossModule, *, loss_weight: float = 1.0, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in defaults:
                raise DetLossError.bad_argument(name, key, "one of " + ", ".join(defaults), f"unknown option {key!r}")
        base.__init__(self, loss_weight=loss_weight, **{**defaults, **kwargs})

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    weight_param = inspect.Parameter("loss_weight", inspect.Parameter.KEYWORD_ONLY, default=1.0, annotation=float)
    __init__.__signature__ = inspect.Signature([self_param, *options, weight_param])  # type: ignore[attr-defined]
    summary = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
    doc = f"Module form of :func:`detloss.functional.{function.__name__}`. {summary}"
    namespace = {"function": staticmethod(function), "__init__": __init__, "__doc__": doc, "__module__": __name__}
    return type(name, (base,), namespace)


IoULoss = loss_module(F.iou_loss, "IoULoss")
GIoULoss = loss_module(F.giou_loss, "GIoULoss")
DIoULoss = loss_module(F.diou_loss, "DIoULoss")
CIoULoss = loss_module(F.ciou_loss, "CIoULoss")
EIoULoss = loss_module(F.eiou_loss, "EIoULoss")

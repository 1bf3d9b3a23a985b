"""detloss's losses in the OpenMMLab registries, with mmdetection's forward convention.

Importing this module (``custom_imports=dict(imports=["detloss.integrations.mmdet"])`` in a
config) registers a shell of every entry of :data:`detloss.LOSSES` as
``type="detloss.<ModuleName>"`` (``detloss.WIoULoss``, ``detloss.SIoULoss``, ``detloss.VarifocalLoss``,
...). mmdetection has losses of the same names with other definitions (its ``EIoULoss`` is
another loss, its ``SIoULoss`` rewards distance by default): the ``detloss.`` scope keeps them
apart. The shells live in a child registry of scope ``detloss`` under mmengine's root ``MODELS``,
which mmdetection's ``MODELS`` (and that of every OpenMMLab package) asks for a scope it does
not hold, so ``loss_bbox=dict(type="detloss.WIoULoss", loss_weight=2.0)`` builds from any of
them. Without mmengine the shells are plain modules and nothing is registered.

Each shell follows mmdetection's loss convention:

- ``__init__(*, reduction="mean", loss_weight=1.0, **options)``: the options of the detloss
  function (``detloss.functional.<name>_loss``), checked by building the detloss module;
- ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)`` (the IoU-aware
  loss takes ``pred, pred_boxes, target_boxes``); ``weight``, ``avg_factor`` may be positional;
- a box weight of shape ``(n, 4)`` for a loss of shape ``(n,)`` is averaged over its last
  dimension; a weight of shape ``(n,)`` for a loss of shape ``(n, C)`` weights each row;
- for box and regression losses, a weight with no positive entry gives a zero loss that keeps
  ``pred`` in the graph (``pred.sum() * 0``), without computing the loss;
- ``reduction="mean"`` with ``avg_factor`` divides the weighted sum by ``avg_factor``;
  ``"sum"`` with ``avg_factor`` raises; ``"none"`` returns the weighted elementwise loss and
  ignores ``avg_factor`` (mmdetection's rule);
- the result is multiplied by ``loss_weight``.

Weighting and reduction are :func:`detloss.reduction.reduce_loss`'s; state (Wise-IoU v3's running
mean, GHM-C's bin counts) is the detloss module's, a submodule here, so it is in the model's
``state_dict`` and in its checkpoints.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from detloss._checks import check_choice, check_floating, check_range
from detloss.errors import DetLossError
from detloss.nn import LossModule, function_options
from detloss.reduction import REDUCTIONS, reduce_loss
from detloss.registry import LOSSES, LossSpec

__all__ = ["MODELS", "SCOPE", "SHELLS", "MMDetLoss", "register"]

#: The registry scope of the shells: ``type="detloss.<ModuleName>"``.
SCOPE = "detloss"
#: Input kinds whose all-zero weight short-cuts to a zero loss (mmdetection's box and regression losses).
_SKIPS_WITHOUT_POSITIVES = ("boxes", "values")


def _match_weight(weight: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """mmdetection's weight shapes: ``(n, 4)`` box weights averaged, ``(n,)`` row weights widened."""
    if weight.dim() == loss.dim() + 1 and weight.shape[:-1] == loss.shape:
        return weight.mean(-1)
    if weight.dim() == loss.dim() - 1 and weight.shape == loss.shape[:-1]:
        return weight.unsqueeze(-1)
    return weight


class MMDetLoss(nn.Module):
    """Base of the shells: one detloss module (``self.loss``, elementwise) in mmdetection's convention.

    Example:
        >>> loss = SHELLS["GIoULoss"](loss_weight=2.0)
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 4.0, 2.0]])
        >>> target = torch.tensor([[4.0, 0.0, 6.0, 1.0], [0.0, 0.0, 4.0, 2.0]])  # GIoU losses 4/3 and 0
        >>> loss(pred, target, torch.ones(2, 4), avg_factor=1.0)  # 2 x (4/3 + 0) / 1
        tensor(2.6667)
        >>> loss(pred, target, torch.zeros(2, 4))  # no positive weight
        tensor(0.)
        >>> loss(pred, target, reduction_override="none")
        tensor([2.6667, 0.0000])
    """

    spec: ClassVar[LossSpec]

    def __init__(self, *, reduction: str = "mean", loss_weight: float = 1.0, **options: Any) -> None:
        super().__init__()
        where = type(self).__name__
        check_choice(where, "reduction", reduction, REDUCTIONS)
        check_range(where, "loss_weight", loss_weight)
        self.reduction = reduction
        self.loss_weight = float(loss_weight)
        self.loss: LossModule = self.spec.module(**options, reduction="none")

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        avg_factor: Any = None,
        reduction_override: str | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self._forward((pred, target), weight, avg_factor, reduction_override, kwargs)

    def _forward(
        self,
        inputs: tuple[torch.Tensor, ...],
        weight: torch.Tensor | None,
        avg_factor: Any,
        reduction_override: str | None,
        unknown: dict[str, Any],
    ) -> torch.Tensor:
        where = f"{type(self).__name__}.forward"
        if unknown:
            name = next(iter(unknown))
            expected = "one of weight, avg_factor, reduction_override"
            raise DetLossError.bad_argument(where, name, expected, f"unknown argument {name!r}")
        reduction = self.reduction if reduction_override is None else reduction_override
        check_choice(where, "reduction_override", reduction, REDUCTIONS)
        if weight is not None:
            check_floating(where, "weight", weight)
            if self.spec.inputs in _SKIPS_WITHOUT_POSITIVES and not bool((weight > 0).any()):
                return inputs[0].sum() * 0.0
        loss = self.loss(*inputs)
        if weight is not None:
            weight = _match_weight(weight, loss)
        if reduction == "none":
            avg_factor = None
        reduced = reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)  # type: ignore[arg-type]
        return self.loss_weight * reduced


class _ThreeInputs(MMDetLoss):
    """A shell whose loss takes three inputs (the IoU-aware loss: logits, predicted and target boxes)."""

    def forward(  # type: ignore[override]
        self,
        pred: torch.Tensor,
        pred_boxes: torch.Tensor,
        target_boxes: torch.Tensor,
        weight: torch.Tensor | None = None,
        avg_factor: Any = None,
        reduction_override: str | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self._forward((pred, pred_boxes, target_boxes), weight, avg_factor, reduction_override, kwargs)


def _shell(spec: LossSpec) -> type[MMDetLoss]:
    name = spec.module.__name__
    base = _ThreeInputs if spec.inputs == "iou_aware" else MMDetLoss
    options = [p for p in function_options(spec.function) if p.name != "reduction"]
    keyword = inspect.Parameter.KEYWORD_ONLY
    signature = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *options,
            inspect.Parameter("reduction", keyword, default="mean", annotation=str),
            inspect.Parameter("loss_weight", keyword, default=1.0, annotation=float),
        ]
    )

    def __init__(self: MMDetLoss, *, reduction: str = "mean", loss_weight: float = 1.0, **options: Any) -> None:
        base.__init__(self, reduction=reduction, loss_weight=loss_weight, **options)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    doc = (
        f"mmdetection-style shell of :class:`detloss.{name}` (``type='{SCOPE}.{name}'``); "
        f"the loss: :func:`detloss.functional.{spec.function.__name__}` ({spec.paper}, {spec.year})."
    )
    namespace = {"spec": spec, "__init__": __init__, "__doc__": doc, "__module__": __name__, "__qualname__": name}
    return type(name, (base,), namespace)


#: The shells by class name, one per entry of :data:`detloss.LOSSES`.
SHELLS: dict[str, type[MMDetLoss]] = {spec.module.__name__: _shell(spec) for spec in LOSSES.values()}
globals().update(SHELLS)  # detloss.integrations.mmdet.WIoULoss, ...: importable, so picklable


def register(parent: Any = None) -> Any:
    """Register the shells in the child registry of scope ``detloss`` under ``parent`` (mmengine's
    root ``MODELS`` by default) and return it; calling it again re-registers into the same one."""
    from mmengine.registry import MODELS as ROOT
    from mmengine.registry import Registry

    parent = ROOT if parent is None else parent
    child = parent.children.get(SCOPE) or Registry("model", parent=parent, scope=SCOPE)
    for name, shell in SHELLS.items():
        child.register_module(name=name, module=shell, force=True)
    return child


try:
    import mmengine.registry  # noqa: F401
except ImportError:  # no OpenMMLab registry to join: the shells still work as modules
    MODELS: Any = None
else:
    #: The registry of scope ``detloss`` under mmengine's root ``MODELS`` (``None`` without mmengine).
    MODELS = register()

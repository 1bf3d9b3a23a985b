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
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from detloss import functional as F
from detloss.errors import DetLossError
from detloss.functional.iou import _wiou_loss

__all__ = [
    "AlphaIoULoss",
    "BalancedL1Loss",
    "BinaryCrossEntropyLoss",
    "CIoULoss",
    "CrossEntropyLoss",
    "DIoULoss",
    "DistributionFocalLoss",
    "EIoULoss",
    "ExponentialLoss",
    "FocalEIoULoss",
    "FocalLoss",
    "GHMCLoss",
    "GIoULoss",
    "GWDLoss",
    "HingeLoss",
    "HuberLoss",
    "InnerIoULoss",
    "IoUAwareLoss",
    "IoULoss",
    "KFIoULoss",
    "KLDLoss",
    "KLDivDistillLoss",
    "L1Loss",
    "L2Loss",
    "LossModule",
    "MPDIoULoss",
    "NWDLoss",
    "ProbIoULoss",
    "QualityFocalLoss",
    "RotatedIoULoss",
    "SIoULoss",
    "SigmoidFocalLoss",
    "SmoothL1Loss",
    "SoftmaxFocalLoss",
    "VarifocalLoss",
    "WIoULoss",
    "WiseIoUState",
    "loss_module",
]

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


def loss_module(
    function: Callable[..., torch.Tensor], name: str, base: type[LossModule] = LossModule
) -> type[LossModule]:
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
L1Loss = loss_module(F.l1_loss, "L1Loss")
L2Loss = loss_module(F.l2_loss, "L2Loss")
SmoothL1Loss = loss_module(F.smooth_l1_loss, "SmoothL1Loss")
HuberLoss = loss_module(F.huber_loss, "HuberLoss")
BalancedL1Loss = loss_module(F.balanced_l1_loss, "BalancedL1Loss")
FocalEIoULoss = loss_module(F.focal_eiou_loss, "FocalEIoULoss")
SIoULoss = loss_module(F.siou_loss, "SIoULoss")
AlphaIoULoss = loss_module(F.alpha_iou_loss, "AlphaIoULoss")
MPDIoULoss = loss_module(F.mpdiou_loss, "MPDIoULoss")
InnerIoULoss = loss_module(F.inner_iou_loss, "InnerIoULoss")
NWDLoss = loss_module(F.nwd_loss, "NWDLoss")
RotatedIoULoss = loss_module(F.rotated_iou_loss, "RotatedIoULoss")
ProbIoULoss = loss_module(F.probiou_loss, "ProbIoULoss")
KLDLoss = loss_module(F.kld_loss, "KLDLoss")
GWDLoss = loss_module(F.gwd_loss, "GWDLoss")
KFIoULoss = loss_module(F.kfiou_loss, "KFIoULoss")


class WiseIoUState(LossModule):
    """Base of :class:`WIoULoss`: Wise-IoU v3's running mean of ``1 - IoU`` lives here.

    The buffer ``running_iou_mean`` (in ``state_dict``) starts at the option ``iou_mean``, or,
    when that is ``None``, at the first training batch's mean. In training mode each call
    moves it by ``momentum`` towards the batch mean and normalises by the result (the order
    of the authors' code); in eval mode it is used as it is and never changes. Each
    distributed rank keeps its own running mean.

    Example:
        >>> loss = WIoULoss(momentum=0.5)
        >>> pred, target = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> loss(pred, target)  # first batch: the mean is this batch's 1 - IoU = 0.5
        tensor(0.6325)
        >>> _ = loss(target, target)  # 1 - IoU = 0: the mean moves to 0.5 * 0.5 + 0.5 * 0
        >>> loss.running_iou_mean
        tensor(0.2500)
        >>> _ = loss.eval()(pred, target)  # eval: used, not updated
        >>> loss.running_iou_mean
        tensor(0.2500)
    """

    running_iou_mean: torch.Tensor

    def __init__(self, *, loss_weight: float = 1.0, **options: Any) -> None:
        super().__init__(loss_weight=loss_weight, **options)
        start = options.get("iou_mean")
        self.register_buffer("running_iou_mean", torch.tensor(math.nan if start is None else float(start)))

    def forward(
        self, *inputs: torch.Tensor, weight: torch.Tensor | None = None, avg_factor: Any = None
    ) -> torch.Tensor:
        options = {**self.options, "iou_mean": self.running_iou_mean}
        if not self.training:
            options["momentum"] = 0.0
        loss, mean = _wiou_loss(*inputs, **options, weight=weight, avg_factor=avg_factor)
        if self.training and mean is not None:
            with torch.no_grad():
                self.running_iou_mean.copy_(mean)
        return loss if self.loss_weight == 1.0 else loss * self.loss_weight


WIoULoss = loss_module(F.wiou_loss, "WIoULoss", base=WiseIoUState)


class _GHMCRunningCount(LossModule):
    """GHM-C's state: the running bin counts of ``momentum > 0`` as the buffer ``running_count``.

    Advanced in training mode only; in eval mode the loss uses a copy (the batch is counted,
    the state is not changed). ``momentum = 0`` leaves the buffer unused.
    """

    running_count: torch.Tensor

    def __init__(self, *, loss_weight: float = 1.0, **options: Any) -> None:
        initial = options.pop("running_count", None)
        super().__init__(loss_weight=loss_weight, **options)
        bins = options.get("bins", 10)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise DetLossError.bad_argument("GHMCLoss", "bins", "an integer >= 1", repr(bins))
        count = torch.zeros(bins) if initial is None else initial.detach().clone().float()
        self.register_buffer("running_count", count)

    def forward(
        self, *inputs: torch.Tensor, weight: torch.Tensor | None = None, avg_factor: Any = None
    ) -> torch.Tensor:
        state = self.running_count if self.training else self.running_count.clone()
        loss = type(self).function(*inputs, **self.options, running_count=state, weight=weight, avg_factor=avg_factor)
        return loss if self.loss_weight == 1.0 else loss * self.loss_weight


CrossEntropyLoss = loss_module(F.cross_entropy_loss, "CrossEntropyLoss")
BinaryCrossEntropyLoss = loss_module(F.binary_cross_entropy_loss, "BinaryCrossEntropyLoss")
SigmoidFocalLoss = loss_module(F.sigmoid_focal_loss, "SigmoidFocalLoss")
FocalLoss = SigmoidFocalLoss
SoftmaxFocalLoss = loss_module(F.softmax_focal_loss, "SoftmaxFocalLoss")
QualityFocalLoss = loss_module(F.quality_focal_loss, "QualityFocalLoss")
DistributionFocalLoss = loss_module(F.distribution_focal_loss, "DistributionFocalLoss")
VarifocalLoss = loss_module(F.varifocal_loss, "VarifocalLoss")
IoUAwareLoss = loss_module(F.iou_aware_loss, "IoUAwareLoss")
KLDivDistillLoss = loss_module(F.kl_div_distill_loss, "KLDivDistillLoss")
HingeLoss = loss_module(F.hinge_loss, "HingeLoss")
ExponentialLoss = loss_module(F.exponential_loss, "ExponentialLoss")
GHMCLoss = loss_module(F.ghm_c_loss, "GHMCLoss", base=_GHMCRunningCount)

"""``torch.nn.Module`` forms of every loss: shells that store settings and make one call.

Each class is generated from its function in :mod:`detloss.functional`, so the module's
options and defaults are the function's own (``inspect.signature`` shows them) and can never
drift apart. ``__init__`` takes the hyper-parameters (keyword-only), ``reduction`` and
``loss_weight``, and checks them at once with the function's own checks (a bad option raises
a :class:`~detloss.DetLossError` naming the class, not at the first forward). ``forward``
takes the function's inputs by their names (``pred, target``; ``pred, pred_boxes,
target_boxes`` for ``IoUAwareLoss``), then ``weight`` and ``avg_factor``.

Example:
    >>> loss = CIoULoss(reduction="sum", loss_weight=2.0)
    >>> loss
    CIoULoss(alpha_gate=False, grad_mode='exact', box_format='xyxy', eps=1e-07, reduction='sum', loss_weight=2.0)
    >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    >>> loss(pred, torch.tensor([[0.0, 0.0, 4.0, 2.0]]))  # 2 x ciou_loss(...) = 2 x 0.5532
    tensor(1.1065)
    >>> list(inspect.signature(CIoULoss.forward).parameters)
    ['self', 'pred', 'target', 'weight', 'avg_factor']
    >>> CIoULoss(grad_mode="foo")
    Traceback (most recent call last):
    ...
    detloss.errors.DetLossError: CIoULoss(): argument `grad_mode` expected one of 'exact', 'paper', got 'foo'
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from detloss import functional as F
from detloss._backend import use_backend
from detloss._checks import check_finite_number, check_integer
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
]

#: Arguments given per call, not stored in the module.
CALL_ARGUMENTS = ("weight", "avg_factor")


class LossModule(nn.Module):
    """Base of every detloss module: ``options`` are passed to ``function`` on each call.

    ``forward`` multiplies :meth:`compute` (the function with the stored options) by
    ``loss_weight``; the generated classes give it the function's input names.
    """

    function: ClassVar[Callable[..., torch.Tensor]]

    def __init__(self, *, loss_weight: float = 1.0, **options: Any) -> None:
        super().__init__()
        check_finite_number(type(self).__name__, "loss_weight", loss_weight)
        self.options = options
        self.loss_weight = loss_weight

    def forward(self, *inputs: Any, weight: torch.Tensor | None = None, avg_factor: Any = None) -> torch.Tensor:
        return self.weighted(self.compute(*inputs, weight=weight, avg_factor=avg_factor))

    def compute(self, *inputs: Any, weight: torch.Tensor | None, avg_factor: Any) -> torch.Tensor:
        """The loss of one call before ``loss_weight``: ``function(*inputs, **options, ...)``."""
        return type(self).function(*inputs, **self.options, weight=weight, avg_factor=avg_factor)

    def weighted(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.loss_weight == 1.0 else loss * self.loss_weight

    @classmethod
    def probe_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options with which construction runs the function once (state a module keeps
        in buffers, such as GHM-C's running counts, is filled in here)."""
        return dict(options)

    def extra_repr(self) -> str:
        items = [*self.options.items(), ("loss_weight", self.loss_weight)]
        return ", ".join(f"{k}={v!r}" for k, v in items)


def function_options(function: Callable[..., Any]) -> list[inspect.Parameter]:
    """The keyword-only hyper-parameters of a loss function (``reduction`` included)."""
    params = inspect.signature(function).parameters.values()
    return [p for p in params if p.kind is p.KEYWORD_ONLY and p.name not in CALL_ARGUMENTS]


def function_inputs(function: Callable[..., Any]) -> list[inspect.Parameter]:
    """The positional inputs of a loss function: ``pred, target`` (or ``iou_aware``'s three)."""
    params = inspect.signature(function).parameters.values()
    return [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]


def _probe_inputs(cls: type[LossModule], options: Mapping[str, Any]) -> tuple[torch.Tensor, ...] | None:
    """Two valid samples of what the registered loss ``cls`` takes, on the CPU; ``None`` for
    a class that is not registered. A per-class option (a tensor or a list, e.g.
    ``class_weight``) sets the number of classes of the logits."""
    from detloss.registry import LOSSES

    spec = next((s for c in cls.__mro__ for s in LOSSES.values() if s.module is c), None)
    if spec is None:
        return None
    classes = None
    if spec.inputs in ("binary_logits", "class_logits"):
        vectors = [v for v in options.values() if isinstance(v, (torch.Tensor, list, tuple))]
        if vectors:
            first = vectors[0]
            classes = max(first.shape[-1] if isinstance(first, torch.Tensor) and first.dim() else len(first), 1)
    return _samples(spec.key, spec.inputs, classes)


@functools.lru_cache(maxsize=256)
def _samples(key: str, kind: str, classes: int | None) -> tuple[torch.Tensor, ...]:
    """The probe's inputs, made once per loss and class count (the losses do not modify them)."""
    from detloss.testing import sample_inputs

    with torch.device("cpu"):
        if classes is None:
            return sample_inputs(key, 2, requires_grad=False)
        logits = torch.zeros(2, classes)
        return logits, torch.zeros(2, dtype=torch.long) if kind == "class_logits" else torch.zeros_like(logits)


def check_module_options(cls: type[LossModule], options: Mapping[str, Any]) -> None:
    """Check a module's options when it is built, by the function's own checks on a tiny
    valid input: every error that does not depend on the caller's data is raised here,
    naming the class."""
    name = cls.__name__
    inputs = _probe_inputs(cls, options)
    if inputs is None:
        return
    try:  # on the reference backend: building a module never builds or loads the native kernel
        with torch.no_grad(), use_backend("reference"):
            cls.function(*inputs, **cls.probe_options(options))
    except DetLossError as error:
        message, prefix = str(error), f"{cls.function.__name__}()"
        renamed = f"{name}(){message[len(prefix):]}" if message.startswith(prefix) else f"{name}: {message}"
        raise DetLossError(renamed) from None


def loss_module(
    function: Callable[..., torch.Tensor], name: str, base: type[LossModule] = LossModule
) -> type[LossModule]:
    """Build the module class ``name`` whose options, defaults and inputs are those of ``function``."""
    options = function_options(function)
    defaults = {p.name: p.default for p in options}
    inputs = function_inputs(function)
    n_inputs = len(inputs)
    call = {p.name: p for p in inspect.signature(function).parameters.values() if p.name in CALL_ARGUMENTS}

    def __init__(self: LossModule, *, loss_weight: float = 1.0, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in defaults:
                raise DetLossError.bad_argument(name, key, "one of " + ", ".join(defaults), f"unknown option {key!r}")
        settings = {**defaults, **kwargs}
        check_module_options(type(self), settings)
        base.__init__(self, loss_weight=loss_weight, **settings)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    weight_param = inspect.Parameter("loss_weight", inspect.Parameter.KEYWORD_ONLY, default=1.0, annotation=float)
    __init__.__signature__ = inspect.Signature([self_param, *options, weight_param])  # type: ignore[attr-defined]

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward_signature = inspect.Signature(
        [self_param, *inputs, *(call[n].replace(kind=positional) for n in CALL_ARGUMENTS)],
        return_annotation=inspect.signature(function).return_annotation,
    )

    def forward(self: LossModule, *args: Any, **kwargs: Any) -> torch.Tensor:
        if len(args) == n_inputs and kwargs.keys() <= {"weight", "avg_factor"}:
            values, weight, avg_factor = args, kwargs.get("weight"), kwargs.get("avg_factor")
        else:  # inputs by name, or weight / avg_factor by position: bound as the signature says
            bound = forward_signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            values = tuple(bound.arguments[p.name] for p in inputs)
            weight, avg_factor = bound.arguments["weight"], bound.arguments["avg_factor"]
        return self.weighted(self.compute(*values, weight=weight, avg_factor=avg_factor))

    forward.__signature__ = forward_signature  # type: ignore[attr-defined]
    names = ", ".join(p.name for p in inputs)
    forward.__doc__ = (
        f"``loss_weight * {function.__name__}({names}, <options>, weight=weight, avg_factor=avg_factor)``.\n\n"
        f"The inputs, ``weight`` and ``avg_factor`` are those of :func:`detloss.functional.{function.__name__}`."
    )
    summary = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
    doc = (
        f"Module form of :func:`detloss.functional.{function.__name__}`. {summary}\n\n"
        f"Options and defaults: those of the function (``inspect.signature({name})`` lists them), checked\n"
        f"when the module is built, plus ``loss_weight`` (a finite number multiplying the loss).\n"
        f"Call it as ``{name}(...)({names}, weight=None, avg_factor=None)``."
    )
    namespace = {
        "function": staticmethod(function),
        "__init__": __init__,
        "forward": forward,
        "__doc__": doc,
        "__module__": __name__,
    }
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

    def compute(self, *inputs: Any, weight: torch.Tensor | None, avg_factor: Any) -> torch.Tensor:
        options = {**self.options, "iou_mean": self.running_iou_mean}
        if not self.training:
            options["momentum"] = 0.0
        loss, mean = _wiou_loss(*inputs, **options, weight=weight, avg_factor=avg_factor)
        if self.training and mean is not None:
            with torch.no_grad():
                self.running_iou_mean.copy_(mean)
        return loss


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
        count = torch.zeros(options["bins"]) if initial is None else initial.detach().clone().float()
        self.register_buffer("running_count", count)

    @classmethod
    def probe_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        probe = dict(options)
        if probe.get("running_count") is None:
            try:
                check_integer(cls.__name__, "bins", probe.get("bins"), 1)
            except DetLossError:
                return probe  # the function's own check names `bins`
            probe["running_count"] = torch.zeros(probe["bins"])  # the buffer a fresh module starts with
        return probe

    def compute(self, *inputs: Any, weight: torch.Tensor | None, avg_factor: Any) -> torch.Tensor:
        state = self.running_count if self.training else self.running_count.clone()
        return type(self).function(*inputs, **self.options, running_count=state, weight=weight, avg_factor=avg_factor)


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

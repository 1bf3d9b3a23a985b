"""Losses by name: ``build_loss("ciou", reduction="sum")`` or ``build_loss({"type": "CIoULoss"})``.

``LOSSES`` is a plain table (no registration side effects): the key, the function, the
module class, the kind of inputs it takes (used by the contract tests and ``detloss fuzz``),
and the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from detloss import functional as F
from detloss import nn as N
from detloss.errors import DetLossError

__all__ = ["LossSpec", "LOSSES", "build_loss", "available_losses", "get_spec"]

#: What a loss takes, as :func:`detloss.testing.sample_inputs` generates it:
#: ``boxes``: pred and target boxes ``(N, 4)``; ``values``: two real tensors of one shape;
#: ``binary_logits``: logits ``(N, C)`` and targets in ``[0, 1]``; ``class_logits``: logits
#: ``(N, C)`` and integer labels ``(N,)``; ``distribution``: bin logits ``(N, 4, R + 1)`` and
#: continuous targets ``(N, 4)`` in ``[0, R]``; ``distill``: student and teacher logits
#: ``(N, C)``; ``iou_aware``: IoU logits ``(N,)``, pred and target boxes ``(N, 4)``;
#: ``signed_scores``: real scores ``(N,)`` and labels in ``{-1, +1}``.
InputKind = Literal[
    "boxes", "values", "binary_logits", "class_logits", "distribution", "distill", "iou_aware", "signed_scores"
]


@dataclass(frozen=True)
class LossSpec:
    """One row of the table."""

    key: str
    function: Callable[..., torch.Tensor]
    module: type[N.LossModule]
    inputs: InputKind
    paper: str
    year: int
    #: True when the gradient is by design not the derivative of the value (CIoU holds its
    #: alpha constant, as the paper says). The contract's gradcheck then uses
    #: ``exact_options``, options under which it is exact, or skips if there are none; the
    #: loss's own tests check the surrogate against finite differences with the constant frozen.
    surrogate_gradient: bool = False
    exact_options: tuple[tuple[str, Any], ...] | None = None


LOSSES: dict[str, LossSpec] = {
    spec.key: spec
    for spec in (
        LossSpec("iou", F.iou_loss, N.IoULoss, "boxes", "Yu et al., UnitBox, ACM MM", 2016),
        LossSpec("giou", F.giou_loss, N.GIoULoss, "boxes", "Rezatofighi et al., Generalized IoU, CVPR", 2019),
        LossSpec("diou", F.diou_loss, N.DIoULoss, "boxes", "Zheng et al., Distance-IoU, AAAI", 2020),
        LossSpec(
            "ciou", F.ciou_loss, N.CIoULoss, "boxes", "Zheng et al., Distance-IoU (CIoU), AAAI", 2020, surrogate_gradient=True
        ),
        LossSpec("eiou", F.eiou_loss, N.EIoULoss, "boxes", "Zhang et al., Focal and Efficient IoU, Neurocomputing", 2022),
    )
}


def available_losses() -> list[str]:
    """Registry keys, sorted.

    Example:
        >>> "ciou" in available_losses()
        True
    """
    return sorted(LOSSES)


def get_spec(name: str) -> LossSpec:
    """The table row for a key (``"ciou"``) or a module class name (``"CIoULoss"``)."""
    if name in LOSSES:
        return LOSSES[name]
    for spec in LOSSES.values():
        if spec.module.__name__ == name:
            return spec
    raise DetLossError.bad_argument("build_loss", "name", "one of " + ", ".join(available_losses()), repr(name))


def build_loss(config: str | Mapping[str, Any], **options: Any) -> N.LossModule:
    """Build a loss module from a name and options, or from a config mapping with ``type``.

    Example:
        >>> build_loss("ciou", reduction="sum")
        CIoULoss(alpha_gate=False, grad_mode='exact', box_format='xyxy', eps=1e-07, reduction='sum', loss_weight=1.0)
        >>> build_loss({"type": "GIoULoss", "loss_weight": 2.0}).loss_weight
        2.0
    """
    if isinstance(config, Mapping):
        settings = dict(config)
        if "type" not in settings:
            raise DetLossError.bad_argument("build_loss", "config", "a mapping with a 'type' key", sorted(settings))
        name = settings.pop("type")
        options = {**settings, **options}
    elif isinstance(config, str):
        name = config
    else:
        raise DetLossError.bad_argument("build_loss", "config", "a name or a mapping", type(config).__name__)
    return get_spec(name).module(**options)

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

__all__ = ["LOSSES", "LossSpec", "available_losses", "build_loss", "get_spec"]

#: What a loss takes, as :func:`detloss.testing.sample_inputs` generates it:
#: ``boxes``: pred and target boxes ``(N, 4)``; ``values``: two real tensors of one shape;
#: ``binary_logits``: logits ``(N, C)`` and targets in ``[0, 1]``; ``class_logits``: logits
#: ``(N, C)`` and integer labels ``(N,)``; ``distribution``: bin logits ``(N, 4, R + 1)`` and
#: continuous targets ``(N, 4)`` in ``[0, R]``; ``distill``: student and teacher logits
#: ``(N, C)``; ``iou_aware``: IoU logits ``(N,)``, pred and target boxes ``(N, 4)``;
#: ``signed_scores``: real scores ``(N,)`` and labels in ``{-1, +1}``; ``rotated_boxes``: pred and
#: target rotated boxes ``(N, 5)`` in ``cxcywha`` (radians).
InputKind = Literal[
    "boxes",
    "values",
    "binary_logits",
    "class_logits",
    "distribution",
    "distill",
    "iou_aware",
    "signed_scores",
    "rotated_boxes",
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
    #: Options the contract tests and fuzzers pass on every call (function and module), for
    #: a loss that has a required option, e.g. mpdiou's ``image_size``.
    call_options: tuple[tuple[str, Any], ...] = ()


#: Every loss by registry key: its function, module class, input kind and paper.
LOSSES: dict[str, LossSpec] = {
    spec.key: spec
    for spec in (
        # ---- classification losses
        LossSpec(
            "cross_entropy", F.cross_entropy_loss, N.CrossEntropyLoss, "class_logits",
            "Softmax cross-entropy; label smoothing: Szegedy et al., Rethinking Inception, CVPR", 2016,
        ),
        LossSpec(
            "binary_cross_entropy", F.binary_cross_entropy_loss, N.BinaryCrossEntropyLoss, "binary_logits",
            "Logistic (sigmoid) cross-entropy: Cox, The regression analysis of binary sequences, JRSS B", 1958,
        ),
        LossSpec(
            "sigmoid_focal", F.sigmoid_focal_loss, N.SigmoidFocalLoss, "binary_logits",
            "Lin et al., Focal Loss for Dense Object Detection, ICCV", 2017,
        ),
        LossSpec(
            "softmax_focal", F.softmax_focal_loss, N.SoftmaxFocalLoss, "class_logits",
            "Lin et al., Focal Loss for Dense Object Detection, ICCV", 2017,
        ),
        LossSpec(
            "quality_focal", F.quality_focal_loss, N.QualityFocalLoss, "binary_logits",
            "Li et al., Generalized Focal Loss, NeurIPS", 2020,
        ),
        LossSpec(
            "distribution_focal", F.distribution_focal_loss, N.DistributionFocalLoss, "distribution",
            "Li et al., Generalized Focal Loss, NeurIPS", 2020,
        ),
        LossSpec(
            "varifocal", F.varifocal_loss, N.VarifocalLoss, "binary_logits", "Zhang et al., VarifocalNet, CVPR", 2021
        ),
        LossSpec(
            "iou_aware", F.iou_aware_loss, N.IoUAwareLoss, "iou_aware",
            "Wu et al., IoU-aware Single-stage Object Detector, Image and Vision Computing", 2020,
            # detached IoU target (the default): the boxes' zero gradient is by design
            surrogate_gradient=True, exact_options=(("detach_target", False),),
        ),
        LossSpec(
            "kl_div_distill", F.kl_div_distill_loss, N.KLDivDistillLoss, "distill",
            "Hinton et al., Distilling the Knowledge in a Neural Network, arXiv 1503.02531", 2015,
        ),
        LossSpec(
            "hinge", F.hinge_loss, N.HingeLoss, "signed_scores", "Cortes & Vapnik, Support-Vector Networks, ML", 1995
        ),
        LossSpec(
            "exponential", F.exponential_loss, N.ExponentialLoss, "signed_scores",
            "Freund & Schapire, AdaBoost, J. Comput. Syst. Sci.", 1997,
        ),
        LossSpec(
            "ghm_c", F.ghm_c_loss, N.GHMCLoss, "binary_logits",
            "Li et al., Gradient Harmonized Single-stage Detector, AAAI", 2019,
        ),
        LossSpec("iou", F.iou_loss, N.IoULoss, "boxes", "Yu et al., UnitBox, ACM MM", 2016),
        LossSpec("giou", F.giou_loss, N.GIoULoss, "boxes", "Rezatofighi et al., Generalized IoU, CVPR", 2019),
        LossSpec("diou", F.diou_loss, N.DIoULoss, "boxes", "Zheng et al., Distance-IoU, AAAI", 2020),
        LossSpec(
            "ciou",
            F.ciou_loss,
            N.CIoULoss,
            "boxes",
            "Zheng et al., Distance-IoU (CIoU), AAAI",
            2020,
            surrogate_gradient=True,
        ),
        LossSpec(
            "eiou", F.eiou_loss, N.EIoULoss, "boxes", "Zhang et al., Focal and Efficient IoU, Neurocomputing", 2022
        ),
        # ---- regression losses
        LossSpec("l1", F.l1_loss, N.L1Loss, "values", "Carion et al., DETR (L1 box term), ECCV", 2020),
        LossSpec("l2", F.l2_loss, N.L2Loss, "values", "Girshick et al., R-CNN (least-squares box deltas), CVPR", 2014),
        LossSpec("smooth_l1", F.smooth_l1_loss, N.SmoothL1Loss, "values", "Girshick, Fast R-CNN, ICCV", 2015),
        LossSpec(
            "huber", F.huber_loss, N.HuberLoss, "values",
            "Huber, Robust Estimation of a Location Parameter, Ann. Math. Statist.", 1964,
        ),
        LossSpec("balanced_l1", F.balanced_l1_loss, N.BalancedL1Loss, "values", "Pang et al., Libra R-CNN, CVPR", 2019),
        LossSpec(
            "focal_eiou", F.focal_eiou_loss, N.FocalEIoULoss, "boxes",
            "Zhang et al., Focal and Efficient IoU, Neurocomputing", 2022,
            surrogate_gradient=True, exact_options=(("detach_iou", False),),
        ),
        LossSpec("siou", F.siou_loss, N.SIoULoss, "boxes", "Gevorgyan, SIoU Loss, arXiv 2205.12740", 2022),
        LossSpec("alpha_iou", F.alpha_iou_loss, N.AlphaIoULoss, "boxes", "He et al., Alpha-IoU, NeurIPS", 2021),
        LossSpec(
            "wiou", F.wiou_loss, N.WIoULoss, "boxes", "Tong et al., Wise-IoU, arXiv 2301.10051", 2023,
            surrogate_gradient=True,
        ),
        LossSpec(
            "mpdiou", F.mpdiou_loss, N.MPDIoULoss, "boxes", "Ma & Xu, MPDIoU, arXiv 2307.07662", 2023,
            call_options=(("image_size", (128.0, 128.0)),),
        ),
        LossSpec(
            "inner_iou", F.inner_iou_loss, N.InnerIoULoss, "boxes", "Zhang et al., Inner-IoU, arXiv 2311.02877", 2023
        ),
        LossSpec(
            "nwd", F.nwd_loss, N.NWDLoss, "boxes",
            "Wang et al., Normalized Gaussian Wasserstein Distance, arXiv 2110.13389", 2021,
        ),
        # ---- rotated boxes
        LossSpec(
            "rotated_iou", F.rotated_iou_loss, N.RotatedIoULoss, "rotated_boxes",
            "Yu et al., UnitBox, ACM MM (IoU); Rezatofighi et al., Generalized IoU, CVPR (GIoU)", 2016,
        ),
        LossSpec(
            "probiou", F.probiou_loss, N.ProbIoULoss, "rotated_boxes",
            "Llerena et al., Gaussian Bounding Boxes and Probabilistic IoU, arXiv 2106.06072", 2021,
        ),
        LossSpec(
            "kld", F.kld_loss, N.KLDLoss, "rotated_boxes",
            "Yang et al., Rotated Object Detection via Kullback-Leibler Divergence, NeurIPS", 2021,
        ),
        LossSpec(
            "gwd", F.gwd_loss, N.GWDLoss, "rotated_boxes",
            "Yang et al., Rotated Object Detection with Gaussian Wasserstein Distance Loss, ICML", 2021,
        ),
        LossSpec(
            "kfiou", F.kfiou_loss, N.KFIoULoss, "rotated_boxes",
            "Yang et al., The KFIoU Loss for Rotated Object Detection, ICLR", 2023,
        ),
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

"""detloss: object-detection losses, the box geometry beneath them, and experiments.

Example:
    >>> import torch, detloss
    >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    >>> loss = detloss.CIoULoss()(pred, torch.tensor([[0.0, 0.0, 4.0, 2.0]]))
    >>> loss.backward()
    >>> bool(torch.isfinite(pred.grad).all())
    True
"""

from detloss import boxes, functional, reduction
from detloss._backend import BackendInfo, backend_info, get_backend, set_backend, use_backend
from detloss.errors import DetLossError
from detloss.nn import (
    AlphaIoULoss,
    BalancedL1Loss,
    BinaryCrossEntropyLoss,
    CIoULoss,
    CrossEntropyLoss,
    DIoULoss,
    DistributionFocalLoss,
    EIoULoss,
    ExponentialLoss,
    FocalEIoULoss,
    FocalLoss,
    GHMCLoss,
    GIoULoss,
    HingeLoss,
    HuberLoss,
    InnerIoULoss,
    IoUAwareLoss,
    IoULoss,
    KLDivDistillLoss,
    L1Loss,
    L2Loss,
    LossModule,
    MPDIoULoss,
    NWDLoss,
    QualityFocalLoss,
    SigmoidFocalLoss,
    SIoULoss,
    SmoothL1Loss,
    SoftmaxFocalLoss,
    VarifocalLoss,
    WIoULoss,
)
from detloss.registry import LOSSES, available_losses, build_loss

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "AlphaIoULoss",
    "BalancedL1Loss",
    "BinaryCrossEntropyLoss",
    "CIoULoss",
    "CrossEntropyLoss",
    "DIoULoss",
    "DetLossError",
    "BackendInfo",
    "backend_info",
    "get_backend",
    "set_backend",
    "use_backend",
    "DistributionFocalLoss",
    "EIoULoss",
    "ExponentialLoss",
    "FocalEIoULoss",
    "FocalLoss",
    "GHMCLoss",
    "GIoULoss",
    "HingeLoss",
    "HuberLoss",
    "InnerIoULoss",
    "IoUAwareLoss",
    "IoULoss",
    "KLDivDistillLoss",
    "L1Loss",
    "L2Loss",
    "LossModule",
    "MPDIoULoss",
    "NWDLoss",
    "QualityFocalLoss",
    "SIoULoss",
    "SigmoidFocalLoss",
    "SmoothL1Loss",
    "SoftmaxFocalLoss",
    "VarifocalLoss",
    "WIoULoss",
    "__version__",
    "available_losses",
    "boxes",
    "build_loss",
    "functional",
    "reduction",
]

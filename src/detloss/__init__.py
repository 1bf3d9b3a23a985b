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
from detloss.errors import DetLossError
from detloss.nn import CIoULoss, DIoULoss, EIoULoss, GIoULoss, IoULoss, LossModule
from detloss.registry import LOSSES, available_losses, build_loss

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "boxes",
    "functional",
    "reduction",
    "DetLossError",
    "LossModule",
    "LOSSES",
    "available_losses",
    "build_loss",
    "IoULoss",
    "GIoULoss",
    "DIoULoss",
    "CIoULoss",
    "EIoULoss",
]

"""detloss: object-detection losses, the box geometry beneath them, and experiments.

Example:
    >>> import torch, detloss
    >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    >>> loss = detloss.CIoULoss()(pred, torch.tensor([[0.0, 0.0, 4.0, 2.0]]))
    >>> loss.backward()
    >>> bool(torch.isfinite(pred.grad).all())
    True
"""

from detloss import boxes, functional, nn, reduction
from detloss._backend import BackendInfo, backend_info, get_backend, set_backend, use_backend
from detloss.errors import DetLossError
from detloss.nn import *  # noqa: F403  (every module class: the list is nn.__all__)
from detloss.registry import LOSSES, available_losses, build_loss

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "BackendInfo",
    "DetLossError",
    "__version__",
    "available_losses",
    "backend_info",
    "boxes",
    "build_loss",
    "functional",
    "get_backend",
    "reduction",
    "set_backend",
    "use_backend",
    *nn.__all__,
]

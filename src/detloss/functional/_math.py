"""Elementwise helpers shared by the losses of :mod:`detloss.functional`."""

from __future__ import annotations

import torch

__all__ = ["finite_pow"]


def finite_pow(base: torch.Tensor, exponent: float, floor: float) -> torch.Tensor:
    """``max(base, 0) ** exponent`` whose gradient is finite for every exponent ``>= 0``.

    An exponent of 0 gives exactly 1 (the factor is dropped). For an exponent in (0, 1) the
    slope ``exponent * base ** (exponent - 1)`` is infinite at 0, so a base below ``floor``
    keeps its exact value (``0 ** exponent = 0``) and gets no gradient; the floor guards the
    gradient only, it never moves the value.

    Example:
        >>> base = torch.tensor([0.0, 0.25], requires_grad=True)
        >>> value = finite_pow(base, 0.5, floor=1e-6)
        >>> value
        tensor([0.0000, 0.5000], grad_fn=<WhereBackward0>)
        >>> value.sum().backward()
        >>> base.grad  # 0 below the floor; 0.5 / sqrt(0.25) = 1
        tensor([0., 1.])
    """
    if exponent == 0:
        return torch.ones_like(base)
    if exponent >= 1:
        return base.clamp(min=0) ** exponent
    exact = base.detach().clamp(min=0) ** exponent
    return torch.where(base < floor, exact, base.clamp(min=floor) ** exponent)

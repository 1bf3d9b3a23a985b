"""Which implementation the losses run: ``detloss.set_backend`` / ``detloss.get_backend``.

- ``"reference"``: the loss composed from :mod:`detloss.boxes` tensor operations, autograd
  differentiates it (the definition; every other backend is tested against it);
- ``"fused"``: :mod:`detloss._fused` autograd Functions, analytic backward, pure torch;
- ``"native"``: the same Functions running the C++ kernel (OpenMP + SIMD), built once on
  first use; CPU tensors only;
- ``"compiled"``: ``torch.compile(dynamic=True)`` of the fused path (Triton on GPU).

The default (``None``, or ``DETLOSS_BACKEND`` unset) is the fastest available: ``"native"``
on CPU when the kernel builds, else ``"reference"`` (op by op on CPU, the fused path's
recomputing backward makes it 1.3-4x slower than autograd: ``detloss bench`` shows it);
``"compiled"`` on GPU. ``"native"`` asked for where it cannot run falls back the same way on
CPU and to ``"fused"`` on other devices; what a backend does not cover runs ``"reference"``.
No fallback raises. The values and gradients agree to float32 rounding across backends.

Example:
    >>> import detloss
    >>> detloss.set_backend("reference")
    >>> detloss.get_backend()
    'reference'
    >>> detloss.set_backend(None)  # back to the default (the env var, else the fastest)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from detloss._checks import check_choice

__all__ = ["BACKENDS", "ENV_VAR", "get_backend", "resolve", "set_backend", "torch_threads"]

BACKENDS: tuple[str, ...] = ("reference", "fused", "native", "compiled")
ENV_VAR = "DETLOSS_BACKEND"
_chosen: str | None = None


def set_backend(name: str | None) -> None:
    """Force one backend for every loss, or ``None`` for the default.

    ``name`` is one of ``"reference"``, ``"fused"``, ``"native"``, ``"compiled"``; it
    overrides the environment variable ``DETLOSS_BACKEND``.
    """
    global _chosen
    if name is not None:
        check_choice("set_backend", "name", name, BACKENDS)
    _chosen = name


def _requested() -> str | None:
    if _chosen is not None:
        return _chosen
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value or value == "auto":
        return None
    check_choice("detloss", ENV_VAR, value, BACKENDS)
    return value


def resolve(device: torch.device | str = "cpu") -> str:
    """The backend a loss on ``device`` runs now (may build the native kernel once)."""
    requested = _requested()
    on_cpu = torch.device(device).type == "cpu"
    if requested in ("reference", "fused", "compiled"):
        return requested
    if on_cpu:
        from detloss._fused import native

        return "native" if native.available() else "reference"
    return "fused" if requested == "native" else "compiled"


def get_backend(device: torch.device | str = "cpu") -> str:
    """The backend that losses on ``device`` (CPU by default) use now.

    The name set by :func:`set_backend`, else ``DETLOSS_BACKEND``, else the fastest
    available, resolved as a call would resolve it (a first call may build the native kernel).
    """
    return resolve(device)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch (and the native kernel's OpenMP loops) on ``n`` threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

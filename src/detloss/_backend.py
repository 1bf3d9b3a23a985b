"""Which implementation the losses run, and the one dispatch that runs it.

Backends:

- ``"reference"``: the loss composed from :mod:`detloss.boxes` tensor operations, autograd
  differentiates it (the definition; every other backend is tested against it);
- ``"native"``: the operators ``torch.ops.detloss.iou_loss`` / ``binary_loss``
  (:mod:`detloss._fused.ops`); on CPU the C++ kernel (OpenMP + SIMD, built once per machine on
  first use) with its autograd in C++, on other devices their pure-torch kernels;
- ``"fused"``: the operators' pure-torch kernels (analytic backward), on any device;
- ``"compiled"``: the same under ``torch.compile(dynamic=True)`` (Triton on GPU).

The choice: :func:`use_backend` (a block) or :func:`set_backend` (from now on), else the
environment variable ``DETLOSS_BACKEND``, else the default. The default is ``"native"`` on CPU
when the kernel builds, else ``"reference"`` (op by op on CPU, the fused path's recomputing
backward makes it 1.3-4x slower than autograd: ``detloss bench`` shows it). On CUDA and every
other device the default is ``"reference"``: ``"fused"`` and ``"compiled"`` run there only when
asked for, until a GPU run shows one correct and faster (``benchmarks/gpu_check.py``).
``"native"`` asked for where its kernel cannot run gives ``"reference"`` on CPU and ``"fused"``
on other devices; what a backend does not cover (other options, dtypes or devices of the two
inputs) runs ``"reference"``. No fallback raises. Values and gradients agree to float32
rounding across backends.

Under ``torch.compile`` the choice is made while tracing: a compiled function keeps the backend
it was traced with, and recompiles when :func:`set_backend` / :func:`use_backend` change it
(not when ``DETLOSS_BACKEND`` changes). The operators are opaque nodes of the graph, so on CPU
the native kernel runs inside it.

Example:
    >>> import detloss
    >>> with detloss.use_backend("reference"):
    ...     detloss.get_backend()
    'reference'
    >>> detloss.backend_info().requested is None  # no set_backend call: env var, else the default
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from detloss._checks import check_choice
from detloss._fused import native, ops
from detloss.boxes import iou

__all__ = [
    "BACKENDS",
    "BINARY_KINDS",
    "ENV_VAR",
    "IOU_KINDS",
    "BackendInfo",
    "backend_info",
    "binary_loss",
    "box_loss",
    "get_backend",
    "pairwise",
    "resolve",
    "set_backend",
    "torch_threads",
    "use_backend",
]

BACKENDS: tuple[str, ...] = ("reference", "fused", "native", "compiled")
ENV_VAR = "DETLOSS_BACKEND"
IOU_KINDS: tuple[str, ...] = iou.IOU_KINDS  # what iou_loss covers: every kind of aligned_iou
BINARY_KINDS: tuple[str, ...] = ("bce", "focal", "quality", "varifocal")  # what binary_loss covers
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


@contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run the block with backend ``name`` (``None``: the default), then restore the previous
    choice, even if the block raises. Process-wide, like :func:`set_backend`.

    Example:
        >>> import torch, detloss
        >>> pred, target = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]])
        >>> with detloss.use_backend("reference"):  # 1 - IoU 1/3 + centre distance 1 / diagonal 13
        ...     detloss.functional.ciou_loss(pred, target)
        tensor(0.7436)
    """
    global _chosen
    if name is not None:
        check_choice("use_backend", "name", name, BACKENDS)
    previous = _chosen
    _chosen = name
    try:
        yield
    finally:
        _chosen = previous


def _environment() -> str | None:
    value = os.environ.get(ENV_VAR)
    if not value:  # the common case, read on every call: nothing more to do
        return None
    value = value.strip().lower()
    if not value or value == "auto":
        return None
    check_choice("detloss", ENV_VAR, value, BACKENDS)
    return value


def _requested(chosen: str | None) -> str | None:
    return chosen if chosen is not None else _environment()


@torch.compiler.assume_constant_result
def _native_loaded() -> bool:
    """Whether the native kernel is loaded (loading or building it on the first call); a
    constant to ``torch.compile``, which calls it while tracing."""
    return native.available()


def resolve(device: torch.device | str = "cpu") -> str:
    """The backend a loss on ``device`` runs now (may build the native kernel once)."""
    requested = _requested(_chosen)  # reading _chosen here lets torch.compile guard on it
    on_cpu = (device if isinstance(device, torch.device) else torch.device(device)).type == "cpu"
    if requested in ("reference", "fused", "compiled"):
        return requested
    if on_cpu:
        return "native" if _native_loaded() else "reference"
    return "fused" if requested == "native" else "reference"


def get_backend(device: torch.device | str = "cpu") -> str:
    """The backend that losses on ``device`` (CPU by default) use now.

    The name given to :func:`use_backend` / :func:`set_backend`, else ``DETLOSS_BACKEND``, else
    the default, resolved as a call would resolve it (a first call may build the native kernel).
    """
    return resolve(device)


@dataclass(frozen=True)
class BackendInfo:
    """What :func:`backend_info` reports."""

    requested: str | None  #: set by :func:`set_backend` / :func:`use_backend` (``None``: not set)
    environment: str | None  #: ``DETLOSS_BACKEND`` (``None``: unset or ``auto``)
    cpu: str  #: the backend a loss on CPU tensors runs now
    cuda: str  #: the backend a loss on CUDA tensors runs now
    native_library: str | None  #: the loaded native kernel, ``None`` if unavailable
    native_failure: str | None  #: why it is unavailable


def backend_info() -> BackendInfo:
    """The backend choice and where it comes from, per device, and the native kernel's state.

    Loads (or builds, once) the native kernel where the choice may use it, as :func:`get_backend`
    does; ``native_library`` is ``None`` where it is unavailable or was not needed.
    """
    needed = native.tried() or _requested(_chosen) in (None, "native")
    library = native.library_path() if needed else None
    return BackendInfo(
        requested=_chosen,
        environment=_environment(),
        cpu=resolve("cpu"),
        cuda=resolve("cuda"),
        native_library=None if library is None else str(library),
        native_failure=native.failure(),
    )


# ---------------------------------------------------------------- the dispatch

_OPERATORS = {op.name: getattr(getattr(torch.ops, ops.NAMESPACE), op.name).default for op in ops.OPERATORS}
_TORCH_PATHS = {op.name: ops.torch_function(op) for op in ops.OPERATORS if op.forward is not None}
_PAIRWISE = getattr(getattr(torch.ops, ops.NAMESPACE), ops.PAIRWISE).default
_compiled: dict[str, Callable[..., Any]] = {}
_compile_failed: set[str] = set()


def compiled(name: str) -> Callable[..., Any]:
    """``torch.compile(dynamic=True, fullgraph=True)`` of operator ``name``'s pure-torch path."""
    if name not in _compiled:
        function = _TORCH_PATHS[name]

        def call(*args: Any) -> Any:
            return function.apply(*args)

        _compiled[name] = torch.compile(call, dynamic=True, fullgraph=True)
    return _compiled[name]


def _run(backend: str, name: str, device: torch.device, args: tuple[Any, ...]) -> Any:
    """Operator ``name`` by ``backend`` (not ``"reference"``) on inputs on ``device``."""
    if backend == "native" or (backend == "fused" and device.type != "cpu"):
        return _OPERATORS[name](*args)  # the dispatcher picks the kernel of the device
    if backend == "compiled" and name not in _compile_failed:
        try:
            return compiled(name)(*args)
        except Exception:  # inductor needs a C++ compiler (CPU) or Triton (GPU): run eager, quietly
            _compile_failed.add(name)
    return _TORCH_PATHS[name].apply(*args)


def _flat_pair(a: torch.Tensor, b: torch.Tensor, last: int) -> tuple[torch.Tensor, torch.Tensor, torch.Size] | None:
    """Broadcast ``a`` and ``b`` to one shape and flatten; ``None`` if dtypes or devices differ."""
    if a.dtype != b.dtype or a.dtype not in (torch.float32, torch.float64) or a.device != b.device:
        return None
    shape = a.shape
    if b.shape != shape:  # the per-call cost of a small loss: no broadcasting where none is needed
        shape = torch.broadcast_shapes(a.shape, b.shape)
        a, b = a.expand(shape), b.expand(shape)
    if a.dim() != (2 if last else 1):
        a, b = (a.reshape(-1, last), b.reshape(-1, last)) if last else (a.reshape(-1), b.reshape(-1))
    return a.contiguous(), b.contiguous(), shape


def box_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    eps: float,
    *,
    alpha_gate: bool = False,
    aspect_grad: str = "exact",
    siou_theta: float = 4.0,
    **unknown: Any,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(1 - similarity, iou)`` by the active backend, or ``None`` for the reference path.

    ``pred`` and ``target`` are checked ``xyxy`` boxes of one floating dtype (float32 or
    wider) that broadcast, as :func:`detloss.boxes.iou.prepare_pair` returns them.
    """
    if unknown or kind not in IOU_KINDS or aspect_grad not in ("exact", "paper"):
        return None
    backend = resolve(pred.device)
    if backend == "reference":
        return None
    flat = _flat_pair(pred, target, 4)
    if flat is None:
        return None
    p, t, shape = flat
    args = (p, t, kind, float(eps), bool(alpha_gate), aspect_grad == "paper", float(siou_theta))
    loss, iou = _run(backend, "iou_loss", pred.device, args)
    if len(shape) == 2:
        return loss, iou
    return loss.reshape(shape[:-1]), iou.reshape(shape[:-1])


def binary_loss(
    x: torch.Tensor, y: torch.Tensor, kind: str, *, alpha: float | None = None, gamma: float = 0.0
) -> torch.Tensor | None:
    """Elementwise ``kind`` loss of logits ``x`` and targets ``y`` (same dtype, broadcasting),
    by the active backend, or ``None`` for the reference path."""
    if kind not in BINARY_KINDS or 0 < gamma < 1:  # exponents in (0, 1): the reference's clamping
        return None
    backend = resolve(x.device)
    if backend == "reference":
        return None
    flat = _flat_pair(x, y, 0)
    if flat is None:
        return None
    xf, yf, shape = flat
    alpha = None if alpha is None else float(alpha)
    out = _run(backend, "binary_loss", x.device, (xf, yf, kind, alpha, float(gamma)))
    return out if len(shape) == 1 else out.reshape(shape)  # type: ignore[no-any-return]


def pairwise(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str, eps: float) -> torch.Tensor | None:
    """``(N, M)`` similarities of checked ``xyxy`` boxes by the native kernel, or ``None`` for the
    reference composition: the kernel runs on CPU under the native backend, float32 or float64,
    where no gradient is needed (the caller decides that)."""
    if kind not in IOU_KINDS or boxes1.dtype != boxes2.dtype or boxes1.dtype not in (torch.float32, torch.float64):
        return None
    if boxes1.device.type != "cpu" or boxes2.device.type != "cpu" or resolve(boxes1.device) != "native":
        return None
    return _PAIRWISE(boxes1, boxes2, kind, float(eps))  # type: ignore[no-any-return]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch (and the native kernel's OpenMP loops) on ``n`` threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

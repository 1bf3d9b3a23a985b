"""The fast path: autograd Functions with analytic backward, the same numbers as the reference.

Each Function's forward saves only its inputs; its backward recomputes the few terms it
needs and writes the exact gradient in one pass (w.r.t. the prediction, and the target when
it requires one). Three implementations of one math (:mod:`detloss._backend` picks):

- ``NativeIoU`` / ``NativeBinary``: the C++ kernel of ``kernels.cpp`` (CPU; built on first use);
- ``TorchIoU`` / ``TorchBinary``: pure torch (:mod:`detloss._fused.torch_impl`), any device;
- the same Torch Functions under ``torch.compile(dynamic=True, fullgraph=True)``.

The IoU family: ``kind`` in ``iou, giou, diou, ciou, eiou, siou`` with CIoU's ``alpha_gate``
and ``aspect_grad="paper"`` variants, both outputs of
:func:`detloss.boxes.iou.box_similarity` (``1 - similarity`` and ``iou``) differentiable.
The binary classification family: ``bce``, ``focal``, ``quality`` (QFL), ``varifocal``.

Callers go through :func:`box_loss` and :func:`binary_loss`, which return ``None`` when the
request is outside what the fast path covers (the caller then runs the reference path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from detloss._fused import native, torch_impl

__all__ = [
    "BINARY_KIND_IDS",
    "IOU_KIND_IDS",
    "NativeBinary",
    "NativeIoU",
    "TorchBinary",
    "TorchIoU",
    "binary_apply",
    "binary_loss",
    "box_loss",
    "iou_apply",
]

IOU_KIND_IDS = {"iou": 0, "giou": 1, "diou": 2, "ciou": 3, "eiou": 4, "siou": 5}
BINARY_KIND_IDS = {"bce": 0, "focal": 1, "quality": 2, "varifocal": 3}
_NO_GRAD = torch.empty(0)


class NativeIoU(torch.autograd.Function):
    """``(1 - similarity, iou)`` of aligned ``(N, 4)`` pairs by the C++ kernel."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, pred: torch.Tensor, target: torch.Tensor, kind: str, eps: float, gate: bool, paper: bool, theta: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(pred, target)
        ctx.options = (kind, eps, gate, paper, theta)
        mod = native.module()
        assert mod is not None  # the dispatcher checked
        loss, iou = mod.iou_forward(pred, target, IOU_KIND_IDS[kind], eps, gate, theta)
        return loss, iou

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor | None, grad_iou: torch.Tensor | None) -> tuple[Any, ...]:
        pred, target = ctx.saved_tensors
        kind, eps, gate, paper, theta = ctx.options
        need_pred, need_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (grad_loss is None and grad_iou is None) or not (need_pred or need_target):
            return (None,) * 7
        mod = native.module()
        assert mod is not None
        dp, dt = mod.iou_backward(
            pred,
            target,
            _NO_GRAD if grad_loss is None else grad_loss.to(pred.dtype),
            _NO_GRAD if grad_iou is None else grad_iou.to(pred.dtype),
            IOU_KIND_IDS[kind],
            eps,
            gate,
            paper,
            theta,
            need_target,
        )
        return dp if need_pred else None, dt if need_target else None, None, None, None, None, None


class TorchIoU(torch.autograd.Function):
    """``(1 - similarity, iou)`` with the analytic backward written in torch (any device)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, pred: torch.Tensor, target: torch.Tensor, kind: str, eps: float, gate: bool, paper: bool, theta: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(pred, target)
        ctx.options = (kind, eps, gate, paper, theta)
        return torch_impl.iou_forward(pred, target, kind, eps, gate, theta)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, grad_iou: torch.Tensor) -> tuple[Any, ...]:
        pred, target = ctx.saved_tensors
        kind, eps, gate, paper, theta = ctx.options
        dp, dt = torch_impl.iou_backward(pred, target, grad_loss, grad_iou, kind, eps, gate, paper, theta)
        return (
            dp if ctx.needs_input_grad[0] else None,
            dt if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
            None,
        )


class NativeBinary(torch.autograd.Function):
    """Elementwise binary classification loss of logits ``x`` and targets ``y`` (C++ kernel)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, y: torch.Tensor, kind: str, alpha: float | None, gamma: float
    ) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        ctx.options = (kind, alpha, gamma)
        mod = native.module()
        assert mod is not None
        return mod.binary_forward(x, y, BINARY_KIND_IDS[kind], _alpha(kind, alpha), alpha is not None, gamma)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, y = ctx.saved_tensors
        kind, alpha, gamma = ctx.options
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_x or need_y):
            return None, None, None, None, None
        mod = native.module()
        assert mod is not None
        g = grad.to(x.dtype).reshape(-1)
        gx, gy = mod.binary_backward(
            x, y, g, BINARY_KIND_IDS[kind], _alpha(kind, alpha), alpha is not None, gamma, need_y
        )
        return gx if need_x else None, gy if need_y else None, None, None, None


class TorchBinary(torch.autograd.Function):
    """Elementwise binary classification loss with the analytic backward in torch."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, y: torch.Tensor, kind: str, alpha: float | None, gamma: float
    ) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        ctx.options = (kind, alpha, gamma)
        return torch_impl.binary_forward(x, y, kind, alpha, gamma)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, y = ctx.saved_tensors
        kind, alpha, gamma = ctx.options
        gx, gy = torch_impl.binary_backward(x, y, grad, kind, alpha, gamma)
        return gx if ctx.needs_input_grad[0] else None, gy if ctx.needs_input_grad[1] else None, None, None, None


def _alpha(kind: str, alpha: float | None) -> float:
    if alpha is None:
        return 0.75 if kind == "varifocal" else 1.0
    return float(alpha)


# ---------------------------------------------------------------- compiled variants

_compiled: dict[str, Callable[..., Any]] = {}
_compile_failed: set[str] = set()


def _torch_iou(pred: torch.Tensor, target: torch.Tensor, kind: str, eps: float, gate: bool, paper: bool, theta: float):  # type: ignore[no-untyped-def]
    return TorchIoU.apply(pred, target, kind, eps, gate, paper, theta)


def _torch_binary(x: torch.Tensor, y: torch.Tensor, kind: str, alpha: float | None, gamma: float):  # type: ignore[no-untyped-def]
    return TorchBinary.apply(x, y, kind, alpha, gamma)


def compiled(name: str) -> Callable[..., Any]:
    """``torch.compile(dynamic=True, fullgraph=True)`` of ``_torch_iou`` or ``_torch_binary``."""
    if name not in _compiled:
        fn: Callable[..., Any] = _torch_iou if name == "iou" else _torch_binary
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[name]


def _run_compiled(name: str, eager: Callable[..., Any], *args: Any) -> Any:
    """Run the compiled variant; if compiling fails (no compiler, no Triton), run eager, quietly."""
    if name not in _compile_failed:
        try:
            return compiled(name)(*args)
        except Exception:  # inductor needs a C++ compiler (CPU) or Triton (GPU)
            _compile_failed.add(name)
    return eager(*args)


# ---------------------------------------------------------------- dispatch


def iou_apply(
    backend: str, pred: torch.Tensor, target: torch.Tensor, kind: str, eps: float, gate: bool, paper: bool, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one backend on ``(N, 4)`` float32/float64 contiguous pairs (no fallback, no checks)."""
    if backend == "native":
        return NativeIoU.apply(pred, target, kind, eps, gate, paper, theta)  # type: ignore[no-any-return]
    if backend == "compiled":
        return _run_compiled("iou", _torch_iou, pred, target, kind, eps, gate, paper, theta)  # type: ignore[no-any-return]
    return TorchIoU.apply(pred, target, kind, eps, gate, paper, theta)  # type: ignore[no-any-return]


def binary_apply(
    backend: str, x: torch.Tensor, y: torch.Tensor, kind: str, alpha: float | None, gamma: float
) -> torch.Tensor:
    """Run one backend on same-shape contiguous float32/float64 logits and targets."""
    if backend == "native":
        return NativeBinary.apply(x, y, kind, alpha, gamma)  # type: ignore[no-any-return]
    if backend == "compiled":
        return _run_compiled("binary", _torch_binary, x, y, kind, alpha, gamma)  # type: ignore[no-any-return]
    return TorchBinary.apply(x, y, kind, alpha, gamma)  # type: ignore[no-any-return]


def _flat_pair(a: torch.Tensor, b: torch.Tensor, last: int) -> tuple[torch.Tensor, torch.Tensor, torch.Size] | None:
    """Broadcast ``a`` and ``b`` to one shape and flatten; ``None`` if dtypes differ."""
    if a.dtype != b.dtype or a.dtype not in (torch.float32, torch.float64) or a.device != b.device:
        return None
    shape = torch.broadcast_shapes(a.shape, b.shape)
    a, b = a.expand(shape), b.expand(shape)
    if last:
        return a.reshape(-1, last).contiguous(), b.reshape(-1, last).contiguous(), shape
    return a.reshape(-1).contiguous(), b.reshape(-1).contiguous(), shape


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
    from detloss._backend import resolve

    if unknown or kind not in IOU_KIND_IDS or aspect_grad not in ("exact", "paper"):
        return None
    backend = resolve(pred.device)
    if backend == "reference":
        return None
    flat = _flat_pair(pred, target, 4)
    if flat is None:
        return None
    p, t, shape = flat
    loss, iou = iou_apply(backend, p, t, kind, float(eps), bool(alpha_gate), aspect_grad == "paper", float(siou_theta))
    return loss.reshape(shape[:-1]), iou.reshape(shape[:-1])


def binary_loss(
    x: torch.Tensor, y: torch.Tensor, kind: str, *, alpha: float | None = None, gamma: float = 0.0
) -> torch.Tensor | None:
    """Elementwise ``kind`` loss of logits ``x`` and targets ``y`` (same dtype, broadcasting),
    by the active backend, or ``None`` for the reference path."""
    from detloss._backend import resolve

    if kind not in BINARY_KIND_IDS or 0 < gamma < 1:  # exponents in (0, 1): the reference's clamping
        return None
    backend = resolve(x.device)
    if backend == "reference":
        return None
    flat = _flat_pair(x, y, 0)
    if flat is None:
        return None
    xf, yf, shape = flat
    return binary_apply(backend, xf, yf, kind, alpha, float(gamma)).reshape(shape)

"""The fast path as PyTorch operators, ``torch.ops.detloss.*``, defined once each.

Every operator takes two tensors, a prediction and a target, then its options, and has a
backward operator ``<name>_backward``: the same two tensors, one upstream gradient per output
(``None`` where absent), the same options and ``target_grad``; it returns the gradients of the
prediction and of the target (an empty tensor when ``target_grad`` is false)::

    iou_loss(Tensor pred, Tensor target, str kind, float eps, bool alpha_gate, bool paper_grad,
             float siou_theta) -> (Tensor loss, Tensor iou)
    binary_loss(Tensor logits, Tensor target, str kind, float? alpha, float gamma) -> Tensor
    rotated_gaussian_loss(Tensor pred, Tensor target, str kind, str fun, float tau, float eps) -> Tensor

``iou_loss`` takes aligned ``(N, 4)`` ``xyxy`` pairs and returns ``1 - similarity`` and the IoU
of :func:`detloss.boxes.iou.box_similarity` (``kind`` in ``iou, giou, diou, ciou, eiou, siou``);
``alpha_gate`` is CIoU's journal gate (aspect term only where IoU >= 0.5), ``paper_grad`` the
CIoU paper's gradient of the aspect term, ``siou_theta`` SIoU's shape exponent; ``binary_loss``
gives the elementwise ``bce``, ``focal``, ``quality`` or ``varifocal`` loss of logits
(``alpha`` ``None``: no class weight, varifocal's 0.75; exponent ``gamma`` 0 or >= 1);
``rotated_gaussian_loss`` takes aligned ``(N, 5)`` ``cxcywha`` pairs (radians) and gives the
elementwise loss of the Gaussian distance ``kind`` (``bhattacharyya``, ``kld``, ``gwd``) of
:func:`detloss.boxes.gaussian_distance`, transformed by ``fun``: ``hellinger``
(``sqrt(1 - e^-d)``, ProbIoU's ``"l1"``), ``none`` (``d``), ``log1p`` or ``sqrt``
(``1 - 1 / (tau + f(d))``, KLD's and GWD's), with sides ``w + eps``; ``kind`` ``kfiou`` gives
:func:`detloss.functional.kfiou_loss` elementwise, ``fun`` its mode (``ln``, ``linear``,
``exp``) and ``tau`` its ``beta``.

Example:
    >>> import torch, detloss
    >>> pred, target = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    >>> torch.ops.detloss.iou_loss(pred, target, "giou", 1e-7, False, False, 4.0)  # IoU 4/8, enclosing = union
    (tensor([0.5000]), tensor([0.5000]))

Each has these implementations, one definition each:

- CPU: the C++ kernels of ``kernels.cpp``, with their autograd in C++ too (``AutogradCPU``), once
  :mod:`detloss._fused.native` has loaded the library; a call on CPU tensors then runs no Python
  between the dispatcher and the loop. ``rotated_gaussian_loss`` has its C++ kernels in
  ``rotated.cpp``, its autograd by the Python rule below, and no other kernels: it exists only
  where the library is loaded (the rotated losses call it on CPU with the native backend; their
  other paths are the reference's own);
- every other device, and CPU where the library is not built: the pure-torch kernels of
  :mod:`detloss._fused.torch_impl` (``CompositeExplicitAutograd``), whose autograd is
  :func:`setup_context` / :func:`backward` below;
- a fake kernel (shapes only), so that ``torch.compile`` and ``torch.export`` trace the operators
  as opaque nodes: the native kernel runs inside a compiled graph.

:func:`torch_function` wraps an operator's pure-torch kernels and the same autograd rule in a
``torch.autograd.Function`` that Dynamo traces into: the ``fused`` backend (the pure-torch
kernels on CPU too) and, compiled, the ``compiled`` backend (inductor fuses them).

Adding an operator (e.g. a rotated-box loss):

1. write its forward and backward in torch, following the two-input rule above;
2. add an :class:`Operator` to :data:`OPERATORS` (the two schemas, the two torch kernels, the
   two fake kernels): it is defined, registered, given autograd and ``torch_function`` here;
3. for a CPU kernel, write the two C++ functions in ``kernels.cpp`` and add one ``m.impl`` line
   to each of its two ``TORCH_LIBRARY_IMPL`` blocks (the autograd block reuses ``pair_autograd``);
4. add its samples to ``opcheck_samples()`` in ``tests/_fused/test_ops.py``, and its call site to the
   dispatch (:mod:`detloss._backend`: an entry point like ``box_loss`` that returns ``None``
   for what the operator does not cover).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from detloss._fused import torch_impl
from detloss.boxes.iou import box_similarity

__all__ = [
    "NAMESPACE",
    "OPERATORS",
    "PAIRWISE",
    "PAIRWISE_SCHEMA",
    "PAIRWISE_ROTATED",
    "PAIRWISE_ROTATED_SCHEMA",
    "ROTATED_IOU",
    "ROTATED_IOU_OPERATORS",
    "ROTATED_OPERATORS",
    "Operator",
    "backward",
    "setup_context",
    "torch_function",
]

NAMESPACE = "detloss"
Tensor = torch.Tensor


@dataclass(frozen=True)
class Operator:
    """One operator: its name, the arguments and returns of it and of ``<name>_backward``, and
    their pure-torch and fake kernels."""

    name: str
    schema: str
    backward_schema: str
    forward: Callable[..., Any] | None  # None: no pure-torch kernels (native CPU kernels only)
    backward: Callable[..., Any] | None
    fake: Callable[..., Any]
    fake_backward: Callable[..., Any]


# ---------------------------------------------------------------- IoU family


def _iou_loss(
    pred: Tensor, target: Tensor, kind: str, eps: float, alpha_gate: bool, paper_grad: bool, siou_theta: float
) -> tuple[Tensor, Tensor]:
    return torch_impl.iou_forward(pred, target, kind, eps, alpha_gate, siou_theta)


def _iou_loss_backward(
    pred: Tensor,
    target: Tensor,
    grad_loss: Tensor | None,
    grad_iou: Tensor | None,
    kind: str,
    eps: float,
    alpha_gate: bool,
    paper_grad: bool,
    siou_theta: float,
    target_grad: bool,
) -> tuple[Tensor, Tensor]:
    dp, dt = torch_impl.iou_backward(pred, target, grad_loss, grad_iou, kind, eps, alpha_gate, paper_grad, siou_theta)
    return dp.contiguous(), dt.contiguous() if target_grad else pred.new_empty(0)


def _check_pairs(pred: Tensor, target: Tensor) -> None:
    torch._check(pred.dim() == 2 and pred.shape[1] == 4, lambda: "detloss::iou_loss: pred of shape (N, 4)")
    torch._check(target.shape == pred.shape, lambda: "detloss::iou_loss: target of pred's shape")


def _iou_loss_fake(pred: Tensor, target: Tensor, *options: Any) -> tuple[Tensor, Tensor]:
    _check_pairs(pred, target)
    return pred.new_empty(pred.shape[:1]), pred.new_empty(pred.shape[:1])


def _iou_loss_backward_fake(pred: Tensor, target: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    _check_pairs(pred, target)
    return torch.empty_like(pred), torch.empty_like(target) if args[-1] else pred.new_empty(0)


# ---------------------------------------------------------------- binary classification family


def _check_gamma(gamma: float) -> None:
    if not (gamma == 0 or gamma >= 1):  # a constant while tracing
        raise RuntimeError(f"detloss::binary_loss: gamma must be 0 or >= 1, got {gamma}")


def _binary_loss(logits: Tensor, target: Tensor, kind: str, alpha: float | None, gamma: float) -> Tensor:
    _check_gamma(gamma)
    return torch_impl.binary_forward(logits, target, kind, alpha, gamma)


def _binary_loss_backward(
    logits: Tensor, target: Tensor, grad: Tensor, kind: str, alpha: float | None, gamma: float, target_grad: bool
) -> tuple[Tensor, Tensor]:
    _check_gamma(gamma)
    gx, gy = torch_impl.binary_backward(logits, target, grad, kind, alpha, gamma)
    return gx.contiguous(), gy.contiguous() if target_grad else logits.new_empty(0)


def _binary_loss_fake(logits: Tensor, target: Tensor, *options: Any) -> Tensor:
    torch._check(target.shape == logits.shape, lambda: "detloss::binary_loss: target of logits' shape")
    return torch.empty_like(logits)


def _binary_loss_backward_fake(logits: Tensor, target: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    return torch.empty_like(logits), torch.empty_like(target) if args[-1] else logits.new_empty(0)


OPERATORS: tuple[Operator, ...] = (
    Operator(
        name="iou_loss",
        schema="(Tensor pred, Tensor target, str kind, float eps, bool alpha_gate, bool paper_grad, "
        "float siou_theta) -> (Tensor, Tensor)",
        backward_schema="(Tensor pred, Tensor target, Tensor? grad_loss, Tensor? grad_iou, str kind, float eps, "
        "bool alpha_gate, bool paper_grad, float siou_theta, bool target_grad) -> (Tensor, Tensor)",
        forward=_iou_loss,
        backward=_iou_loss_backward,
        fake=_iou_loss_fake,
        fake_backward=_iou_loss_backward_fake,
    ),
    Operator(
        name="binary_loss",
        schema="(Tensor logits, Tensor target, str kind, float? alpha, float gamma) -> Tensor",
        backward_schema="(Tensor logits, Tensor target, Tensor grad, str kind, float? alpha, float gamma, "
        "bool target_grad) -> (Tensor, Tensor)",
        forward=_binary_loss,
        backward=_binary_loss_backward,
        fake=_binary_loss_fake,
        fake_backward=_binary_loss_backward_fake,
    ),
)


# ---------------------------------------------------------------- rotated boxes: Gaussian losses


def _check_rotated_pairs(pred: Tensor, target: Tensor) -> None:
    torch._check(pred.dim() == 2 and pred.shape[1] == 5, lambda: "detloss::rotated_gaussian_loss: pred of shape (N, 5)")
    torch._check(target.shape == pred.shape, lambda: "detloss::rotated_gaussian_loss: target of pred's shape")


def _rotated_gaussian_loss_fake(pred: Tensor, target: Tensor, *options: Any) -> Tensor:
    _check_rotated_pairs(pred, target)
    return pred.new_empty(pred.shape[:1])


def _rotated_gaussian_loss_backward_fake(pred: Tensor, target: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    _check_rotated_pairs(pred, target)
    return torch.empty_like(pred), torch.empty_like(target) if args[-1] else pred.new_empty(0)


ROTATED_OPERATORS: tuple[Operator, ...] = (
    Operator(
        name="rotated_gaussian_loss",
        schema="(Tensor pred, Tensor target, str kind, str fun, float tau, float eps) -> Tensor",
        backward_schema="(Tensor pred, Tensor target, Tensor? grad, str kind, str fun, float tau, float eps, "
        "bool target_grad) -> (Tensor, Tensor)",
        forward=None,
        backward=None,
        fake=_rotated_gaussian_loss_fake,
        fake_backward=_rotated_gaussian_loss_backward_fake,
    ),
)
OPERATORS = (*OPERATORS, *ROTATED_OPERATORS)


# ---------------------------------------------------------------- all-pairs similarity (no autograd)

PAIRWISE = "pairwise_similarity"
PAIRWISE_SCHEMA = "(Tensor boxes1, Tensor boxes2, str kind, float eps) -> Tensor"
"""``pairwise_similarity(boxes1 (N, 4), boxes2 (M, 4), kind, eps) -> (N, M)``: the similarity
of :func:`detloss.boxes.iou.box_similarity` of every pair of ``xyxy`` boxes (SIoU with its
default shape exponent 4). No autograd: :func:`detloss.boxes.pairwise_iou` calls it where no
gradient is needed; its CPU kernel is ``pairwise.cpp``."""


def _pairwise_similarity(boxes1: Tensor, boxes2: Tensor, kind: str, eps: float) -> Tensor:
    return box_similarity(boxes1[:, None, :], boxes2[None, :, :], kind, eps)[0]


def _pairwise_similarity_fake(boxes1: Tensor, boxes2: Tensor, kind: str, eps: float) -> Tensor:
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


# ---------------------------------------------------------------- the autograd rule, for every operator


def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    """Save the prediction and the target (nothing computed), and the options."""
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.options = inputs[2:]


def backward(ctx: Any, grads: tuple[Tensor | None, ...], backward_kernel: Callable[..., Any]) -> tuple[Any, ...]:
    """The gradients of the prediction and the target by ``backward_kernel`` (the backward
    operator, or its pure-torch kernel), ``None`` for the options."""
    none = (None,) * len(ctx.options)
    need_pred, need_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if all(g is None for g in grads) or not (need_pred or need_target):
        return (None, None, *none)
    pred, target = ctx.saved_tensors
    grad_pred, grad_target = backward_kernel(pred, target, *grads, *ctx.options, need_target)
    return (grad_pred if need_pred else None, grad_target if need_target else None, *none)


def torch_function(op: Operator) -> type[torch.autograd.Function]:
    """``op``'s pure-torch kernels under its autograd rule, as a Function Dynamo traces into
    (named ``IouLossTorchPath`` for ``iou_loss``: autograd shows ``IouLossTorchPathBackward``)."""

    if op.forward is None or op.backward is None:
        raise ValueError(f"{op.name} has no pure-torch kernels")
    forward_kernel = op.forward
    backward_kernel = op.backward  # a plain function: Dynamo traces closures over functions, not over an Operator

    def function_backward(ctx: Any, *grads: Any) -> Any:
        return backward(ctx, grads, backward_kernel)

    name = "".join(word.title() for word in op.name.split("_")) + "TorchPath"
    members = {
        "forward": staticmethod(forward_kernel),  # its own signature: Dynamo binds the arguments to it
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(function_backward),
        "__module__": __name__,
        "__doc__": f"``torch.ops.detloss.{op.name}`` by its pure-torch kernels.",
    }
    return type(name, (torch.autograd.Function,), members)


def _register() -> torch.library.Library:
    lib = torch.library.Library(NAMESPACE, "DEF")
    for op in OPERATORS:
        _define(lib, op)
    lib.define(PAIRWISE + PAIRWISE_SCHEMA)
    lib.impl(PAIRWISE, _pairwise_similarity, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{PAIRWISE}", _pairwise_similarity_fake, lib=lib)
    return lib


def _define(lib: torch.library.Library, op: Operator) -> None:
    """Define ``op`` and its backward in ``lib``, with their kernels, fake kernels and autograd."""
    backward_name = op.name + "_backward"
    lib.define(op.name + op.schema)
    lib.define(backward_name + op.backward_schema)
    if op.forward is not None and op.backward is not None:
        lib.impl(op.name, op.forward, "CompositeExplicitAutograd")
        lib.impl(backward_name, op.backward, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{op.name}", op.fake, lib=lib)
    torch.library.register_fake(f"{NAMESPACE}::{backward_name}", op.fake_backward, lib=lib)
    backward_op = getattr(getattr(torch.ops, NAMESPACE), backward_name).default

    def autograd_backward(ctx: Any, *grads: Any, _op: Any = backward_op) -> Any:
        return backward(ctx, grads, _op)

    torch.library.register_autograd(f"{NAMESPACE}::{op.name}", autograd_backward, setup_context=setup_context, lib=lib)
    if op.forward is None:  # native only: the backward has no derivative, and says so
        torch.library.register_autograd(
            f"{NAMESPACE}::{backward_name}",
            functools.partial(_no_second_derivative, backward_name),
            setup_context=lambda ctx, inputs, output: None,
            lib=lib,
        )


def _no_second_derivative(name: str, ctx: Any, *grads: Any) -> Any:
    raise RuntimeError(f"derivative for {NAMESPACE}::{name} is not implemented (the reference path has one)")


_LIBRARY = _register()


# ---------------------------------------------------------------- rotated boxes: exact IoU / GIoU (rotated_iou.cpp)

ROTATED_IOU = "rotated_box_iou"
"""``rotated_box_iou(pred (N, 5), target (N, 5), kind, eps) -> (similarity, iou)``: the IoU
(``kind="iou"``) or GIoU (``"giou"``) of aligned ``cxcywha`` pairs (radians) and their IoU, as
:func:`detloss.boxes.rotated.rotated_box_similarity` returns them; its backward is
``rotated_box_iou_backward(pred, target, grad_similarity?, grad_iou?, kind, eps, target_grad)``.
C++ kernels only (``rotated_iou.cpp``): it exists where the native library is loaded."""
PAIRWISE_ROTATED = "pairwise_rotated_iou"
PAIRWISE_ROTATED_SCHEMA = "(Tensor boxes1, Tensor boxes2, str kind, float eps) -> Tensor"
"""``pairwise_rotated_iou(boxes1 (N, 5), boxes2 (M, 5), kind, eps) -> (N, M)``: the similarity of
every pair of ``cxcywha`` boxes, no autograd (:func:`detloss.boxes.pairwise_rotated_iou` and
:func:`detloss.boxes.rotated_nms` call it where no gradient is needed); C++ kernel only."""


def _check_rotated_iou_pairs(pred: Tensor, target: Tensor) -> None:
    torch._check(pred.dim() == 2 and pred.shape[1] == 5, lambda: "detloss::rotated_box_iou: pred of shape (N, 5)")
    torch._check(target.shape == pred.shape, lambda: "detloss::rotated_box_iou: target of pred's shape")


def _rotated_box_iou_fake(pred: Tensor, target: Tensor, *options: Any) -> tuple[Tensor, Tensor]:
    _check_rotated_iou_pairs(pred, target)
    return pred.new_empty(pred.shape[:1]), pred.new_empty(pred.shape[:1])


def _rotated_box_iou_backward_fake(pred: Tensor, target: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    _check_rotated_iou_pairs(pred, target)
    return torch.empty_like(pred), torch.empty_like(target) if args[-1] else pred.new_empty(0)


def _pairwise_rotated_fake(boxes1: Tensor, boxes2: Tensor, kind: str, eps: float) -> Tensor:
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


ROTATED_IOU_OPERATORS: tuple[Operator, ...] = (
    Operator(
        name=ROTATED_IOU,
        schema="(Tensor pred, Tensor target, str kind, float eps) -> (Tensor, Tensor)",
        backward_schema="(Tensor pred, Tensor target, Tensor? grad_similarity, Tensor? grad_iou, str kind, "
        "float eps, bool target_grad) -> (Tensor, Tensor)",
        forward=None,
        backward=None,
        fake=_rotated_box_iou_fake,
        fake_backward=_rotated_box_iou_backward_fake,
    ),
)
OPERATORS = (*OPERATORS, *ROTATED_IOU_OPERATORS)


def _register_rotated_iou() -> torch.library.Library:
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    for op in ROTATED_IOU_OPERATORS:
        _define(lib, op)
    lib.define(PAIRWISE_ROTATED + PAIRWISE_ROTATED_SCHEMA)
    torch.library.register_fake(f"{NAMESPACE}::{PAIRWISE_ROTATED}", _pairwise_rotated_fake, lib=lib)
    return lib


_ROTATED_IOU_LIBRARY = _register_rotated_iou()


# ---------------------------------------------------------------- the DIoU paper's simulation (no autograd)

REGRESS = "regress_boxes"
REGRESS_SCHEMA = "(Tensor anchors, Tensor targets, Tensor rates, str loss, str gradient) -> (Tensor, Tensor)"
"""``regress_boxes(anchors (N, 4), targets (N, 4), rates (T,), loss, gradient) -> (boxes (N, 4),
curve (T + 1,))``: the ``T`` steps ``B_t = B_{t-1} + rates[t - 1] (2 - IoU) D`` of
:func:`detloss.experiments.simulation.regress` from ``cxcywh`` anchors, with ``D`` of
``gradient`` (``"exact"`` or ``"paper"``) for ``loss``; the final boxes and the float64 curve
``E(0..T)``. Its pure-torch kernel is that loop; its CPU kernel, ``simulate.cpp``, runs every step
in one call with the same numbers (float64: to the last bit)."""


def _regress_boxes(anchors: Tensor, targets: Tensor, rates: Tensor, loss: str, gradient: str) -> tuple[Tensor, Tensor]:
    from detloss.experiments import simulation  # the loop lives with the simulation

    return simulation.regress_at(anchors, targets, simulation.make_direction(loss, gradient), rates.tolist())


def _regress_boxes_fake(
    anchors: Tensor, targets: Tensor, rates: Tensor, loss: str, gradient: str
) -> tuple[Tensor, Tensor]:
    torch._check(
        anchors.dim() == 2 and anchors.shape[1] == 4, lambda: "detloss::regress_boxes: anchors of shape (N, 4)"
    )
    torch._check(targets.shape == anchors.shape, lambda: "detloss::regress_boxes: targets of anchors' shape")
    return torch.empty_like(anchors), anchors.new_empty((rates.shape[0] + 1,), dtype=torch.float64)


__all__ += ["REGRESS", "REGRESS_SCHEMA"]
_LIBRARY.define(REGRESS + REGRESS_SCHEMA)
_LIBRARY.impl(REGRESS, _regress_boxes, "CompositeExplicitAutograd")
torch.library.register_fake(f"{NAMESPACE}::{REGRESS}", _regress_boxes_fake, lib=_LIBRARY)

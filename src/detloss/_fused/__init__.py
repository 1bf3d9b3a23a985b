"""The fast path: analytic-gradient kernels for the IoU family and the binary classification family.

- :mod:`detloss._fused.ops`: the operators ``torch.ops.detloss.iou_loss`` / ``binary_loss`` and
  their ``_backward`` operators (schemas, pure-torch and fake kernels, autograd), and the
  ``torch.autograd.Function`` of their pure-torch kernels;
- :mod:`detloss._fused.torch_impl`: the pure-torch forward and analytic backward;
- ``kernels.h``: the same math per element and the single-thread loops over blocks of elements
  (SIMD, plain C++); ``kernels.cpp``: those loops split across OpenMP threads as the operators'
  CPU kernels, and their CPU autograd; built and loaded (with any other source of
  ``native.SOURCES``) by :mod:`detloss._fused.native`.

Each forward saves only its inputs; each backward recomputes the few terms it needs and writes
the exact gradient in one pass (w.r.t. the prediction, and the target when it requires one).
Which of them a loss runs is decided in one place, :mod:`detloss._backend`; nothing here reads
that choice.
"""

from detloss._fused import native, ops, torch_impl

__all__ = ["native", "ops", "torch_impl"]

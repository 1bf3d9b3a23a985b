"""The fast path as operators (torch.ops.detloss.*): registration, tracing, torch.compile.

- torch.library.opcheck of every operator (schema, fake kernel, autograd registration, AOT
  dispatch with dynamic shapes), with the native kernel loaded and, in a fresh process,
  without it (the operators' pure-torch kernels and Python autograd on CPU);
- a model step with a CIoU box loss and a focal class loss under torch.compile(fullgraph=True):
  no graph break, the eager values and gradients, one compilation for three box counts, and
  the native kernel running inside the compiled graph;
- every registered loss traced by Dynamo without a graph break.

Values and gradients of each backend against the reference are in test_fused.py and
test_contract.py. No timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import detloss
from detloss import available_losses
from detloss import functional as F
from detloss.registry import get_spec
from detloss.testing import random_boxes, sample_inputs

OPS = torch.ops.detloss
SRC = Path(detloss.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    detloss.set_backend(None)


def need_native() -> None:
    with detloss.use_backend("native"):  # loads it (or builds it, once)
        info = detloss.backend_info()
    if info.native_library is None:
        pytest.skip(f"native kernel unavailable: {info.native_failure}")


def pairs(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = random_boxes(n, generator=g)
    pred = target + (torch.rand(target.shape, generator=g, dtype=torch.float64) - 0.5) * 3
    pred = torch.cat((torch.minimum(pred[:, :2], pred[:, 2:]), torch.maximum(pred[:, :2], pred[:, 2:])), dim=-1)
    return pred.to(dtype), target.to(dtype)


def logits(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) * 3
    y = torch.rand(n, 3, generator=g, dtype=torch.float64)
    y[::2] = (y[::2] > 0.7).double()
    return x.to(dtype), y.to(dtype)


def opcheck_samples() -> list[tuple[str, tuple[object, ...]]]:
    """(operator name, arguments): every operator, both dtypes, target with and without grad."""
    samples: list[tuple[str, tuple[object, ...]]] = []
    for dtype in (torch.float32, torch.float64):
        p, t = pairs(7, dtype)
        x, y = logits(5, dtype)
        grad = torch.rand(7, dtype=dtype)
        for kind, gate, paper, theta in (("ciou", True, True, 4.0), ("siou", False, False, 2.5), ("giou", 0, 0, 4.0)):
            options = (kind, 1e-7, bool(gate), bool(paper), theta)
            samples.append(("iou_loss", (p.clone().requires_grad_(True), t.clone().requires_grad_(True), *options)))
            samples.append(("iou_loss", (p.clone().requires_grad_(True), t, *options)))
            samples.append(("iou_loss_backward", (p, t, grad, None, *options, True)))
            samples.append(("iou_loss_backward", (p, t, None, grad.expand(7), *options, False)))
        for kind, alpha, gamma in (
            ("focal", 0.25, 2.0),
            ("quality", None, 1.0),
            ("varifocal", 0.75, 2.0),
            ("bce", None, 0),
        ):
            options = (kind, alpha, float(gamma))
            samples.append(("binary_loss", (x.clone().requires_grad_(True), y.clone().requires_grad_(True), *options)))
            samples.append(("binary_loss", (x.clone().requires_grad_(True), y, *options)))
            samples.append(("binary_loss_backward", (x, y, torch.rand_like(x), *options, kind != "quality")))
        for kind in ("iou", "ciou", "siou"):  # no autograd: inputs without gradient, as pairwise_iou calls it
            samples.append(("pairwise_similarity", (p, t[:3], kind, 1e-7)))
    return samples


SAMPLES = opcheck_samples()


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=[f"{n}-{i}" for i, (n, _) in enumerate(SAMPLES)])
def test_opcheck_every_operator(index: int) -> None:
    """Schema, fake kernel, autograd registration and AOT dispatch, on the kernels CPU runs here."""
    name, args = SAMPLES[index]
    torch.library.opcheck(getattr(OPS, name).default, args)


def test_operators_use_the_native_kernel_on_cpu_and_torch_elsewhere() -> None:
    """The dispatcher's table: C++ kernel and C++ autograd for CPU; the pure-torch kernel and
    Python autograd for every other device; a fake kernel for tracing."""
    need_native()
    table = torch._C._dispatch_dump_table("detloss::iou_loss")
    rows = dict(line.split(": ", 1) for line in table.splitlines() if ": " in line)
    assert "kernels.cpp" in rows["CPU"] and "kernels.cpp" in rows["AutogradCPU"]
    assert "ops.py" in rows["CUDA"] and "ops.py" in rows["AutogradCUDA"] and "ops.py" in rows["Meta"]


def test_operator_outputs_on_the_meta_device() -> None:
    """The fake kernels give the outputs' shapes without data (what tracing sees)."""
    p, t = torch.empty(11, 4, device="meta"), torch.empty(11, 4, device="meta")
    loss, iou = OPS.iou_loss(p, t, "ciou", 1e-7, False, False, 4.0)
    assert loss.shape == iou.shape == (11,) and loss.device.type == "meta"
    dp, dt = OPS.iou_loss_backward(p, t, None, torch.empty(11, device="meta"), "ciou", 1e-7, False, False, 4.0, False)
    assert dp.shape == (11, 4) and dt.shape == (0,)
    out = OPS.binary_loss(torch.empty(3, 5, device="meta"), torch.empty(3, 5, device="meta"), "focal", 0.25, 2.0)
    assert out.shape == (3, 5)
    with pytest.raises(RuntimeError, match="shape"):
        OPS.iou_loss(
            torch.empty(11, 3, device="meta"), torch.empty(11, 3, device="meta"), "iou", 1e-7, False, False, 4.0
        )


def test_operators_reject_bad_arguments_naming_themselves() -> None:
    need_native()
    p, t = pairs(3, torch.float32)
    with pytest.raises(RuntimeError, match=r"detloss::iou_loss.*kind"):
        OPS.iou_loss(p, t, "wiou", 1e-7, False, False, 4.0)
    with pytest.raises(RuntimeError, match=r"detloss::iou_loss.*\(N, 4\)"):
        OPS.iou_loss(p[:, :3], t[:, :3], "iou", 1e-7, False, False, 4.0)
    x, y = logits(3, torch.float32)
    with pytest.raises(RuntimeError, match=r"detloss::binary_loss.*gamma"):
        OPS.binary_loss(x, y, "focal", 0.25, 0.5)


def test_operators_accept_any_layout_of_their_inputs() -> None:
    """Non-contiguous inputs and upstream gradients of any stride give the contiguous results."""
    p, t = pairs(40, torch.float64)
    wide_p, wide_t = torch.cat((p, p), 1)[:, 4:], torch.cat((t, t), 1)[:, :4]  # stride 8
    assert not wide_p.is_contiguous()
    strided = OPS.iou_loss(wide_p, wide_t, "diou", 1e-7, False, False, 4.0)
    torch.testing.assert_close(strided, OPS.iou_loss(p, t, "diou", 1e-7, False, False, 4.0), rtol=0, atol=0)
    x, y = logits(6, torch.float64)
    torch.testing.assert_close(
        OPS.binary_loss(x.t(), y.t(), "focal", 0.25, 2.0),
        OPS.binary_loss(x.t().contiguous(), y.t().contiguous(), "focal", 0.25, 2.0),
        rtol=0,
        atol=0,
    )
    grad = torch.rand(80, dtype=torch.float64)[::2]
    dp, dt = OPS.iou_loss_backward(wide_p, wide_t, grad, None, "diou", 1e-7, False, False, 4.0, True)
    dp2, dt2 = OPS.iou_loss_backward(p, t, grad.contiguous(), None, "diou", 1e-7, False, False, 4.0, True)
    torch.testing.assert_close(dp, dp2, rtol=0, atol=0)
    torch.testing.assert_close(dt, dt2, rtol=0, atol=0)


# ---------------------------------------------------------------- without the native kernel

NO_KERNEL_SCRIPT = textwrap.dedent(
    """
    import json, torch, detloss
    from detloss.testing import random_boxes
    info = detloss.backend_info()
    out = {"cpu": info.cpu, "failure": info.native_failure, "library": info.native_library}
    with detloss.use_backend("native"):
        out["native_asked"] = detloss.get_backend()
    g = torch.Generator().manual_seed(0)
    t = random_boxes(9, generator=g)
    p = (t + torch.rand(t.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    x = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    y = torch.rand(4, 3, generator=g, dtype=torch.float64)
    ops = torch.ops.detloss
    for op, args in (
        (ops.iou_loss.default, (p, t, "ciou", 1e-7, False, False, 4.0)),
        (ops.iou_loss_backward.default, (p.detach(), t, torch.rand(9, dtype=torch.float64), None,
                                          "siou", 1e-7, False, False, 3.0, True)),
        (ops.binary_loss.default, (x, y, "focal", 0.25, 2.0)),
        (ops.binary_loss_backward.default, (x.detach(), y, torch.rand(4, 3, dtype=torch.float64), "varifocal",
                                             0.75, 2.0, True)),
    ):
        torch.library.opcheck(op, args)
    errors = {}
    with detloss.use_backend("reference"):
        for name, op_call, reference_call, leaf in (
            ("ciou", lambda: ops.iou_loss(p, t, "ciou", 1e-7, False, False, 4.0)[0],
             lambda: detloss.functional.ciou_loss(p, t, reduction="none"), p),
            ("focal", lambda: ops.binary_loss(x, y, "focal", 0.25, 2.0),
             lambda: detloss.functional.sigmoid_focal_loss(x, y, reduction="none"), x),
        ):
            (value, grad), (ref, ref_grad) = [
                (v.detach(), torch.autograd.grad((v * v.detach()).sum(), [leaf])[0])
                for v in (op_call(), reference_call())
            ]
            errors[name] = float((value - ref).abs().max()) + float((grad - ref_grad).abs().max())
    out["errors"] = errors
    print(json.dumps(out))
    """
)


def test_operators_without_the_native_kernel_run_their_torch_kernels() -> None:
    """Where the kernel cannot be built (here: no compiler), the operators still work on CPU by
    their pure-torch kernels and Python autograd (opcheck passes, values and gradients are the
    reference's), and the losses' default on CPU is the reference path."""
    env = {**os.environ, "CXX": "no-such-compiler-here", "PYTHONPATH": str(SRC), "DETLOSS_BACKEND": ""}
    result = subprocess.run(
        [sys.executable, "-c", NO_KERNEL_SCRIPT], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["library"] is None and "no-such-compiler-here" in out["failure"]
    assert out["cpu"] == "reference"  # faster on CPU than the pure-torch kernels op by op
    assert out["native_asked"] == "reference"  # asked for where it cannot run: no error
    assert all(error < 1e-12 for error in out["errors"].values()), out["errors"]


# ---------------------------------------------------------------- torch.compile


class Head(torch.nn.Module):
    """A tiny detection head: boxes (cx, cy, w, h) and class logits per anchor."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4 + classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return torch.cat((out[:, :2], out[:, 2:4].exp()), dim=-1), out[:, 4:]


def batch(n: int, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    features = torch.randn(n, 8, generator=g)
    boxes = torch.cat((torch.randn(n, 2, generator=g), torch.rand(n, 2, generator=g) + 0.5), dim=-1)
    labels = (torch.rand(n, classes, generator=g) < 0.2).float()
    return features, boxes, labels


def make_step(model: Head):
    def step(features: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred, scores = model(features)
        return F.ciou_loss(pred, boxes, box_format="cxcywh") + F.sigmoid_focal_loss(scores, labels)

    return step


def test_model_step_traces_without_graph_break() -> None:
    torch.manual_seed(0)
    explained = torch._dynamo.explain(make_step(Head()))(*batch(10))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_compiled_model_step_equals_eager_with_the_native_kernel_inside() -> None:
    """fullgraph=True, dynamic=True, inductor: eager-equal loss and gradients for three box
    counts, one compiled entry for all three, and on CPU the native kernel runs as an opaque
    node of the graph (the operators appear in the profile; the torch kernels' arctangents,
    which would show as aten::atan2 calls, do not)."""
    need_native()
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Head()
    step = make_step(model)
    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for n in (5, 9, 14):
        results = []
        for fn in (step, compiled):
            model.zero_grad()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                loss = fn(*batch(n))
                loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        names = {event.name for event in profile.events()}
        assert {"detloss::iou_loss", "detloss::iou_loss_backward", "detloss::binary_loss"} <= names
        assert "detloss::binary_loss_backward" in names and "aten::atan2" not in names
        (eager_loss, eager_grads), (loss, grads) = results
        torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
        for grad, eager in zip(grads, eager_grads):
            torch.testing.assert_close(grad, eager, rtol=1e-4, atol=1e-6)
    entries = torch._dynamo.eval_frame._debug_get_cache_entry_list(step.__code__)
    assert len(entries) == 1  # no recompilation when the number of boxes changes


def test_changing_the_backend_recompiles() -> None:
    """A compiled function keeps the backend it was traced with until set_backend / use_backend
    change it: then it is traced again (a guard on the choice)."""
    torch._dynamo.reset()
    p, t = pairs(6, torch.float32)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.diou_loss(a, b)

    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    with detloss.use_backend("reference"):
        reference = compiled(p, t)
    with detloss.use_backend("fused"):
        fused = compiled(p, t)
    torch.testing.assert_close(fused, reference)
    assert len(torch._dynamo.eval_frame._debug_get_cache_entry_list(loss.__code__)) == 2


def test_export_traces_the_operators() -> None:
    """torch.export sees the operator as one node (the fake kernel gives its shapes)."""
    need_native()

    class Loss(torch.nn.Module):
        def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.ciou_loss(pred, target)

    p, t = pairs(8, torch.float32)
    program = torch.export.export(Loss(), (p, t))
    targets = {str(node.target) for node in program.graph.nodes}
    assert "detloss.iou_loss.default" in targets
    torch.testing.assert_close(program.module()(p, t), F.ciou_loss(p, t))


def compiled_node(out: torch.Tensor) -> bool:
    """Whether ``out`` hangs from a compiled graph's autograd node (not an eager fallback)."""
    node = out.grad_fn
    while node is not None and node.name() == "ViewBackward0":
        node = node.next_functions[0][0]
    return node is not None and "CompiledFunction" in node.name()


def test_compiled_backend_equals_eager_for_two_sizes() -> None:
    """The "compiled" backend (inductor over the pure-torch path) against the fused path."""
    torch._dynamo.reset()
    p, t = pairs(40, torch.float32)
    x, y = logits(16, torch.float32)
    for n in (40, 33):
        grads = []
        for backend in ("fused", "compiled"):
            a = p[:n].clone().requires_grad_(True)
            with detloss.use_backend(backend):
                value = F.ciou_loss(a, t[:n], reduction="none")
            assert compiled_node(value) == (backend == "compiled")
            (value * torch.linspace(0, 1, n)).sum().backward()
            grads.append((value.detach(), a.grad))
        torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-6)
    values = []
    for backend in ("fused", "compiled"):
        xs = x.clone().requires_grad_(True)
        with detloss.use_backend(backend):
            value = F.sigmoid_focal_loss(xs, y, reduction="none")
        assert compiled_node(value) == (backend == "compiled")
        value = value.sum()
        value.backward()
        values.append((value.detach(), xs.grad))
    torch.testing.assert_close(values[1][0], values[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values[1][1], values[0][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", available_losses())
def test_every_loss_traces_without_graph_break(key: str) -> None:
    """Dynamo captures each registered loss in one graph (what fullgraph=True needs)."""
    spec = get_spec(key)
    inputs = sample_inputs(key, 6)

    def loss(*args: torch.Tensor) -> torch.Tensor:
        return spec.function(*args, **dict(spec.call_options))

    explained = torch._dynamo.explain(loss)(*inputs)
    assert explained.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explained.break_reasons]


def test_double_backward_raises_on_the_native_kernel_and_works_on_the_torch_path() -> None:
    """The native backward is differentiable once (a clear error beyond); the pure-torch path's
    backward is torch code, so a second derivative exists and is the reference's."""
    need_native()
    p, t = pairs(5, torch.float64)
    p.requires_grad_(True)
    x, y = logits(4, torch.float64)
    x.requires_grad_(True)
    for leaf, loss, op in (
        (p, lambda: F.giou_loss(p, t), "iou_loss"),
        (x, lambda: F.sigmoid_focal_loss(x, y), "binary_loss"),
    ):
        with detloss.use_backend("native"):
            (grad,) = torch.autograd.grad(loss(), leaf, create_graph=True)
        with pytest.raises(RuntimeError, match=f"derivative for detloss::{op}_backward is not implemented"):
            torch.autograd.grad(grad.sum(), leaf)
        second = []
        for backend in ("reference", "fused"):
            with detloss.use_backend(backend):
                (grad,) = torch.autograd.grad(loss(), leaf, create_graph=True)
            second.append(torch.autograd.grad(grad.sum(), leaf)[0])
        torch.testing.assert_close(second[1], second[0], rtol=1e-9, atol=1e-12)

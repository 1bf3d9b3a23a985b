"""The fast path against the reference path: values, gradients, edge cases.

Every backend must give the reference path's values and gradients (autograd through the
tensor composition of detloss.boxes / functional.classification) to float32 rounding. The
binary family is also checked against a float64 formula written here with plain torch ops.
"native" runs the operators torch.ops.detloss.* (the C++ kernel on CPU), "fused" their
pure-torch kernels; both are reached through the public losses or the operators themselves.
The operators' registration (opcheck, torch.compile) is tested in test_ops.py, the kernel's
build in test_native_build.py. No timing assertions.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator

import pytest
import torch

import detloss
from detloss import functional as F
from detloss.errors import DetLossError
from detloss.functional.iou import box_loss
from detloss.testing import random_boxes

BACKENDS = ["fused", "native"]
GRAIN = 16384  # kernels.cpp's kGrain: pairs per thread task (4x as many logits)
VARIANTS = [
    ("iou", {}),
    ("giou", {}),
    ("diou", {}),
    ("ciou", {}),
    ("ciou", {"alpha_gate": True}),
    ("ciou", {"aspect_grad": "paper"}),
    ("eiou", {}),
    ("siou", {}),
    ("siou", {"siou_theta": 2.5}),
]
VARIANT_IDS = [k + "".join(f"-{v}" for v in kw.values()) for k, kw in VARIANTS]


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    detloss.set_backend(None)


def need(backend: str) -> None:
    with detloss.use_backend(backend):  # asking for native loads it (or builds it, once)
        info = detloss.backend_info()
    if backend == "native" and info.native_library is None:
        if shutil.which("c++") and shutil.which("ninja"):
            pytest.fail(f"a compiler and ninja are here but the native kernel did not build: {info.native_failure}")
        pytest.skip(f"native kernel unavailable: {info.native_failure}")


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two torch threads (the native kernel's OpenMP loops split their work), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def cases(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of xyxy boxes: overlapping, disjoint, nested, and every degenerate kind."""
    g = torch.Generator().manual_seed(7)
    t = random_boxes(64, generator=g)
    p = t + torch.randn(t.shape, generator=g, dtype=torch.float64) * 4
    p = torch.cat((torch.minimum(p[:, :2], p[:, 2:]), torch.maximum(p[:, :2], p[:, 2:])), dim=-1)
    extra_p, extra_t = [], []
    box = torch.tensor([10.0, 20.0, 40.0, 35.0], dtype=torch.float64)
    extra_p += [box, box.clone()]  # identical (twice: ties in every min/max)
    extra_t += [box, box]
    extra_p.append(torch.tensor([10.0, 20.0, 10.0, 35.0]))  # zero width
    extra_t.append(box)
    extra_p.append(torch.tensor([10.0, 20.0, 40.0, 20.0]))  # zero height
    extra_t.append(box)
    extra_p.append(torch.tensor([15.0, 25.0, 15.0, 25.0]))  # point inside
    extra_t.append(box)
    extra_p.append(torch.tensor([5.0, 5.0, 5.0, 5.0]))  # point outside
    extra_t.append(torch.tensor([5.0, 5.0, 5.0, 5.0]))  # both points, identical
    extra_p.append(torch.tensor([40.0, 35.0, 10.0, 20.0]))  # inverted both ways
    extra_t.append(box)
    extra_p.append(torch.tensor([40.0, 20.0, 30.0, 50.0]))  # inverted in x
    extra_t.append(torch.tensor([12.0, 22.0, 38.0, 30.0]))
    extra_p.append(torch.tensor([0.0, 0.0, 1e-6, 2e-6]))  # tiny boxes
    extra_t.append(torch.tensor([0.5e-6, 0.0, 1.5e-6, 1e-6]))
    extra_p.append(torch.tensor([0.0, 0.0, 1e5, 2e5]))  # huge boxes (inf in float16: NaN both ways)
    extra_t.append(torch.tensor([3e4, -1e4, 1.5e5, 1.2e5]))
    extra_p.append(torch.tensor([0.0, 0.0, 3e4, 6e4]))  # large, finite in float16
    extra_t.append(torch.tensor([1e4, -1e4, 5e4, 4e4]))
    extra_p.append(torch.tensor([0.0, 0.0, 2.0, 1.0]))  # disjoint, touching
    extra_t.append(torch.tensor([2.0, 0.0, 4.0, 1.0]))
    extra_p.append(torch.tensor([1.0, 1.0, 2.0, 3.0]))  # nested
    extra_t.append(torch.tensor([0.0, 0.0, 6.0, 4.0]))
    p = torch.cat((p, torch.stack(extra_p).double()))
    t = torch.cat((t, torch.stack(extra_t).double()))
    return p.to(dtype), t.to(dtype)


def run(backend: str, kind: str, options: dict, p: torch.Tensor, t: torch.Tensor, target_grad: bool = True):
    """(loss, iou, dloss/dpred, dloss/dtarget) under one backend, with weights on both outputs."""
    detloss.set_backend(backend)
    p = p.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(target_grad)
    loss, iou = box_loss("test", kind, p, t, "xyxy", 1e-7, **options)
    assert backend == "reference" or ran_fast(loss, backend), f"{backend} fell back to the reference path"
    g = torch.Generator().manual_seed(3)
    w1 = torch.rand(loss.shape, generator=g, dtype=torch.float64).to(loss.dtype)
    w2 = torch.rand(loss.shape, generator=g, dtype=torch.float64).to(loss.dtype)
    (loss * w1 + iou * w2).sum().backward()
    return loss.detach(), iou.detach(), p.grad, t.grad


def close(actual: torch.Tensor | None, expected: torch.Tensor | None, dtype: torch.dtype) -> None:
    """Equal to rounding: relative to each row's scale (gradients of points reach 1/eps)."""
    assert (actual is None) == (expected is None)
    if actual is None or expected is None:
        return
    tol = 2e-5 if dtype == torch.float32 else 1e-10
    scale = expected.abs().reshape(expected.shape[0], -1).amax(dim=1).clamp(min=1.0)
    scale = scale.reshape((-1,) + (1,) * (expected.dim() - 1))
    assert actual.dtype == expected.dtype
    assert torch.equal(torch.isfinite(actual), torch.isfinite(expected))  # same NaN/inf, elementwise
    torch.testing.assert_close(actual / scale, expected / scale, atol=tol, rtol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,options", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_reference(backend: str, kind: str, options: dict, dtype: torch.dtype) -> None:
    need(backend)
    p, t = cases(dtype)
    expected = run("reference", kind, options, p, t)
    actual = run(backend, kind, options, p, t)
    for a, e in zip(actual, expected):
        close(a, e, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_inputs_computed_in_float32(backend: str, dtype: torch.dtype) -> None:
    need(backend)
    p, t = cases(dtype)
    for kind, options in (("ciou", {}), ("siou", {}), ("giou", {})):
        expected = run("reference", kind, options, p, t)
        actual = run(backend, kind, options, p, t)
        assert actual[0].dtype == torch.float32 and actual[2].dtype == dtype
        for a, e in zip(actual[:2], expected[:2]):
            close(a, e, torch.float32)
        for a, e in zip(actual[2:], expected[2:]):
            close(a.float(), e.float(), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_target_only_and_empty(backend: str) -> None:
    need(backend)
    p, t = cases(torch.float32)
    p = p[: 4 * (p.shape[0] // 4)]
    # one target for all predictions (broadcast), target without gradient
    expected = run("reference", "diou", {}, p.reshape(4, -1, 4), t[:1], target_grad=False)
    actual = run(backend, "diou", {}, p.reshape(4, -1, 4), t[:1], target_grad=False)
    assert actual[0].shape == (4, p.shape[0] // 4) and actual[3] is None
    for a, e in zip(actual[:3], expected[:3]):
        close(a.reshape(-1, *a.shape[2:]), e.reshape(-1, *e.shape[2:]), torch.float32)
    empty = torch.zeros(0, 4, requires_grad=True)
    detloss.set_backend(backend)
    loss = detloss.functional.ciou_loss(empty, torch.zeros(0, 4))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None and empty.grad.shape == (0, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_functions_dispatch_and_agree(backend: str) -> None:
    """The public losses (mean reduction, an expanded upstream gradient) through the backend."""
    need(backend)
    p, t = cases(torch.float32)
    for name in ("iou_loss", "giou_loss", "diou_loss", "ciou_loss", "eiou_loss"):
        grads = []
        for b in ("reference", backend):
            detloss.set_backend(b)
            x = p.clone().requires_grad_(True)
            value = getattr(detloss.functional, name)(x, t)
            value.backward()
            grads.append((value.detach(), x.grad))
        close(grads[1][0].reshape(1), grads[0][0].reshape(1), torch.float32)
        close(grads[1][1], grads[0][1], torch.float32)


# ---------------------------------------------------------------- gradcheck (float64)


def smooth_pairs(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping, valid, non-square boxes with no ties: away from every kink."""
    g = torch.Generator().manual_seed(11)
    t = random_boxes(n, generator=g)
    p = t + (torch.rand(t.shape, generator=g, dtype=torch.float64) - 0.5) * 2.0
    return p, t


def fast_pair(backend: str, kind: str, **options: object):
    """``(a, b) -> (1 - S, IoU)`` under ``backend``, asserting that the fast path ran."""

    def f(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with detloss.use_backend(backend):
            loss, iou = box_loss("test", kind, a, b, "xyxy", 1e-7, **options)
        assert ran_fast(loss, backend)
        return loss, iou

    return f


def ran_fast(out: torch.Tensor, backend: str) -> bool:
    """Whether ``out`` came from ``backend``'s fast path rather than the reference composition,
    judged by the autograd node it hangs from: the operator's C++ autograd (native, on CPU) or
    the pure-torch path's Function (fused, compiled)."""
    node = out.grad_fn
    while node is not None and node.name() in ("ViewBackward0", "UnsafeViewBackward0", "ToCopyBackward0"):
        node = node.next_functions[0][0]
    name = node.name() if node is not None else ""
    return "PairFunction" in name if backend == "native" else "TorchPathBackward" in name


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "eiou", "siou"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_iou_functions(backend: str, kind: str) -> None:
    need(backend)
    p, t = smooth_pairs()
    theta = 4.0 if kind != "siou" else 3.0
    p.requires_grad_(True)
    t.requires_grad_(True)
    fn = fast_pair(backend, kind, siou_theta=theta)
    assert torch.autograd.gradcheck(fn, (p, t), eps=1e-6, atol=1e-6, rtol=1e-5)
    if backend == "native":  # the operator itself, called directly
        op = torch.ops.detloss.iou_loss
        assert torch.autograd.gradcheck(
            lambda a, b: op(a, b, kind, 1e-7, False, False, theta), (p, t), eps=1e-6, atol=1e-6, rtol=1e-5
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_ciou_surrogate_gradient_matches_reference_autograd(backend: str) -> None:
    """CIoU's alpha is a constant in the gradient (no finite difference sees that): compare
    with the reference's autograd in float64, which holds alpha constant too. Where alpha is
    gated to 0 (IoU < 0.5) the gradient is exact, so gradcheck applies."""
    need(backend)
    p, t = smooth_pairs(32)
    for options in ({}, {"aspect_grad": "paper"}, {"alpha_gate": True}):
        expected = run("reference", "ciou", options, p, t)
        actual = run(backend, "ciou", options, p, t)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    far_p = p + torch.tensor([30.0, 30.0, 31.0, 33.0], dtype=torch.float64)  # IoU < 0.5: alpha gated
    far_p.requires_grad_(True)
    fn = fast_pair(backend, "ciou", alpha_gate=True)
    assert torch.autograd.gradcheck(lambda a: fn(a, t), (far_p,), eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- binary classification family

BINARY = [
    ("bce", None, 0.0),
    ("focal", 0.25, 2.0),
    ("focal", None, 1.5),
    ("focal", 0.25, 0.0),
    ("quality", None, 2.0),
    ("quality", None, 1.0),
    ("varifocal", 0.75, 2.0),
    ("varifocal", 0.5, 3.0),
    ("focal", 0.25, 3.0),  # a general exponent with alpha: the vectorized pow and the alpha factor
    ("quality", None, 1.5),
    ("varifocal", 0.75, 1.0),
]
BINARY_IDS = [f"{k}-{a}-{g}" for k, a, g in BINARY]


def reference_binary(x: torch.Tensor, y: torch.Tensor, kind: str, alpha: float | None, gamma: float) -> torch.Tensor:
    """Written from the papers' formulas, in float64 (p = sigmoid(x))."""
    x, y = x.double(), y.double()
    p = torch.sigmoid(x)
    ce = -(y * torch.nn.functional.logsigmoid(x) + (1 - y) * torch.nn.functional.logsigmoid(-x))
    if kind == "bce":
        return ce
    if kind == "focal":  # Lin et al. Eq. 5 with soft targets: 1 - p_t = y (1 - p) + (1 - y) p
        a_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
        return a_t * (y * (1 - p) + (1 - y) * p) ** gamma * ce
    if kind == "quality":  # GFL: |y - p|^beta BCE
        return (y - p).abs() ** gamma * ce
    assert alpha is not None  # VarifocalNet Eq. 2
    return torch.where(y > 0, y * ce, alpha * p**gamma * ce)


def binary_inputs(n: int = 64, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64) * 3
    y = torch.rand(n, 5, generator=g, dtype=torch.float64)
    y[: n // 2] = (y[: n // 2] > 0.6).double()
    x[0, :] = torch.tensor([30.0, -30.0, 90.0, -90.0, 0.0])  # saturated logits, and 0
    return x.to(dtype), y.to(dtype)


def binary(backend: str, x: torch.Tensor, y: torch.Tensor, kind: str, alpha: float | None, gamma: float):
    """The elementwise loss under ``backend``: the public loss of that kind (reduction "none"),
    asserting that the fast path ran."""
    with detloss.use_backend(backend):
        if kind == "bce":
            out = F.binary_cross_entropy_loss(x, y, reduction="none")
        elif kind == "focal":
            out = F.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="none")
        elif kind == "quality":
            out = F.quality_focal_loss(x, y, beta=gamma, reduction="none")
        else:
            assert alpha is not None
            out = F.varifocal_loss(x, y, alpha=alpha, gamma=gamma, reduction="none")
    assert ran_fast(out, backend), f"{backend} fell back to the reference path"
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,alpha,gamma", BINARY, ids=BINARY_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_function_matches_float64_formula(
    backend: str, kind: str, alpha: float | None, gamma: float, dtype: torch.dtype
) -> None:
    need(backend)
    x, y = binary_inputs(dtype=dtype)
    xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    out = binary(backend, xs, ys, kind, alpha, gamma)
    w = torch.rand(out.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    (out * w).sum().backward()
    xr, yr = x.double().requires_grad_(True), y.double().requires_grad_(True)
    ref = reference_binary(xr, yr, kind, alpha, gamma)
    (ref * w.double()).sum().backward()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.double(), ref, **tol)
    torch.testing.assert_close(xs.grad.double(), xr.grad, **tol)
    torch.testing.assert_close(ys.grad.double(), yr.grad, **tol)


@pytest.mark.parametrize("kind,alpha,gamma", BINARY, ids=BINARY_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_binary_functions(backend: str, kind: str, alpha: float | None, gamma: float) -> None:
    need(backend)
    x, y = binary_inputs(6)
    y = y.clamp(0.05, 0.95) if kind == "varifocal" else y  # away from varifocal's switch at y = 0
    x[0] = torch.tensor([3.0, -3.0, 2.0, -2.0, 0.5])
    x.requires_grad_(True)
    y.requires_grad_(kind != "quality")  # |y - p| has a kink at y = p for soft targets, not at x
    args = (x, y) if kind != "quality" else (x,)
    f = (
        (lambda a, b: binary(backend, a, b, kind, alpha, gamma))
        if kind != "quality"
        else (lambda a: binary(backend, a, y, kind, alpha, gamma))
    )
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-5)
    if backend == "native":  # the operator itself, called directly
        op = torch.ops.detloss.binary_loss
        g = (
            (lambda a, b: op(a, b, kind, alpha, gamma))
            if kind != "quality"
            else (lambda a: op(a, y, kind, alpha, gamma))
        )
        assert torch.autograd.gradcheck(g, args, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_classification_losses_dispatch_and_agree(backend: str) -> None:
    need(backend)
    from detloss import functional as F

    x, y = binary_inputs(40, torch.float32)
    for fn, kw in (
        (F.binary_cross_entropy_loss, {}),
        (F.sigmoid_focal_loss, {}),
        (F.quality_focal_loss, {}),
        (F.varifocal_loss, {}),
        (F.sigmoid_focal_loss, {"gamma": 0.5}),  # exponent in (0, 1): reference path
    ):
        results = []
        for b in ("reference", backend):
            detloss.set_backend(b)
            xs = x.clone().requires_grad_(True)
            value = fn(xs, y, reduction="sum", **kw)
            value.backward()
            results.append((value.detach(), xs.grad))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the native kernel's loops

# How the upstream gradient reaches a backward: the kernel stages it per block and treats an
# absent one, an expanded scalar (stride 0), a dense one and a strided one differently.
LAYOUTS = ["dense", "expanded", "strided", "absent"]


def upstream(layout: str, shape: torch.Size, dtype: torch.dtype, seed: int) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)
    if layout == "absent":
        return None
    if layout == "expanded":
        return torch.full((1,), 0.37, dtype=dtype).expand(shape)
    if layout == "strided":
        wide = torch.rand(shape[0], 3, *shape[1:], generator=g, dtype=torch.float64).to(dtype)
        return wide[:, 1]
    return torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float32: the AVX-512 transpose
@pytest.mark.parametrize("kind,options", [("giou", {}), ("ciou", {}), ("siou", {})], ids=["giou", "ciou", "siou"])
def test_native_iou_loops_many_blocks_every_gradient_layout(
    kind: str, options: dict, dtype: torch.dtype, two_threads: None
) -> None:
    """Several threads' chunks and blocks, a partial block, each upstream layout on each output."""
    need("native")
    p, t = cases(dtype)
    size = 3 * GRAIN + 77
    p, t = p.repeat(size // p.shape[0] + 1, 1)[:size], t.repeat(size // p.shape[0] + 1, 1)[:size]
    p = p + torch.arange(p.shape[0], dtype=dtype)[:, None] * 1e-3  # no two rows alike
    for layout_loss, layout_iou in [(a, b) for a in LAYOUTS for b in ("absent", "dense")]:
        if layout_loss == layout_iou == "absent":
            continue
        for target_grad in (True, False):
            results = []
            for backend in ("reference", "native"):
                detloss.set_backend(backend)
                ps = p.clone().requires_grad_(True)
                ts = t.clone().requires_grad_(target_grad)
                loss, iou = box_loss("test", kind, ps, ts, "xyxy", 1e-7, **options)
                pairs = [
                    (out, upstream(layout, out.shape, out.dtype, seed))
                    for out, layout, seed in ((loss, layout_loss, 1), (iou, layout_iou, 2))
                ]
                outputs, grads = zip(*[(o, g) for o, g in pairs if g is not None])
                torch.autograd.backward(list(outputs), list(grads))
                results.append((loss.detach(), ps.grad, ts.grad))
            for a, e in zip(results[1], results[0]):
                close(a, e, dtype)


@pytest.mark.parametrize("kind,alpha,gamma", [("focal", 0.25, 2.0), ("quality", None, 2.0), ("varifocal", 0.75, 2.0)])
def test_native_binary_loops_many_blocks_every_gradient_layout(
    kind: str, alpha: float | None, gamma: float, two_threads: None
) -> None:
    need("native")
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5 * 4 * GRAIN + 13, generator=g, dtype=torch.float64) * 4
    y = torch.rand(x.shape, generator=g, dtype=torch.float64)
    y[::3] = 0.0
    for layout in ("dense", "expanded", "strided"):
        for target_grad in (True, False):
            xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(target_grad)
            out = torch.ops.detloss.binary_loss(xs, ys, kind, alpha, gamma)
            grad = upstream(layout, out.shape, out.dtype, 4)
            out.backward(grad)
            xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(target_grad)
            reference_binary(xr, yr, kind, alpha, gamma).backward(grad)
            torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-10, atol=1e-12)
            assert (ys.grad is None) == (not target_grad)
            if target_grad:
                torch.testing.assert_close(ys.grad, yr.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.5, 2.0, 3.0, 7.5])
def test_native_binary_general_exponent_limits(gamma: float, dtype: torch.dtype) -> None:
    """The kernel's pow (exp of gamma log m, branch-free) at its limits: m = 0 exactly
    (saturated logits), m = 1, m below the smallest normal number, gamma 0 (no factor) and 1;
    values and gradients against the float64 formula, every one finite."""
    need("native")
    # logits where p (or 1 - p) is 0, 1, at the smallest normal number of float32 / float64, or
    # ordinary; hard and soft targets
    x = torch.tensor([1e4, -1e4, 200.0, -200.0, 87.3, -87.3, 708.3, -708.3, 0.0, 3.0, -3.0, 0.5], dtype=torch.float64)
    x = x.repeat(3)
    y = torch.cat((torch.ones(12), torch.zeros(12), torch.full((12,), 0.5))).double()
    x = x.to(dtype).repeat(700)  # several vector blocks, and a tail
    y = y.to(dtype).repeat(700)
    for kind, alpha in (("focal", 0.25), ("focal", None), ("quality", None), ("varifocal", 0.75)):
        xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        out = torch.ops.detloss.binary_loss(xs, ys, kind, alpha, gamma)
        w = torch.linspace(0.5, 1.5, out.numel(), dtype=dtype)
        (out * w).sum().backward()
        xr, yr = x.double().clone().requires_grad_(True), y.double().clone().requires_grad_(True)
        ref = reference_binary(xr, yr, kind, alpha, gamma)
        (ref * w.double()).sum().backward()
        for actual, expected in ((out, ref), (xs.grad, xr.grad), (ys.grad, yr.grad)):
            assert torch.isfinite(actual).all(), (kind, alpha)
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(actual.double(), expected, **tol)


def test_native_siou_theta_below_one_is_refused() -> None:
    """Theta - 1 is the exponent of SIoU's shape slope; the kernel's pow takes exponents >= 0
    (the loss functions already refuse theta < 1)."""
    need("native")
    p, t = cases(torch.float32)
    with pytest.raises(RuntimeError, match="siou_theta must be >= 1"):
        torch.ops.detloss.iou_loss(p, t, "siou", 1e-7, False, False, 0.5)


# ---------------------------------------------------------------- backends and compile


def test_set_backend_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DetLossError, match="set_backend"):
        detloss.set_backend("fast")  # type: ignore[arg-type]
    detloss.set_backend("reference")
    assert detloss.get_backend() == "reference"
    detloss.set_backend(None)
    monkeypatch.setenv("DETLOSS_BACKEND", "fused")
    assert detloss.get_backend() == "fused"
    assert detloss.backend_info().environment == "fused"
    monkeypatch.setenv("DETLOSS_BACKEND", "nonsense")
    with pytest.raises(DetLossError, match="DETLOSS_BACKEND"):
        detloss.get_backend()
    monkeypatch.delenv("DETLOSS_BACKEND")
    native = detloss.backend_info().native_library is not None
    assert detloss.get_backend() == ("native" if native else "reference")
    assert detloss.get_backend("cuda") == "reference"  # no GPU run has shown a faster one correct yet
    detloss.set_backend("native")
    assert detloss.get_backend("meta") == "fused"  # native is CPU-only: falls back, no error
    assert detloss.backend_info().requested == "native"


def test_use_backend_restores_the_previous_choice() -> None:
    detloss.set_backend("fused")
    with detloss.use_backend("reference"):
        assert detloss.get_backend() == "reference" and detloss.backend_info().requested == "reference"
        with detloss.use_backend(None):  # the default inside the block
            assert detloss.backend_info().requested is None
        assert detloss.get_backend() == "reference"
    assert detloss.get_backend() == "fused"
    with pytest.raises(RuntimeError, match="inside"), detloss.use_backend("native"):
        raise RuntimeError("inside")
    assert detloss.backend_info().requested == "fused"  # restored after an exception too
    with pytest.raises(DetLossError, match="use_backend"), detloss.use_backend("fast"):  # type: ignore[arg-type]
        pass


def test_native_forward_saves_only_inputs() -> None:
    need("native")
    p, t = cases(torch.float32)
    p.requires_grad_(True)
    saved: list[int] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(x.numel() * x.element_size())
        return x

    detloss.set_backend("native")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        detloss.functional.ciou_loss(p, t, reduction="none")
    assert sum(saved) <= 2 * p.numel() * p.element_size()


def test_bench_peak_memory_sees_a_known_allocation() -> None:
    """The peak is the kernel's RSS high-water mark: a 64 MiB temporary shows, nothing does not."""
    from detloss.experiments.bench import _peak_bytes

    size = 64 * 2**20
    peak = _peak_bytes(lambda: torch.ones(size // 4).sum(), torch.device("cpu"))
    if peak is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert size - 2**20 <= peak < size + 8 * 2**20  # growth: pages freed meanwhile (< 1 MiB) offset it
    idle = _peak_bytes(lambda: None, torch.device("cpu"))
    assert idle is not None and idle < 2**20


def test_bench_command_writes_rows(tmp_path) -> None:
    from detloss.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--sizes", "200", "--repeat", "2", "--losses", "ciou,sigmoid_focal", "--out", str(tmp_path)])
    assert exit_info.value.code == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert {"command", "args", "detloss_version", "torch_version", "seconds", "rows"} <= set(result)
    keys = {"loss", "impl", "n", "fwd_ms", "fwd_bwd_ms", "saved_bytes", "peak_bytes"}
    keys |= {"ratio_vs_fastest_peer", "ratio_vs_floor", "floor_ms", "ratio_peak_vs_peer"}
    assert result["rows"] and all(keys <= set(row) for row in result["rows"])
    for row in result["rows"]:  # each ratio is its row's own numbers
        assert row["ratio_vs_floor"] == pytest.approx(row["fwd_bwd_ms"] / row["floor_ms"], rel=1e-2, abs=1e-3)
    impls = {row["impl"] for row in result["rows"]}
    assert {"reference", "fused", "floor"} <= impls
    assert all(math.isfinite(row["fwd_bwd_ms"]) for row in result["rows"])
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "report.md").is_file()


def test_bench_compiled_step_rows() -> None:
    """The compiled-step rows: the same compiled step with each backend's losses inside, each
    over the reference's (torch.compile's eager backend here, to keep the test quick)."""
    from detloss.experiments.bench import COMPILED_STEP, report_markdown, run_bench

    names = ["reference", "native"] if detloss.backend_info().native_library else ["reference", "fused"]
    rows = run_bench([COMPILED_STEP], [64], backends=names[1:], repeat=2, compile_backend="eager")
    assert [row["impl"] for row in rows] == names and all(row["loss"] == COMPILED_STEP for row in rows)
    assert rows[0]["ratio_vs_reference"] == 1.0
    assert rows[1]["ratio_vs_reference"] == pytest.approx(rows[1]["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"], rel=1e-2)
    assert all(row["compile_s"] > 0 and math.isfinite(row["fwd_bwd_ms"]) for row in rows)  # one size: compiled there
    report = report_markdown(rows, {"device": "cpu"})
    assert "| impl | n | compile s |" in report and f"| {names[1]} | 64 |" in report

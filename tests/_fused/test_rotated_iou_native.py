"""The exact rotated IoU / GIoU as native operators (torch.ops.detloss.rotated_box_iou and
pairwise_rotated_iou, rotated_iou.cpp): values against shapely's float64 polygon areas and
against the reference composition, gradients against the reference's autograd (its shape
derivative) and float64 gradcheck, finite gradients on the degenerate families, pairwise ==
aligned over all pairs across block and thread tails, opcheck, and the dispatch of
detloss.boxes.rotated_iou / pairwise_rotated_iou / rotated_nms and the loss."""

from __future__ import annotations

import math

import pytest
import torch

import detloss
from detloss import functional as F
from detloss.boxes import pairwise_rotated_iou, rotated_iou, rotated_nms
from detloss.boxes import rotated as kernel
from tests._fused.test_ops import need_native
from tests.boxes.test_rotated import DEGENERATE, EPS, degenerate_families, random_pairs, shapely_iou

OPS = torch.ops.detloss


@pytest.fixture(autouse=True)
def _native():
    need_native()
    yield
    detloss.set_backend(None)


def reference(pred: torch.Tensor, target: torch.Tensor, kind: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(similarity, iou)`` of the reference composition (no native operator involved)."""
    frames = kernel.prepare_rotated_pair("test", pred, target, "cxcywha", "rad", eps)
    return kernel.rotated_box_similarity(*frames, kind, eps)


def native(pred: torch.Tensor, target: torch.Tensor, kind: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return OPS.rotated_box_iou(pred, target, kind, eps)


def gradients(fn, pred: torch.Tensor, target: torch.Tensor, kind: str, eps: float, seed: int = 0):
    """Gradients of ``sum(w1 * similarity + w2 * iou)`` (random weights) w.r.t. both boxes."""
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    similarity, iou = fn(p, t, kind, eps)
    g = torch.Generator().manual_seed(seed)
    w1 = torch.rand(similarity.shape, generator=g, dtype=torch.float64).to(similarity.dtype)
    w2 = torch.rand(similarity.shape, generator=g, dtype=torch.float64).to(similarity.dtype)
    (w1 * similarity + w2 * iou).sum().backward()
    return p.grad, t.grad


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_5000_random_pairs_against_shapely(kind: str) -> None:
    pred, target = random_pairs(5000, seed=31)
    exact = torch.tensor([shapely_iou(p, t, kind) for p, t in zip(pred.tolist(), target.tolist())], dtype=torch.float64)
    got = native(pred, target, kind, 1e-300)[0]
    assert (got - exact).abs().max().item() < 1e-12
    # float32 inputs are computed in double: only the inputs' and the output's rounding remain
    p32, t32 = pred.float(), target.float()
    exact32 = torch.tensor([shapely_iou(p, t, kind) for p, t in zip(p32.tolist(), t32.tolist())], dtype=torch.float64)
    got32 = native(p32, t32, kind, 1e-30)[0]
    assert got32.dtype == torch.float32
    assert (got32.double() - exact32).abs().max().item() < 1e-7  # the float32 composition: ~2e-7


@pytest.mark.parametrize("name", sorted(DEGENERATE))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_degenerate_cases_by_hand(name: str, dtype: torch.dtype) -> None:
    pred, target, iou, giou = DEGENERATE[name]
    p, t = torch.tensor([pred], dtype=dtype), torch.tensor([target], dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-7
    for kind, value in (("iou", iou), ("giou", giou)):
        got = native(p, t, kind, EPS[dtype])[0]
        assert got.item() == pytest.approx(value, abs=tol), kind
        dp, dt = gradients(native, p, t, kind, EPS[dtype])
        assert torch.isfinite(dp).all() and torch.isfinite(dt).all(), kind


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_degenerate_families_against_shapely_with_finite_gradients(kind: str) -> None:
    """Identical, quarter and half turns, tiny boxes 1e5 apart, needles, collinear sides, zero
    widths, angles at multiples of pi/2: values as shapely's (its own rounding at 1e5 from the
    origin is ~1e-11 there), gradients finite."""
    pred, target, family = degenerate_families(800, seed=5)
    exact = torch.tensor([shapely_iou(p, t, kind) for p, t in zip(pred.tolist(), target.tolist())], dtype=torch.float64)
    got = native(pred, target, kind, 1e-300)[0]
    far = family == 3
    assert (got - exact)[~far].abs().max().item() < 1e-11
    assert (got - exact)[far].abs().max().item() < 1e-5
    for dtype in (torch.float64, torch.float32):
        dp, dt = gradients(native, pred.to(dtype), target.to(dtype), kind, EPS[dtype])
        assert torch.isfinite(dp).all() and torch.isfinite(dt).all()


@pytest.mark.parametrize("kind", ["iou", "giou"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_gradients_equal_the_reference(kind: str, dtype: torch.dtype) -> None:
    """Random pairs are away from kinks (with probability 1): the gradient is the reference's
    autograd of its shape derivative and hull; float32 against float32's own reference."""
    pred, target = random_pairs(3000, seed=7)
    pred, target = pred.to(dtype), target.to(dtype)
    eps = 1e-7
    tol = {torch.float64: (1e-12, 1e-10), torch.float32: (2e-6, 2e-4)}[dtype]
    for got, want in zip(native(pred, target, kind, eps), reference(pred, target, kind, eps)):
        torch.testing.assert_close(got, want, rtol=0, atol=tol[0])
    for got, want in zip(gradients(native, pred, target, kind, eps), gradients(reference, pred, target, kind, eps)):
        torch.testing.assert_close(got, want, rtol=tol[1], atol=tol[1])


def test_gradients_on_the_degenerate_families_equal_the_reference_where_it_is_smooth() -> None:
    """Where the reference's gradient does not depend on a tie, the native gradient is the same:
    tiny boxes far apart and needles (both kinds), zero widths (IoU). A zero-width box's hull
    gradient in ``w`` is a kink (its corners coincide in pairs, and which copy is the hull's
    vertex decides the sign): there both are finite, and may differ."""
    pred, target, family = degenerate_families(800, seed=9)
    for kind, families in (("iou", (3, 4, 6)), ("giou", (3, 4))):
        smooth = torch.isin(family, torch.tensor(families))
        p, t = pred[smooth], target[smooth]
        for got, want in zip(gradients(native, p, t, kind, 1e-7), gradients(reference, p, t, kind, 1e-7)):
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_gradcheck_float64(kind: str) -> None:
    pred, target = random_pairs(12, seed=3)
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: native(a, b, kind, 1e-7), (p, t), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradient_of_near_parallel_edges_is_bounded() -> None:
    base = torch.tensor([[0.0, 0.0, 10.0, 0.01, 0.3]], dtype=torch.float64)
    for turn in (1e-3, 1e-6, 1e-9, 1e-12, 0.0):
        p = torch.tensor([[0.5, 0.0, 9.0, 0.012, 0.3 + turn]], dtype=torch.float64)
        dp, dt = gradients(native, p, base, "iou", 1e-7)
        assert torch.isfinite(dt).all() and torch.isfinite(dp).all() and dp.abs().max().item() < 1e3


def test_upstream_gradients_of_one_output_only() -> None:
    pred, target = random_pairs(50, seed=4)
    for index in (0, 1):
        p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
        native(p, t, "giou", 1e-7)[index].sum().backward()
        q, s = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
        reference(q, s, "giou", 1e-7)[index].sum().backward()
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(t.grad, s.grad, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- pairwise, threads, tails


@pytest.mark.parametrize("kind", ["iou", "giou"])
@pytest.mark.parametrize("threads", [1, 2])
def test_pairwise_equals_aligned_over_all_pairs(kind: str, threads: int) -> None:
    """Shapes across the column block (1024) and the per-task grains: every entry equals the
    aligned operator on that pair, bit for bit (the same double computation)."""
    a, _ = random_pairs(7, seed=11)
    _, b = random_pairs(1500, seed=12, spread=3.0)
    b[:, :2] = a[torch.arange(1500) % 7, :2] + b[:, :2] * 0.1
    with detloss._backend.torch_threads(threads):
        for n, m in ((7, 1500), (1, 1025), (3, 1), (7, 0), (0, 4)):
            got = OPS.pairwise_rotated_iou(a[:n], b[:m], kind, 1e-7)
            assert got.shape == (n, m)
            if n * m:
                aligned = native(a[:n, None].expand(n, m, 5).reshape(-1, 5), b[None, :m].expand(n, m, 5).reshape(-1, 5),
                                 kind, 1e-7)[0]  # fmt: skip
                assert torch.equal(got, aligned.reshape(n, m))
        # aligned, across the pair grain (256) on threads
        p, t = random_pairs(1001, seed=13)
        whole = native(p, t, kind, 1e-7)[0]
        assert torch.equal(whole[:300], native(p[:300], t[:300], kind, 1e-7)[0])


def test_pairwise_and_nms_dispatch_to_the_native_kernel() -> None:
    a, _ = random_pairs(40, seed=14)
    _, b = random_pairs(30, seed=15)
    with detloss.use_backend("reference"):
        want = pairwise_rotated_iou(a, b, "giou", eps=1e-7)
    with detloss.use_backend("native"):
        got = pairwise_rotated_iou(a, b, "giou", eps=1e-7)
        got_deg = pairwise_rotated_iou(
            torch.cat((a[:, :4], torch.rad2deg(a[:, 4:])), -1), torch.cat((b[:, :4], torch.rad2deg(b[:, 4:])), -1),
            "giou", angle_unit="deg", eps=1e-7,
        )  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_deg, want, rtol=0, atol=1e-12)
    boxes = torch.cat((a, a + torch.tensor([0.3, -0.2, 0.0, 0.0, 0.05], dtype=torch.float64)))
    scores = torch.rand(80, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with detloss.use_backend("reference"):
        keep_ref = rotated_nms(boxes, scores, 0.3)
    with detloss.use_backend("native"):
        keep = rotated_nms(boxes, scores, 0.3)
    assert torch.equal(keep, keep_ref) and 0 < len(keep) < 80


def graph_names(fn, depth: int = 4) -> str:
    """The names of the autograd nodes up to ``depth`` steps back from ``fn``, lower case."""
    if fn is None or depth == 0:
        return ""
    return " ".join([type(fn).__name__.lower()] + [graph_names(n, depth - 1) for n, _ in fn.next_functions])


def test_rotated_iou_and_the_loss_dispatch_to_the_native_operator() -> None:
    pred, target = random_pairs(64, seed=16)
    pred, target = pred.reshape(8, 8, 5), target.reshape(8, 8, 5)
    table = torch._C._dispatch_dump_table("detloss::rotated_box_iou")
    assert "rotated_iou.cpp" in dict(line.split(": ", 1) for line in table.splitlines() if ": " in line)["CPU"]
    for kind in ("iou", "giou"):
        outs = {}
        for backend in ("reference", "native"):
            p, t = pred.clone().requires_grad_(True), target[0].clone().requires_grad_(True)  # broadcasting target
            with detloss.use_backend(backend):
                value = rotated_iou(p, t, kind)
                loss = F.rotated_iou_loss(p, t, kind=kind, mode="log", reduction="sum")
            (value.sum() + loss).backward()
            outs[backend] = (value, loss, p.grad, t.grad)
            assert ("rotated_box_iou" in graph_names(value.grad_fn)) == (backend == "native")
        for got, want in zip(outs["native"], outs["reference"]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_half_degrees_and_corners_keep_their_paths() -> None:
    pred, target = random_pairs(20, seed=17)
    with detloss.use_backend("reference"):
        want = rotated_iou(pred.half(), target.half(), "giou", angle_unit="deg")
    with detloss.use_backend("native"):
        got = rotated_iou(pred.half(), target.half(), "giou", angle_unit="deg")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


# ---------------------------------------------------------------- operator contract


def opcheck_samples() -> list[tuple[str, tuple[object, ...]]]:
    samples: list[tuple[str, tuple[object, ...]]] = []
    for dtype in (torch.float32, torch.float64):
        p, t = (x.to(dtype) for x in random_pairs(6, seed=18))
        grad = torch.rand(6, dtype=dtype)
        for kind in ("iou", "giou"):
            both = (p.clone().requires_grad_(True), t.clone().requires_grad_(True), kind, 1e-7)
            samples.append(("rotated_box_iou", both))
            samples.append(("rotated_box_iou", (p.clone().requires_grad_(True), t, kind, 1e-7)))
            samples.append(("rotated_box_iou_backward", (p, t, grad, None, kind, 1e-7, True)))
            samples.append(("rotated_box_iou_backward", (p, t, None, grad, kind, 1e-7, False)))
            samples.append(("pairwise_rotated_iou", (p, t[:4], kind, 1e-7)))
    return samples


SAMPLES = opcheck_samples()


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=[f"{n}-{i}" for i, (n, _) in enumerate(SAMPLES)])
def test_opcheck(index: int) -> None:
    name, args = SAMPLES[index]
    torch.library.opcheck(getattr(OPS, name).default, args)


def test_bad_kind_is_an_error_of_the_operator() -> None:
    p, t = random_pairs(2, seed=19)
    with pytest.raises(RuntimeError, match="kind"):
        OPS.rotated_box_iou(p, t, "diou", 1e-7)
    assert math.isfinite(OPS.rotated_box_iou(p, t, "iou", 1e-7)[0].sum().item())

"""The Gaussian rotated losses on the native kernel, their default on CPU: the dispatch, values
and gradients against the reference composition over block tails, thread splits and
degenerate pairs, and the distances against float64 matrix algebra written here."""

from __future__ import annotations

import math

import pytest
import torch

import detloss
from detloss import functional as F
from tests._fused.test_ops import need_native
from tests._fused.test_ops_rotated import degenerate_pairs, rotated_pairs

#: (loss, options) for every transform of every distance
LOSSES = [
    (F.probiou_loss, {}),
    (F.probiou_loss, {"mode": "l2"}),
    (F.kld_loss, {}),
    (F.kld_loss, {"fun": "sqrt", "tau": 2.0}),
    (F.gwd_loss, {}),
    (F.gwd_loss, {"fun": "log1p", "tau": 1.0}),
    (F.kfiou_loss, {}),
    (F.kfiou_loss, {"mode": "linear", "beta": 0.0}),
    (F.kfiou_loss, {"mode": "exp", "beta": 0.5}),
]
IDS = [f"{fn.__name__}-{'-'.join(map(str, o.values())) or 'default'}" for fn, o in LOSSES]


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    detloss.set_backend(None)


def _values_and_grads(fn, options, pred, target, backend):
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    with detloss.use_backend(backend):
        loss = fn(p, t, reduction="none", **options)
    weight = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    grads = torch.autograd.grad((loss * weight).sum(), (p, t))
    return loss.detach(), *grads


def _assert_matches(pred, target, fn, options, rtol, atol):
    """Native against the reference composition; in float32 against the reference run in float64
    on the same inputs, allowed the tolerance plus twice the float32 reference's own error (a
    float32 loss of 1 - 1e-7 has gradients that float32 rounding moves by a tenth)."""
    ours = _values_and_grads(fn, options, pred, target, "native")
    theirs = _values_and_grads(fn, options, pred, target, "reference")
    truth = theirs
    if pred.dtype == torch.float32:
        truth = tuple(v.float() for v in _values_and_grads(fn, options, pred.double(), target.double(), "reference"))
    for a, b, c in zip(ours, theirs, truth):
        assert a.dtype == b.dtype
        assert bool(torch.isfinite(a).all())
        scale = c.abs().amax(dim=-1, keepdim=True).clamp(min=1.0) if c.dim() > 1 else 1.0
        a, b, c = a / scale, b / scale, c / scale
        allowed = atol + rtol * c.abs() + 2 * (b - c).abs()
        bad = (a - c).abs() > allowed
        assert not bool(bad.any()), (fn.__name__, options, bad.nonzero()[:5].tolist(), a[bad][:5], c[bad][:5])


TOLERANCE = {torch.float32: (1e-4, 4e-4), torch.float64: (1e-9, 2e-8)}


def test_the_losses_run_the_operator_on_cpu_by_default() -> None:
    need_native()
    pred, target = rotated_pairs(4, torch.float32)
    p = pred.clone().requires_grad_(True)
    for fn in (F.probiou_loss, F.kld_loss, F.gwd_loss, F.kfiou_loss):
        assert "detloss_rotated_gaussian_loss" in fn(p, target, reduction="none").grad_fn.name()
        with detloss.use_backend("reference"):
            assert "detloss" not in fn(p, target, reduction="none").grad_fn.name()
        with detloss.use_backend("fused"):  # no other kernel: the reference composition
            assert "detloss" not in fn(p, target, reduction="none").grad_fn.name()
    # the corner format has no operator
    corners = detloss.boxes.convert_rotated(p, "cxcywha", "xyxyxyxy")
    assert "detloss" not in F.probiou_loss(corners, corners.detach() + 1, box_format="xyxyxyxy").grad_fn.name()


@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 33, 1000, 32769])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_tails(n: int, dtype: torch.dtype) -> None:
    """Every count of pairs: whole vectors, vector tails, block tails, thread tasks."""
    need_native()
    pred, target = rotated_pairs(n, dtype, seed=n)
    for fn, options in (LOSSES[0], LOSSES[2], LOSSES[4], LOSSES[6]):
        _assert_matches(pred, target, fn, options, *TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(LOSSES)), ids=IDS)
def test_degenerate_pairs(dtype: torch.dtype, case: int) -> None:
    """Zero and negative sides, equal centres, squares, angles at and near multiples of pi/2,
    tiny and huge sides and offsets, angles beyond the polynomial reduction's range."""
    need_native()
    fn, options = LOSSES[case]
    rows = []
    for k in range(-4, 5):
        for delta in (0.0, 1e-7, -1e-7, 1e-3):
            a = k * math.pi / 2 + delta
            rows.append(([1.0, 2.0, 3.0, 3.0, a], [1.0, 2.0, 3.0, 3.0, 0.0]))  # squares
            rows.append(([1.0, 2.0, 5.0, 1.0, a], [1.0, 2.5, 5.0, 1.0, 0.0]))  # thin, equal sides
            rows.append(([0.0, 0.0, 4.0, 2.0, a], [0.0, 0.0, 2.0, 4.0, 0.0]))  # equal centres, sides swapped
    rows += [
        ([0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]),
        ([0.0, 0.0, 0.0, 3.0, 1.0], [0.1, 0.0, 2.0, 0.0, 0.0]),
        ([5.0, 5.0, 1e3, 1e-3, 0.2], [5.0, 5.0, 1e-3, 1e3, 0.2]),
        ([1e5, -1e5, 10.0, 20.0, 0.3], [1e5 + 1.0, -1e5, 12.0, 18.0, 0.25]),
        ([0.0, 0.0, 2.0, 1.0, 2e4], [0.1, 0.0, 2.0, 1.0, 2e4 + 0.5]),  # beyond the float reduction
        ([0.0, 0.0, 2.0, 1.0, 3e6], [0.1, 0.2, 2.0, 1.5, -3e6]),  # beyond the double reduction
    ]
    pred, target = zip(*rows)
    pred, target = torch.tensor(pred, dtype=dtype), torch.tensor(target, dtype=dtype)
    dp, dt = degenerate_pairs(dtype)
    _assert_matches(torch.cat((pred, dp)), torch.cat((target, dt)), fn, options, *TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_and_tiny_sides_stay_finite(dtype: torch.dtype) -> None:
    """Sides up to ~1e19 (float32) with their gradients finite, as the reference's."""
    need_native()
    sides = torch.tensor([1e-7, 1e-3, 1.0, 1e5, 1e10, 1e15, 1e19], dtype=dtype)
    w, h = torch.meshgrid(sides, sides, indexing="ij")
    n = w.numel()
    angle = torch.linspace(-3.0, 3.0, n, dtype=dtype)
    pred = torch.stack((torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype), w.flatten(), h.flatten(), angle), -1)
    target = torch.stack((w.flatten() * 0.1, -h.flatten() * 0.1, h.flatten(), w.flatten(), angle.flip(0)), -1)
    for fn, options in LOSSES:
        for backend in ("native", "reference"):
            values = _values_and_grads(fn, options, pred, target, backend)
            finite = [bool(torch.isfinite(v).all()) for v in values]
            if backend == "native":
                native_finite = finite
            else:  # finite wherever the reference is
                assert [a or not b for a, b in zip(native_finite, finite)] == [True] * 3, (fn.__name__, options)


def test_thread_splits_give_the_same_bits() -> None:
    need_native()
    pred, target = rotated_pairs(20_000, torch.float32, seed=3)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(_values_and_grads(F.probiou_loss, {}, pred, target, "native"))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_degrees_and_broadcasting_through_the_operator() -> None:
    need_native()
    pred, target = rotated_pairs(12, torch.float64, seed=4)
    pred_deg = torch.cat((pred[:, :4], torch.rad2deg(pred[:, 4:])), dim=1).reshape(3, 4, 5)
    target_deg = torch.cat((target[:, :4], torch.rad2deg(target[:, 4:])), dim=1).reshape(3, 4, 5)
    for fn, options in LOSSES:
        ours = fn(pred_deg, target_deg, angle_unit="deg", reduction="none", **options)
        with detloss.use_backend("reference"):
            theirs = fn(pred, target, reduction="none", **options).reshape(3, 4)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
        ours = fn(pred_deg, target_deg[:1], angle_unit="deg", reduction="none", **options)
        with detloss.use_backend("reference"):
            theirs = fn(pred_deg, target_deg[:1], angle_unit="deg", reduction="none", **options)
        assert ours.shape == (3, 4)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_half_inputs_compute_in_float32() -> None:
    need_native()
    pred, target = rotated_pairs(16, torch.float32, seed=6)
    loss = F.probiou_loss(pred.half(), target.half(), reduction="none")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.probiou_loss(pred.half().float(), target.half().float(), reduction="none"))


# ---------------------------------------------------------------- float64 matrix algebra


def _covariance(boxes: torch.Tensor, k: float) -> torch.Tensor:
    c, s = torch.cos(boxes[:, 4]), torch.sin(boxes[:, 4])
    rotation = torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)
    scales = torch.diag_embed(torch.stack((boxes[:, 2] ** 2, boxes[:, 3] ** 2), -1) / k)
    return rotation @ scales @ rotation.transpose(-1, -2)


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag_embed(values.clamp(min=0).sqrt()) @ vectors.transpose(-1, -2)


def _matrix_distance(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    delta = (pred[:, :2] - target[:, :2]).unsqueeze(-1)
    if kind == "bhattacharyya":
        sp, st = _covariance(pred, 12.0), _covariance(target, 12.0)
        mean = (sp + st) / 2
        mahalanobis = (delta.transpose(-1, -2) @ torch.linalg.solve(mean, delta)).squeeze((-1, -2))
        return mahalanobis / 8 + 0.5 * torch.log(torch.det(mean) / torch.sqrt(torch.det(sp) * torch.det(st)))
    sp, st = _covariance(pred, 4.0), _covariance(target, 4.0)
    if kind == "kld":
        inverse = torch.linalg.inv(sp)
        trace = torch.diagonal(inverse @ st, dim1=-2, dim2=-1).sum(-1)
        mahalanobis = (delta.transpose(-1, -2) @ inverse @ delta).squeeze((-1, -2))
        return 0.5 * (trace + mahalanobis - 2 + torch.log(torch.det(sp) / torch.det(st)))
    root = _sqrtm(sp)
    cross = torch.diagonal(_sqrtm(root @ st @ root), dim1=-2, dim2=-1).sum(-1)
    trace = torch.diagonal(sp + st, dim1=-2, dim2=-1).sum(-1)
    return (delta**2).sum((-1, -2)) + trace - 2 * cross


@pytest.mark.parametrize("kind", ["bhattacharyya", "kld", "gwd"])
def test_the_distances_equal_float64_matrix_algebra(kind: str) -> None:
    """The operator's distance (fun "none") against covariance matrices formed, inverted and
    rooted here, on pairs whose sides are 0.5 to 20 (no ill-conditioned matrix)."""
    need_native()
    g = torch.Generator().manual_seed(11)
    n = 3000
    target = torch.cat(
        (
            torch.rand(n, 2, generator=g) * 20,
            0.5 + torch.rand(n, 2, generator=g) * 19.5,
            (torch.rand(n, 1, generator=g) * 2 - 1) * 4,
        ),
        1,
    ).double()
    noise = torch.cat((torch.randn(n, 2, generator=g) * 3, torch.zeros(n, 2), torch.randn(n, 1, generator=g)), 1)
    pred = target + noise.double()
    pred[:, 2:4] = 0.5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 19.5
    eps = 1e-300  # the sides as given
    ours = torch.ops.detloss.rotated_gaussian_loss(pred, target, kind, "none", 0.0, eps)
    torch.testing.assert_close(ours, _matrix_distance(pred, target, kind), rtol=1e-9, atol=1e-9)
    ours32 = torch.ops.detloss.rotated_gaussian_loss(pred.float(), target.float(), kind, "none", 0.0, 1e-30)
    torch.testing.assert_close(
        ours32.double(), _matrix_distance(pred.float().double(), target.float().double(), kind), rtol=2e-3, atol=2e-4
    )

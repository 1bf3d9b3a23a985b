"""The native all-pairs kernel (``torch.ops.detloss.pairwise_similarity``, ``pairwise.cpp``)
against the reference composition of :func:`detloss.boxes.pairwise_iou`.

The reference is ``box_similarity`` on the broadcast pairs, autograd-free, as ``pairwise_iou``
computes it under the reference backend: every kind, float32 and float64, the fast path's
edge cases (identical, degenerate, inverted, tiny and huge boxes, points), and sizes that end
inside and across the kernel's column blocks (1,024 columns) and its thread tasks. No timing.
"""

from __future__ import annotations

import pytest
import torch

import detloss
from detloss.boxes import pairwise_iou
from detloss.boxes.iou import box_similarity
from detloss.testing import random_boxes
from tests._fused.test_fused import cases, need, two_threads  # noqa: F401  (two_threads: a fixture)

KINDS = ["iou", "giou", "diou", "ciou", "eiou", "siou"]
OP = torch.ops.detloss.pairwise_similarity.default


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    detloss.set_backend(None)


def reference(b1: torch.Tensor, b2: torch.Tensor, kind: str, eps: float = 1e-7) -> torch.Tensor:
    return box_similarity(b1[:, None, :], b2[None, :, :], kind, eps)[0]


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to the dtype's rounding, the same non-finite entries (none for finite boxes)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.isfinite(expected).all() and torch.isfinite(actual).all()
    tol = 2e-6 if expected.dtype == torch.float32 else 1e-13
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


def edge_boxes(dtype: torch.dtype) -> torch.Tensor:
    """Both sides of every pair of the fast path's edge cases, as one box set."""
    p, t = cases(torch.float64)
    return torch.cat((p, t)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_native_pairwise_equals_reference_on_edge_cases(kind: str, dtype: torch.dtype) -> None:
    need("native")
    boxes = edge_boxes(dtype)
    close(OP(boxes, boxes, kind, 1e-7), reference(boxes, boxes, kind))
    close(OP(boxes[:7], boxes, kind, 1e-3), reference(boxes[:7], boxes, kind, 1e-3))  # another eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,m", [(1, 1), (3, 1023), (5, 1024), (2, 1025), (37, 2049 + 7), (700, 61)])
@pytest.mark.usefixtures("two_threads")
def test_native_pairwise_every_block_and_tail(kind: str, dtype: torch.dtype, n: int, m: int) -> None:
    """Column blocks of 1,024 (ending inside, at and past one), rows split across two threads
    in tasks of 32,768 pairs (700 x 61: tasks of 537 rows, the last one short)."""
    need("native")
    g = torch.Generator().manual_seed(n * 7919 + m)
    b1 = random_boxes(n, generator=g).to(dtype)
    b2 = random_boxes(m, generator=g).to(dtype)
    close(OP(b1, b2, kind, 1e-7), reference(b1, b2, kind))


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_iou_runs_the_native_kernel_without_gradient(kind: str, monkeypatch) -> None:
    """pairwise_iou: the native kernel on CPU under the native backend (same values as under the
    reference backend), the reference composition where a gradient is needed."""
    need("native")
    boxes = edge_boxes(torch.float32)
    with detloss.use_backend("reference"):
        expected = pairwise_iou(boxes, boxes[:11], kind)
    calls = []
    from detloss import _backend

    real = _backend._PAIRWISE
    monkeypatch.setattr(_backend, "_PAIRWISE", lambda *args: calls.append(args[2]) or real(*args))
    with detloss.use_backend("native"):
        actual = pairwise_iou(boxes, boxes[:11], kind)
        assert calls == [kind]
        grad_input = boxes.clone().requires_grad_(True)
        with_grad = pairwise_iou(grad_input, boxes[:11], kind)
    assert calls == [kind] and with_grad.requires_grad  # the reference path: autograd through it
    close(actual, expected)
    close(with_grad.detach(), expected)


def test_native_pairwise_empty_and_formats() -> None:
    need("native")
    boxes = random_boxes(5, generator=torch.Generator().manual_seed(1))
    detloss.set_backend("native")
    assert pairwise_iou(boxes[:0], boxes).shape == (0, 5)
    assert pairwise_iou(boxes, boxes[:0], "ciou").shape == (5, 0)
    xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1)
    close(pairwise_iou(xywh, xywh, "giou", box_format="xywh"), reference(boxes, boxes, "giou"))

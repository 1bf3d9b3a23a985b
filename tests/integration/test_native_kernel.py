"""The native kernel builds against the integration environment's torch (2.14: C++20 headers)."""

from __future__ import annotations

import shutil

import pytest
import torch

import detloss


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on PATH")
def test_native_kernel_builds_and_runs_under_this_torch() -> None:
    with detloss.use_backend("native"):
        info = detloss.backend_info()
        assert info.cpu == "native", f"torch {torch.__version__}: {info.native_failure}"
        pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
        loss = detloss.functional.giou_loss(pred, torch.tensor([[4.0, 0.0, 6.0, 1.0]]))
    loss.backward()
    # enclosing 6 x 2 = 12, union 4 + 2 = 6, IoU 0: 1 + 6/12
    assert loss.item() == pytest.approx(1.5, abs=1e-6)
    assert torch.isfinite(pred.grad).all()

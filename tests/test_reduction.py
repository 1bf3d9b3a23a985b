from __future__ import annotations

import pytest
import torch

from detloss.errors import DetLossError
from detloss.reduction import global_avg_factor, reduce_loss


def test_reductions_by_hand() -> None:
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert reduce_loss(loss, "sum").item() == 10.0
    assert reduce_loss(loss, "mean").item() == 2.5
    assert reduce_loss(loss, "mean", avg_factor=4.0).item() == pytest.approx(10 / 4)
    # weight broadcasts over columns: 1*1 + 0*2 + 1*3 + 0*4 = 4
    weighted = reduce_loss(loss, "sum", weight=torch.tensor([1.0, 0.0]))
    assert weighted.item() == 4.0
    assert torch.equal(
        reduce_loss(loss, "none", weight=torch.tensor([[2.0], [1.0]])), torch.tensor([[2.0, 4.0], [3.0, 4.0]])
    )


def test_empty_is_zero_with_gradient() -> None:
    x = torch.zeros(0, 3, requires_grad=True)
    for kwargs in ({"reduction": "mean"}, {"reduction": "sum"}, {"reduction": "mean", "avg_factor": 0}):
        out = reduce_loss(x * 2, **kwargs)  # type: ignore[arg-type]
        assert out.item() == 0.0 and not torch.isnan(out)
        (grad,) = torch.autograd.grad(out, x)
        assert grad.shape == (0, 3)


def test_a_normaliser_below_one_counts_as_one() -> None:
    """No positives (avg_factor 0) on a non-zero loss gives the plain sum, not sum / eps (4e7)."""
    loss = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for avg_factor in (0, 0.0, 0.25, torch.tensor(0.0), torch.tensor(0), torch.tensor([0.5])):
        out = reduce_loss(loss, "mean", avg_factor=avg_factor)
        assert out.item() == 6.0, avg_factor
        (grad,) = torch.autograd.grad(out, loss)
        assert grad.tolist() == [1.0, 1.0, 1.0]
    assert reduce_loss(loss, "mean", avg_factor=1.5).item() == 4.0  # from 1 on, the number itself
    assert reduce_loss(loss, "mean", avg_factor=torch.tensor(3)).item() == 2.0  # an integer count


def test_tensor_avg_factor() -> None:
    loss = torch.tensor([2.0, 4.0])
    assert reduce_loss(loss, "mean", avg_factor=torch.tensor(3.0)).item() == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"reduction": "sum", "avg_factor": 2.0}, "avg_factor"),
        ({"reduction": "none", "avg_factor": 2.0}, "avg_factor"),
        ({"reduction": "mean", "avg_factor": -1.0}, "avg_factor"),
        ({"reduction": "avg"}, "reduction"),
        ({"reduction": "mean", "weight": torch.ones(3)}, "weight"),
        ({"reduction": "mean", "weight": torch.ones(2, dtype=torch.long)}, "weight"),
    ],
)
def test_errors_name_the_argument(kwargs: dict, argument: str) -> None:
    with pytest.raises(DetLossError, match=f"`{argument}`"):
        reduce_loss(torch.ones(2), **kwargs)


def test_global_avg_factor_without_distributed_clamps_to_one() -> None:
    assert global_avg_factor(0) == 1.0
    assert global_avg_factor(0.25) == 1.0
    assert global_avg_factor(12) == 12.0
    out = global_avg_factor(torch.tensor(0.0))
    assert isinstance(out, torch.Tensor) and out.item() == 1.0

"""Hungarian matching against a brute-force search over every assignment."""

from __future__ import annotations

import itertools
import sys
import warnings

import pytest
import torch

from detloss import DetLossError
from detloss.assign import MatchingCost, NonFiniteCostWarning, hungarian_match


def _brute_force(cost: list[list[float]]) -> float:
    """Least total cost over all one-to-one matchings of min(rows, columns) pairs."""
    rows, cols = len(cost), len(cost[0]) if cost else 0
    if rows == 0 or cols == 0:
        return 0.0
    if rows >= cols:  # every column gets a distinct row
        return min(sum(cost[r][c] for c, r in enumerate(perm)) for perm in itertools.permutations(range(rows), cols))
    return min(sum(cost[r][c] for r, c in enumerate(perm)) for perm in itertools.permutations(range(cols), rows))


def _check_matching(cost: torch.Tensor, counts: list[int]) -> None:
    b, q, t = hungarian_match(cost, counts)
    assert b.dtype == q.dtype == t.dtype == torch.int64
    for image, n in enumerate(counts):
        mine = b == image
        rows, cols = q[mine].tolist(), t[mine].tolist()
        queries = cost.shape[1]
        assert len(rows) == min(queries, n)
        assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)  # one-to-one
        assert all(0 <= c < n for c in cols)  # padding never matched
        assert rows == sorted(rows)
        total = sum(float(cost[image, r, c]) for r, c in zip(rows, cols))
        block = cost[image, :, :n].double().tolist()
        assert total == pytest.approx(_brute_force(block), abs=1e-9)


@pytest.mark.parametrize("seed", range(12))
def test_equals_brute_force_on_random_problems(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    queries, columns = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
    cost = torch.rand(3, queries, columns, generator=g, dtype=torch.float64) * 10 - 3
    counts = torch.randint(0, columns + 1, (3,), generator=g).tolist()
    counts[0] = columns  # at least one full image
    _check_matching(cost, counts)


def test_more_objects_than_queries() -> None:
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(2, 2, 5, generator=g)
    _check_matching(cost, [5, 4])
    _b, q, _ = hungarian_match(cost, [5, 4])
    assert q.tolist() == [0, 1, 0, 1]  # every query matched in each image


def test_integer_cost_by_hand() -> None:
    # rows 0, 1, 2 take columns 1, 0, 2: 1 + 2 + 2 = 5; any other matching costs more
    cost = torch.tensor([[[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]])
    b, q, t = hungarian_match(cost)
    assert (b.tolist(), q.tolist(), t.tolist()) == ([0, 0, 0], [0, 1, 2], [1, 0, 2])


def test_padding_column_never_matched_even_when_cheapest() -> None:
    cost = torch.tensor([[[5.0, -100.0], [6.0, -100.0]]])
    _b, q, t = hungarian_match(cost, [1])
    assert t.tolist() == [0] and q.tolist() == [0]


def test_images_without_objects_and_empty_batches() -> None:
    b, q, t = hungarian_match(torch.rand(2, 3, 4), [0, 0])
    assert b.numel() == q.numel() == t.numel() == 0
    b, q, t = hungarian_match(torch.rand(0, 3, 4), [])
    assert b.numel() == 0
    b, q, t = hungarian_match(torch.rand(2, 3, 0), torch.tensor([0, 0]))
    assert b.numel() == 0
    b, q, t = hungarian_match(torch.rand(1, 3, 2), [1])  # one object
    assert len(t) == 1 and t.tolist() == [0]


def test_nonfinite_entries_are_replaced_counted_and_warned() -> None:
    cost = torch.tensor([[[float("nan"), 1.0], [2.0, float("inf")], [0.5, 0.5]]])
    with pytest.warns(NonFiniteCostWarning, match="2 non-finite"):
        _b, q, t = hungarian_match(cost)
    # NaN and inf became huge; of the finite matchings 0 -> 1, 2 -> 0 (1 + 0.5) beats
    # 1 -> 0, 2 -> 1 (2 + 0.5) and 0 -> 1, 1 -> 0 (1 + 2)
    assert (q.tolist(), t.tolist()) == ([0, 2], [1, 0])


def test_nonfinite_padding_is_not_reported() -> None:
    cost = torch.tensor([[[1.0, float("nan")], [2.0, float("nan")]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hungarian_match(cost, [1])


def test_float16_cost_and_tensor_counts() -> None:
    cost = torch.rand(2, 4, 3).half()
    b, _q, _t = hungarian_match(cost, torch.tensor([3, 2]))
    _check_matching(cost.double(), [3, 2])
    assert len(b) == 5


def test_detr_style_end_to_end_matches_each_object_to_its_query() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 4, 4, generator=g) * 0.3 + 0.2  # cxcywh
    labels = torch.randint(0, 3, (2, 4), generator=g)
    perm = torch.randperm(6, generator=g)
    boxes = torch.rand(2, 6, 4, generator=g) * 0.3 + 0.2
    logits = torch.full((2, 6, 3), -5.0)
    for j in range(4):  # query perm[j] predicts object j exactly
        boxes[:, perm[j]] = target[:, j]
        logits[torch.arange(2), perm[j], labels[:, j]] = 5.0
    cost, bad = MatchingCost.dino()(logits, boxes, labels, target, [4, 3])
    b, q, t = hungarian_match(cost, [4, 3])
    assert int(bad) == 0
    for image, n in enumerate([4, 3]):
        got = dict(zip(t[b == image].tolist(), q[b == image].tolist()))
        assert got == {j: int(perm[j]) for j in range(n)}


def test_missing_scipy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # import fails as if absent
    with pytest.raises(ImportError, match=r"pip install detloss\[assign\]"):
        hungarian_match(torch.rand(1, 2, 2))


def test_bad_arguments() -> None:
    with pytest.raises(DetLossError, match="hungarian_match\\(\\): argument `cost`"):
        hungarian_match(torch.rand(2, 2))
    with pytest.raises(DetLossError, match="hungarian_match\\(\\): argument `num_targets`"):
        hungarian_match(torch.rand(2, 3, 2), [1, 3])
    with pytest.raises(DetLossError, match="hungarian_match\\(\\): argument `num_targets`"):
        hungarian_match(torch.rand(2, 3, 2), [1])
    with pytest.raises(DetLossError, match="hungarian_match\\(\\): argument `num_targets`"):
        hungarian_match(torch.rand(1, 3, 2), torch.tensor([1.0]))

"""One-to-one matching of queries to objects: the Hungarian algorithm, image by image.

DETR (Carion et al., ECCV 2020, Eq. 1) matches each object of an image to exactly one query
by the assignment of least total cost, found by the Hungarian algorithm (Kuhn, 1955);
``scipy.optimize.linear_sum_assignment`` solves it. scipy is needed only here, imported on
first use: ``pip install detloss[assign]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from detloss._checks import check_floating
from detloss.assign.costs import NONFINITE_COST, NumTargets, _check_tensor_dim
from detloss.errors import DetLossError

__all__ = ["NonFiniteCostWarning", "hungarian_match"]


class NonFiniteCostWarning(RuntimeWarning):
    """A cost matrix given to :func:`hungarian_match` held NaN or infinite entries (replaced)."""


def _linear_sum_assignment() -> Callable[..., Any]:
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:
        raise ImportError(
            "hungarian_match() needs scipy (scipy.optimize.linear_sum_assignment): pip install detloss[assign]"
        ) from err
    return linear_sum_assignment  # type: ignore[no-any-return]


def _counts(num_targets: NumTargets, batch: int, columns: int) -> list[int]:
    """Objects per image as host ints (the one read of a device tensor), checked against the cost."""
    where = "hungarian_match"
    if isinstance(num_targets, torch.Tensor):
        if num_targets.is_floating_point() or num_targets.dtype == torch.bool or num_targets.dim() != 1:
            got = f"{num_targets.dtype} of shape {tuple(num_targets.shape)}"
            raise DetLossError.bad_argument(where, "num_targets", "an integer tensor (B,)", got)
        counts = num_targets.tolist()
    else:
        counts = list(num_targets)
    ok = len(counts) == batch and all(isinstance(n, int) and not isinstance(n, bool) for n in counts)
    if not ok or not all(0 <= n <= columns for n in counts):
        raise DetLossError.bad_argument(where, "num_targets", f"{batch} counts in [0, {columns}]", counts)
    return counts


def hungarian_match(
    cost: torch.Tensor, num_targets: NumTargets | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Least-cost one-to-one matching per image: ``(batch_idx, pred_idx, target_idx)``.

    For each image ``b`` the solver sees only the valid block ``cost[b, :, :num_targets[b]]``
    (``Q`` queries by ``n_b`` objects; padded columns are never read, so never matched) and
    returns ``min(Q, n_b)`` pairs minimising the summed cost: every object gets a query when
    ``n_b <= Q``; with more objects than queries every query gets an object and the rest stay
    unmatched. The matrix moves to the host once, as float64, for the whole batch.

    Non-finite entries of the valid blocks (a NaN prediction, an overflowed cost) never reach
    the solver: each becomes :data:`detloss.assign.NONFINITE_COST`, and a
    :class:`NonFiniteCostWarning` says how many there were. (:class:`MatchingCost` already
    replaced and counted them if it built ``cost``.)

    Args:
        cost: ``(B, Q, T)`` float cost (any device; detached here).
        num_targets: objects per image, a sequence of ints or an integer tensor ``(B,)``,
            objects first and padding last; all ``T`` when omitted.

    Returns:
        Three int64 tensors of one length on ``cost``'s device: the image, the query and the
        object (column within the image) of each matched pair, by image, then by query.

    Raises:
        ImportError: scipy is not installed (``pip install detloss[assign]``).

    Example:
        >>> cost = torch.tensor([[[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]],
        ...                      [[1.0, 9.0, 9.0], [0.0, 9.0, 9.0], [9.0, 9.0, 9.0]]])
        >>> b, q, t = hungarian_match(cost, num_targets=[3, 1])  # image 1 has one object
        >>> b.tolist(), q.tolist(), t.tolist()  # image 0: 1 + 2 + 2 = 5; image 1: query 1
        ([0, 0, 0, 1], [0, 1, 2, 1], [1, 0, 2, 0])
    """
    where = "hungarian_match"
    check_floating(where, "cost", cost)
    _check_tensor_dim(where, "cost", cost, 3, "(B, Q, T)")
    batch, _, columns = cost.shape
    counts = [columns] * batch if num_targets is None else _counts(num_targets, batch, columns)
    solve = _linear_sum_assignment()
    host = cost.detach().to(device="cpu", dtype=torch.float64).numpy()
    rows: list[torch.Tensor] = []
    cols: list[torch.Tensor] = []
    images: list[torch.Tensor] = []
    nonfinite = 0
    for b, n in enumerate(counts):
        block = host[b, :, :n]
        finite = torch.from_numpy(block).isfinite()
        if not bool(finite.all()):
            nonfinite += int((~finite).sum())
            block = torch.from_numpy(block).where(finite, NONFINITE_COST).numpy()
        r, c = solve(block)
        rows.append(torch.from_numpy(r).long())
        cols.append(torch.from_numpy(c).long())
        images.append(torch.full((len(r),), b, dtype=torch.long))
    if nonfinite:
        warnings.warn(
            f"hungarian_match(): {nonfinite} non-finite cost entries replaced by {NONFINITE_COST:g}",
            NonFiniteCostWarning,
            stacklevel=2,
        )
    empty = torch.zeros(0, dtype=torch.long)
    out = [torch.cat(x) if x else empty for x in (images, rows, cols)]
    return out[0].to(cost.device), out[1].to(cost.device), out[2].to(cost.device)

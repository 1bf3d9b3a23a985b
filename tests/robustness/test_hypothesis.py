"""Hypothesis over raw numbers: any finite input of the right shape, in any dtype mode.

The seeded generators of :mod:`detloss.experiments.fuzz` build structured cases (touching,
nested, ...); here hypothesis draws the numbers themselves (every coordinate anywhere in
[-1e6, 1e6], so inverted, degenerate and far-apart boxes come up by chance too; rotated
boxes with such centres and sides and angles anywhere in [-1e3, 1e3] rad or at multiples of
pi/2; logits in [-1e4, 1e4]; targets at exactly 0 and 1 or anywhere between) and shrinks a
failure to a small example. The same checks run: finite value, finite gradient, agreement with float64.

``DETLOSS_FUZZ=long`` raises the number of examples per loss from 12 to 300.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss import available_losses
from detloss.experiments.fuzz import DTYPE_MODES, LAYOUTS, Case, check_case
from detloss.registry import get_spec
from detloss.testing import NUM_CLASSES, REG_MAX, sample_inputs

EXAMPLES = 300 if os.environ.get("DETLOSS_FUZZ", "quick") == "long" else 12
KNOWN_KINDS = (
    "boxes",
    "values",
    "binary_logits",
    "class_logits",
    "distribution",
    "distill",
    "iou_aware",
    "signed_scores",
    "rotated_boxes",
)
LOSSES = [k for k in available_losses() if get_spec(k).inputs in KNOWN_KINDS]

coordinate = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    st.floats(-10.0, 10.0, allow_nan=False),
    st.sampled_from([0.0, 1e-6, -1e-6, 1.0, 1e6, -1e6]),
)
logit = st.one_of(st.floats(-1e4, 1e4, allow_nan=False), st.sampled_from([0.0, 17.0, -17.0, 88.0, -88.0, 1e4, -1e4]))
angle = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False),
    st.floats(-4.0, 4.0, allow_nan=False),
    st.sampled_from([0.0, 1e-7, -1e-7]).map(float) | st.integers(-8, 8).map(lambda k: k * math.pi / 2),
)
probability = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))


def tensor(draw: st.DrawFn, element: st.SearchStrategy[float], *shape: int) -> torch.Tensor:
    count = 1
    for s in shape:
        count *= s
    values = draw(st.lists(element, min_size=count, max_size=count))
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def box_pairs(draw: st.DrawFn, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    target = tensor(draw, coordinate, n, 4)
    how = draw(st.sampled_from(["free", "near", "identical"]))
    if how == "identical":
        return target.clone(), target
    if how == "near":
        return target + tensor(draw, st.floats(-2.0, 2.0, allow_nan=False), n, 4), target
    return tensor(draw, coordinate, n, 4), target


def rotated_pairs(draw: st.DrawFn, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.cat((tensor(draw, coordinate, n, 4), tensor(draw, angle, n, 1)), dim=-1)
    how = draw(st.sampled_from(["free", "near", "identical", "quarter_turn"]))
    if how == "identical":
        return target.clone(), target
    if how == "quarter_turn":  # the same rectangle: sides swapped, turned by pi/2
        pred = target[:, [0, 1, 3, 2, 4]].clone()
        pred[:, 4] += math.pi / 2
        return pred, target
    if how == "near":
        return target + tensor(draw, st.floats(-2.0, 2.0, allow_nan=False), n, 5), target
    return torch.cat((tensor(draw, coordinate, n, 4), tensor(draw, angle, n, 1)), dim=-1), target


@st.composite
def inputs_for(draw: st.DrawFn, key: str) -> tuple[torch.Tensor, ...]:
    kind = get_spec(key).inputs
    n = draw(st.integers(0, 4))
    if kind == "boxes":
        return box_pairs(draw, n)
    if kind == "values":
        return tensor(draw, coordinate, n, 4), tensor(draw, coordinate, n, 4)
    if kind == "binary_logits":
        return tensor(draw, logit, n, NUM_CLASSES), tensor(draw, probability, n, NUM_CLASSES)
    if kind == "class_logits":
        labels = draw(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=n, max_size=n))
        return tensor(draw, logit, n, NUM_CLASSES), torch.tensor(labels, dtype=torch.int64)
    if kind == "distribution":
        return tensor(draw, logit, n, 4, REG_MAX + 1), tensor(draw, st.floats(0.0, float(REG_MAX)), n, 4)
    if kind == "distill":
        return tensor(draw, logit, n, NUM_CLASSES), tensor(draw, logit, n, NUM_CLASSES)
    if kind == "iou_aware":
        return (tensor(draw, logit, n), *box_pairs(draw, n))
    if kind == "rotated_boxes":
        return rotated_pairs(draw, n)
    labels = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n))
    return tensor(draw, logit, n), torch.tensor(labels, dtype=torch.float64)


@pytest.mark.parametrize("key", LOSSES)
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_any_finite_input(key: str, data: st.DataObject) -> None:
    inputs = data.draw(inputs_for(key), label="inputs")
    dtype = data.draw(st.sampled_from(DTYPE_MODES), label="dtype")
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    reduction = data.draw(st.sampled_from(["none", "mean", "sum"]), label="reduction")
    n = inputs[0].shape[0] if inputs[0].dim() else 0
    case = Case(
        loss=key,
        dtype=dtype,
        family="hypothesis",
        layout=layout if n else "contiguous",
        reduction=reduction,
        inputs=inputs,
        grad=tuple(bool(t.requires_grad) for t in sample_inputs(key, 1)),
        options=dict(getattr(get_spec(key), "call_options", None) or ()),
        broadcast_input=len(inputs) - 1,
    )
    outcome = check_case(case)
    assert outcome.ok, f"{case.describe()}: [{outcome.failure}] {outcome.detail}"

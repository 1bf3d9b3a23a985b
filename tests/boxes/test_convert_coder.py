from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detloss.boxes import BOX_FORMATS, BoxCoder, area, convert
from detloss.errors import DetLossError


def test_convert_by_hand() -> None:
    ltwh = torch.tensor([120.0, 80.0, 200.0, 150.0])  # left, top, width, height (COCO's layout)
    torch.testing.assert_close(convert(ltwh, "xywh", "xyxy"), torch.tensor([120.0, 80.0, 320.0, 230.0]))
    torch.testing.assert_close(convert(ltwh, "xywh", "cxcywh"), torch.tensor([220.0, 155.0, 200.0, 150.0]))
    torch.testing.assert_close(
        convert(torch.tensor([5.0, 5.0, 4.0, 2.0]), "cxcywh", "xyxy"), torch.tensor([3.0, 4.0, 7.0, 6.0])
    )


@given(st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4))
def test_round_trips(values: list[float]) -> None:
    boxes = torch.tensor(values, dtype=torch.float64)
    for a, b in itertools.permutations(BOX_FORMATS, 2):
        torch.testing.assert_close(convert(convert(boxes, a, b), b, a), boxes, atol=1e-9, rtol=1e-12)  # type: ignore[arg-type]


def test_area_counts_inverted_as_zero() -> None:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0], [3.0, 3.0, 1.0, 5.0], [0.0, 0.0, 0.0, 9.0]])
    torch.testing.assert_close(area(boxes), torch.tensor([8.0, 0.0, 0.0]))
    torch.testing.assert_close(area(torch.tensor([[1.0, 1.0, 4.0, 2.0]]), "xywh"), torch.tensor([8.0]))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: convert(torch.zeros(2, 3), "xyxy", "xywh"), "boxes"),
        (lambda: convert(torch.zeros(2, 4), "ltrb", "xywh"), "in_fmt"),
        (lambda: convert(torch.zeros(2, 4), "xyxy", "xyhw"), "out_fmt"),
        (lambda: area(torch.zeros(2, 4, dtype=torch.int32)), "boxes"),
        (lambda: BoxCoder(weights=(1.0, 1.0, 1.0)), "weights"),
        (lambda: BoxCoder().encode(torch.zeros(2, 4), torch.zeros(3, 4)), "gt"),
    ],
)
def test_bad_input_names_the_argument(call: object, argument: str) -> None:
    with pytest.raises(DetLossError, match=f"`{argument}`"):
        call()  # type: ignore[operator]


def test_encode_by_hand() -> None:
    # anchor centre (5, 5), 10 x 10; gt centre (10, 10), 20 x 5.
    # t = (10*(10-5)/10, 10*(10-5)/10, 5 ln 2, 5 ln 0.5) = (5, 5, 3.4657, -3.4657)
    deltas = BoxCoder().encode(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 7.5, 20.0, 12.5]]))
    torch.testing.assert_close(deltas, torch.tensor([[5.0, 5.0, 5 * math.log(2), -5 * math.log(2)]]))


@given(st.integers(0, 2**31 - 1))
def test_encode_decode_round_trip(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)

    def boxes(n: int) -> torch.Tensor:
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 500
        wh = 4 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 196  # ratios < 62.5: below the clamp
        return torch.cat((xy, xy + wh), dim=-1)

    anchors, gt = boxes(16), boxes(16)
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, gt)), gt, atol=1e-9, rtol=1e-9)


def test_decode_clamps_huge_deltas() -> None:
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = BoxCoder().decode(anchors, torch.tensor([[0.0, 0.0, 1e6, 1e6]]))
    assert torch.isfinite(out).all()
    # width clamped at 16 * exp(log(1000 / 16)) = 1000
    assert (out[0, 2] - out[0, 0]).item() == pytest.approx(1000.0, rel=1e-5)

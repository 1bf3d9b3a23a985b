"""Bad input to the library: a DetLossError that names the argument, never a torch error.

Every registered loss is probed the same way (a loss added to the registry is covered the
day it lands): wrong batch sizes, wrong last dimensions, non-floating and non-tensor inputs,
inputs on another device (``meta`` against ``cpu``: the only second device on a CPU-only
machine), unknown names for every string option, non-booleans for every flag, NaN and
strings for every numeric option, negative values where a name says it must be >= 0, and a
bad ``weight`` / ``avg_factor`` / ``reduction``; then the module forms, ``build_loss`` and
the public geometry functions.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch

import detloss
from detloss import available_losses, build_loss
from detloss.boxes import (
    BoxCoder,
    aligned_iou,
    area,
    convert,
    convert_rotated,
    gaussian_distance,
    kfiou,
    pairwise_iou,
    pairwise_rotated_iou,
    rotated_iou,
    rotated_nms,
)
from detloss.errors import DetLossError
from detloss.nn import function_options
from detloss.reduction import reduce_loss
from detloss.registry import get_spec
from detloss.testing import sample_inputs

LOSSES = available_losses()
#: Hyper-parameters that are non-negative by their meaning wherever they appear (a
#: probability, an exponent, a scale, a count, a smoothing amount, a bin count).
NON_NEGATIVE = {
    "alpha", "gamma", "beta", "eps", "delta", "ratio", "temperature", "theta", "constant", "momentum",
    "bins", "label_smoothing", "pos_weight", "iou_mean", "tau",
}  # fmt: skip


def call_options(key: str) -> dict[str, Any]:
    return dict(getattr(get_spec(key), "call_options", None) or ())


def input_names(key: str) -> list[str]:
    """Names of the positional inputs, as the function's signature spells them."""
    params = inspect.signature(get_spec(key).function).parameters.values()
    return [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD][: len(sample_inputs(key, 1))]


def replaced(inputs: tuple[Any, ...], i: int, value: Any) -> tuple[Any, ...]:
    return (*inputs[:i], value, *inputs[i + 1 :])


def call(key: str, inputs: tuple[Any, ...], **kw: Any) -> torch.Tensor:
    return get_spec(key).function(*inputs, **{**call_options(key), **kw})


def expect_error(key: str, names: list[str] | str, inputs: tuple[Any, ...], **kw: Any) -> DetLossError:
    """The call must raise DetLossError whose message has the function and one of ``names``."""
    names = [names] if isinstance(names, str) else names
    with pytest.raises(DetLossError) as info:
        call(key, inputs, **kw)
    message = str(info.value)
    fn = get_spec(key).function.__name__
    assert f"{fn}()" in message, f"message does not name {fn}(): {message}"
    assert any(f"`{n}`" in message for n in names), f"message names none of {names}: {message}"
    return info.value


def test_every_loss_is_probed() -> None:
    assert len(LOSSES) >= 5


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("key", LOSSES)
def test_batch_size_mismatch(key: str) -> None:
    names = input_names(key)
    good = sample_inputs(key, 3, requires_grad=False)
    longer = sample_inputs(key, 4, requires_grad=False)
    for i in range(len(good)):
        if good[i].dim() == 0:
            continue
        inputs = tuple(longer[j] if j == i else good[j] for j in range(len(good)))
        expect_error(key, names, inputs)


@pytest.mark.parametrize("key", LOSSES)
def test_wrong_last_dimension(key: str) -> None:
    """Boxes must have 4 numbers (rotated boxes 5); elementwise targets must match their prediction."""
    names = input_names(key)
    kind = get_spec(key).inputs
    good = sample_inputs(key, 3, requires_grad=False)
    if kind in ("boxes", "rotated_boxes"):
        which = [0, 1]
    elif kind == "iou_aware":
        which = [1, 2]
    elif kind in ("values", "binary_logits", "distill", "distribution"):
        which = [1]
    else:
        pytest.skip(f"input kind {kind!r}: the last dimension is free (number of classes)")
    for i in which:
        wide = torch.cat((good[i], good[i][..., :1]), dim=-1)
        named = names[i] if kind in ("boxes", "iou_aware", "rotated_boxes") else names
        expect_error(key, named, replaced(good, i, wide))


@pytest.mark.parametrize("key", LOSSES)
def test_zero_dimensional_prediction(key: str) -> None:
    good = sample_inputs(key, 3, requires_grad=False)
    if get_spec(key).inputs == "values":
        pytest.skip("elementwise regression: two 0-d tensors are a valid pair")
    expect_error(key, input_names(key), replaced(good, 0, torch.tensor(1.0)))


# ---------------------------------------------------------------- dtypes and types


def differentiated(key: str) -> list[int]:
    kind = get_spec(key).inputs
    idx = [i for i, t in enumerate(sample_inputs(key, 1)) if t.requires_grad]
    if kind in ("boxes", "rotated_boxes"):
        idx = [0, 1]  # box targets are boxes: floating too
    if kind == "iou_aware":
        idx = [0, 1, 2]
    return idx


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
@pytest.mark.parametrize("key", LOSSES)
def test_non_floating_inputs(key: str, dtype: torch.dtype) -> None:
    names = input_names(key)
    good = sample_inputs(key, 3, requires_grad=False)
    for i in differentiated(key):
        bad = good[i].to(dtype)
        expect_error(key, names[i], replaced(good, i, bad))


@pytest.mark.parametrize("key", LOSSES)
def test_non_tensor_inputs(key: str) -> None:
    names = input_names(key)
    good = sample_inputs(key, 3, requires_grad=False)
    for i in range(len(good)):
        expect_error(key, names[i], replaced(good, i, good[i].tolist()))
        expect_error(key, names[i], replaced(good, i, None))


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("key", LOSSES)
def test_inputs_on_different_devices(key: str) -> None:
    """One input on ``meta`` (no data, any machine), the others on ``cpu``."""
    names = input_names(key)
    good = sample_inputs(key, 3, requires_grad=False)
    for i in range(len(good)):
        expect_error(key, names, replaced(good, i, good[i].to("meta")))


@pytest.mark.parametrize("key", LOSSES)
def test_weight_on_another_device(key: str) -> None:
    good = sample_inputs(key, 3, requires_grad=False)
    shape = call(key, good, reduction="none").shape
    expect_error(key, "weight", good, weight=torch.ones(shape, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("key", LOSSES)
def test_inputs_on_cpu_and_cuda(key: str) -> None:
    names = input_names(key)
    good = sample_inputs(key, 3, requires_grad=False)
    for i in range(len(good)):
        expect_error(key, names, replaced(good, i, good[i].cuda()))


# ---------------------------------------------------------------- options


def options(key: str) -> list[inspect.Parameter]:
    fixed = call_options(key)
    return [p for p in function_options(get_spec(key).function) if p.name not in fixed]


@pytest.mark.parametrize("key", LOSSES)
def test_unknown_names_of_string_options(key: str) -> None:
    good = sample_inputs(key, 3, requires_grad=False)
    names = [p.name for p in options(key) if isinstance(p.default, str)]
    assert "reduction" in names
    for name in names:
        expect_error(key, name, good, **{name: "no-such-choice"})
        expect_error(key, name, good, **{name: 3})


@pytest.mark.parametrize("key", LOSSES)
def test_flags_must_be_booleans(key: str) -> None:
    """``alpha_gate="no"`` must not silently mean True."""
    good = sample_inputs(key, 3, requires_grad=False)
    flags = [p.name for p in options(key) if isinstance(p.default, bool)]
    if not flags:
        pytest.skip("no boolean options")
    for name in flags:
        for bad in ("no", 1, None):
            expect_error(key, name, good, **{name: bad})


def numeric_options(key: str) -> list[str]:
    return [
        p.name
        for p in options(key)
        if (isinstance(p.default, (int, float)) and not isinstance(p.default, bool))
        or (p.default is None and p.name in NON_NEGATIVE)
    ]


@pytest.mark.parametrize("key", LOSSES)
def test_numeric_options_reject_nan_and_strings(key: str) -> None:
    good = sample_inputs(key, 3, requires_grad=False)
    names = numeric_options(key)
    if not names:
        pytest.skip("no numeric options")
    for name in names:
        for bad in (math.nan, "1.0", [1.0]):
            expect_error(key, name, good, **{name: bad})


@pytest.mark.parametrize("key", LOSSES)
def test_non_negative_options_reject_negative_values(key: str) -> None:
    good = sample_inputs(key, 3, requires_grad=False)
    names = [n for n in numeric_options(key) if n in NON_NEGATIVE]
    if not names:
        pytest.skip("no option that must be non-negative")
    for name in names:
        expect_error(key, name, good, **{name: -1.0})
        expect_error(key, name, good, **{name: -math.inf})


@pytest.mark.parametrize("key", LOSSES)
def test_eps_out_of_range(key: str) -> None:
    good = sample_inputs(key, 3, requires_grad=False)
    if "eps" not in [p.name for p in options(key)]:
        pytest.skip("no eps")
    for bad in (0.0, 2.0, math.inf):
        expect_error(key, "eps", good, eps=bad)


# ---------------------------------------------------------------- weight, avg_factor


@pytest.mark.parametrize("key", LOSSES)
def test_bad_weight(key: str) -> None:
    good = sample_inputs(key, 3, requires_grad=False)
    shape = call(key, good, reduction="none").shape
    expect_error(key, "weight", good, weight=torch.ones(shape[0] + 3))
    expect_error(key, "weight", good, weight=torch.ones(*shape, 2))
    expect_error(key, "weight", good, weight=torch.ones(shape, dtype=torch.int64))
    expect_error(key, "weight", good, weight=[1.0] * shape[0])


@pytest.mark.parametrize("key", LOSSES)
def test_bad_avg_factor(key: str) -> None:
    good = sample_inputs(key, 3, requires_grad=False)
    for bad in (-1.0, math.nan, math.inf, "3", [3.0], True, torch.ones(2), torch.ones(1, dtype=torch.bool)):
        expect_error(key, "avg_factor", good, avg_factor=bad)


def test_reduce_loss_bad_arguments() -> None:
    loss = torch.ones(3)
    for kw, name in (
        ({"reduction": "average"}, "reduction"),
        ({"weight": torch.ones(4)}, "weight"),
        ({"weight": torch.ones(3, device="meta")}, "weight"),
        ({"avg_factor": "2"}, "avg_factor"),
        ({"avg_factor": -2}, "avg_factor"),
        ({"avg_factor": 2.0, "reduction": "sum"}, "avg_factor"),
    ):
        with pytest.raises(DetLossError, match=f"`{name}`"):
            reduce_loss(loss, **kw)  # type: ignore[arg-type]
    with pytest.raises(DetLossError, match="`loss`"):
        reduce_loss([1.0, 2.0])  # type: ignore[arg-type]


# ---------------------------------------------------------------- modules and build_loss


def bad_option_values(key: str) -> list[tuple[str, Any]]:
    """(option, bad value) for every option of a loss: unknown names and non-strings for the
    string options, non-booleans for the flags, NaN and strings for the numbers, -1 where the
    name means >= 0, eps outside (0, 1]; and a bad loss_weight."""
    cases: list[tuple[str, Any]] = []
    numeric = set(numeric_options(key))
    for p in options(key):
        if isinstance(p.default, str):
            cases += [(p.name, "no-such-choice"), (p.name, 3)]
        elif isinstance(p.default, bool):
            cases += [(p.name, "no"), (p.name, 1)]
        elif p.name in numeric:
            cases += [(p.name, math.nan), (p.name, "1.0")]
            if p.name in NON_NEGATIVE:
                cases.append((p.name, -1.0))
        if p.name == "eps":
            cases += [("eps", 0.0), ("eps", 2.0)]
    return [*cases, ("loss_weight", "x"), ("loss_weight", math.nan), ("loss_weight", math.inf), ("loss_weight", None)]


@pytest.mark.parametrize("key", LOSSES)
def test_modules_reject_bad_options_when_built(key: str) -> None:
    """At construction, before any input is seen, naming the class and the option; through
    ``build_loss`` too. Errors that need the data (a weight of the wrong shape) come at the call."""
    spec = get_spec(key)
    name = spec.module.__name__
    for option, bad in bad_option_values(key):
        with pytest.raises(DetLossError) as info:
            spec.module(**{**call_options(key), option: bad})
        message = str(info.value)
        assert f"{name}()" in message and f"`{option}`" in message, (option, bad, message)
        with pytest.raises(DetLossError, match=f"`{option}`"):
            build_loss({"type": name, **call_options(key), option: bad})
    with pytest.raises(DetLossError, match="no_such_option"):
        spec.module(no_such_option=1)
    module = spec.module(**call_options(key))
    with pytest.raises(DetLossError, match="`weight`"):
        module(*sample_inputs(key, 3, requires_grad=False), weight=torch.ones(7, 7, 7))


def test_modules_examples_of_the_cross_check() -> None:
    for build, option in (
        (lambda: detloss.CIoULoss(reduction="meen"), "reduction"),
        (lambda: build_loss("ciou", grad_mode="foo"), "grad_mode"),
        (lambda: detloss.GIoULoss(box_format="yolo"), "box_format"),
        (lambda: detloss.DIoULoss(eps=-1), "eps"),
        (lambda: detloss.CIoULoss(loss_weight="x"), "loss_weight"),
        (lambda: detloss.CIoULoss(loss_weight=math.nan), "loss_weight"),
        (lambda: detloss.MPDIoULoss(), "image_size"),  # required: no default to fall back on
        (lambda: detloss.GHMCLoss(bins=0), "bins"),
        (lambda: detloss.GHMCLoss(bins=4, running_count=torch.zeros(3)), "running_count"),
    ):
        with pytest.raises(DetLossError, match=f"Loss\\(\\): argument `{option}`"):
            build()


def test_per_class_options_are_checked_against_their_own_length() -> None:
    """Construction sees no data: a per-class vector sets the number of classes it probes with,
    so 80 class weights are fine, and a bad entry is still caught."""
    detloss.CrossEntropyLoss(class_weight=[1.0] * 80)
    detloss.SoftmaxFocalLoss(alpha=torch.full((80,), 0.25))
    detloss.BinaryCrossEntropyLoss(pos_weight=torch.ones(80))
    with pytest.raises(DetLossError, match="CrossEntropyLoss\\(\\): argument `class_weight`"):
        detloss.CrossEntropyLoss(class_weight=[1.0, -1.0])


def test_build_loss_bad_names() -> None:
    with pytest.raises(DetLossError, match=r"`name`.*'no_such_loss'"):
        build_loss("no_such_loss")
    with pytest.raises(DetLossError, match="`name`"):
        build_loss({"type": "NoSuchLoss"})
    with pytest.raises(DetLossError, match="`config`"):
        build_loss({"reduction": "sum"})
    with pytest.raises(DetLossError, match="`config`"):
        build_loss(42)  # type: ignore[arg-type]
    with pytest.raises(DetLossError, match="no_such_option"):
        build_loss("giou", no_such_option=1)
    with pytest.raises(DetLossError, match="`reduction`"):
        build_loss("giou", reduction="average")(*sample_inputs("giou", 2))


# ---------------------------------------------------------------- geometry


BOXES = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]])


@pytest.mark.parametrize(
    ("fn", "kwargs", "name"),
    [
        (aligned_iou, {"kind": "xiou"}, "kind"),
        (aligned_iou, {"box_format": "yxyx"}, "box_format"),
        (aligned_iou, {"eps": 0.0}, "eps"),
        (aligned_iou, {"eps": math.nan}, "eps"),
        (pairwise_iou, {"kind": "xiou"}, "kind"),
        (pairwise_iou, {"box_format": "yxyx"}, "box_format"),
        (pairwise_iou, {"eps": -1.0}, "eps"),
    ],
)
def test_geometry_unknown_names_and_ranges(fn: Any, kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(DetLossError, match=f"`{name}`"):
        fn(BOXES, BOXES, **kwargs)


@pytest.mark.parametrize("fn", [aligned_iou, pairwise_iou])
def test_geometry_bad_tensors(fn: Any) -> None:
    names = ("pred", "target") if fn is aligned_iou else ("boxes1", "boxes2")
    for bad, which in (
        (BOXES[:, :3], 0),
        (BOXES.long(), 0),
        (BOXES.tolist(), 0),
        (torch.tensor(1.0), 1),
        (BOXES.to("meta"), 1),
    ):
        args = (bad, BOXES) if which == 0 else (BOXES, bad)
        with pytest.raises(DetLossError, match=f"`{names[which]}`"):
            fn(*args)
    if fn is aligned_iou:
        with pytest.raises(DetLossError, match="`target`"):
            fn(BOXES, torch.zeros(3, 4))  # 2 and 3 pairs do not broadcast
    else:
        with pytest.raises(DetLossError, match="`boxes1`"):
            fn(BOXES[None], BOXES)


ROTATED = torch.tensor([[0.0, 0.0, 2.0, 1.0, 0.3], [1.0, 1.0, 3.0, 2.0, -0.4]])


@pytest.mark.parametrize(
    ("fn", "kwargs", "name"),
    [
        (rotated_iou, {"kind": "diou"}, "kind"),
        (rotated_iou, {"box_format": "xywhr"}, "box_format"),
        (rotated_iou, {"angle_unit": "grad"}, "angle_unit"),
        (rotated_iou, {"eps": 0.0}, "eps"),
        (pairwise_rotated_iou, {"kind": "ciou"}, "kind"),
        (pairwise_rotated_iou, {"box_format": "cxcywh"}, "box_format"),
        (pairwise_rotated_iou, {"eps": math.nan}, "eps"),
        (gaussian_distance, {"kind": "hellinger"}, "kind"),
        (gaussian_distance, {"angle_unit": "turns"}, "angle_unit"),
        (gaussian_distance, {"eps": 2.0}, "eps"),
        (kfiou, {"box_format": "xyxy"}, "box_format"),
    ],
)
def test_rotated_geometry_unknown_names_and_ranges(fn: Any, kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(DetLossError, match=f"`{name}`"):
        fn(ROTATED, ROTATED, **kwargs)


@pytest.mark.parametrize("fn", [rotated_iou, pairwise_rotated_iou, gaussian_distance, kfiou])
def test_rotated_geometry_bad_tensors(fn: Any) -> None:
    names = ("boxes1", "boxes2") if fn is pairwise_rotated_iou else ("pred", "target")
    for bad, which in (
        (ROTATED[:, :4], 0),  # an upright box
        (ROTATED.long(), 0),
        (ROTATED.tolist(), 0),
        (torch.tensor(1.0), 1),
        (ROTATED.to("meta"), 1),
    ):
        args = (bad, ROTATED) if which == 0 else (ROTATED, bad)
        with pytest.raises(DetLossError, match=f"`{names[which]}`"):
            fn(*args)
    with pytest.raises(DetLossError, match=f"`{names[0]}`.*last dimension 8"):
        fn(ROTATED, ROTATED, box_format="xyxyxyxy")
    if fn is pairwise_rotated_iou:
        with pytest.raises(DetLossError, match="`boxes1`"):
            fn(ROTATED[None], ROTATED)
    else:
        with pytest.raises(DetLossError, match="`target`"):
            fn(ROTATED, torch.zeros(3, 5))  # 2 and 3 pairs do not broadcast


def test_convert_rotated_and_nms_bad_arguments() -> None:
    with pytest.raises(DetLossError, match="`in_fmt`"):
        convert_rotated(ROTATED, "xywhr", "xyxyxyxy")  # type: ignore[arg-type]
    with pytest.raises(DetLossError, match="`out_fmt`"):
        convert_rotated(ROTATED, "cxcywha", "xyxy")  # type: ignore[arg-type]
    with pytest.raises(DetLossError, match="`angle_unit`"):
        convert_rotated(ROTATED, "cxcywha", "xyxyxyxy", angle_unit="gon")  # type: ignore[arg-type]
    with pytest.raises(DetLossError, match="`boxes`"):
        convert_rotated(ROTATED, "xyxyxyxy", "cxcywha")
    scores = torch.tensor([0.9, 0.1])
    with pytest.raises(DetLossError, match="`scores`"):
        rotated_nms(ROTATED, scores[:1], 0.5)
    with pytest.raises(DetLossError, match="`scores`"):
        rotated_nms(ROTATED, scores.long(), 0.5)
    with pytest.raises(DetLossError, match="`boxes`"):
        rotated_nms(ROTATED[None], scores, 0.5)
    with pytest.raises(DetLossError, match="`boxes`"):
        rotated_nms(ROTATED[:, :4], scores, 0.5)
    with pytest.raises(DetLossError, match="`iou_threshold`"):
        rotated_nms(ROTATED, scores, math.nan)
    with pytest.raises(DetLossError, match="`iou_threshold`"):
        rotated_nms(ROTATED, scores, 1.5)
    with pytest.raises(DetLossError, match="`box_format`"):
        rotated_nms(ROTATED, scores, 0.5, box_format="cxcywh")  # type: ignore[arg-type]


def test_convert_area_coder_bad_arguments() -> None:
    with pytest.raises(DetLossError, match="`in_fmt`"):
        convert(BOXES, "ltrb", "xyxy")  # type: ignore[arg-type]
    with pytest.raises(DetLossError, match="`out_fmt`"):
        convert(BOXES, "xyxy", "ltrb")  # type: ignore[arg-type]
    with pytest.raises(DetLossError, match="`boxes`"):
        convert(BOXES.long(), "xyxy", "xywh")
    with pytest.raises(DetLossError, match="`box_format`"):
        area(BOXES, "ltrb")  # type: ignore[arg-type]
    with pytest.raises(DetLossError, match="`boxes`"):
        area(BOXES[:, :2])
    with pytest.raises(DetLossError, match="`weights`"):
        BoxCoder(weights=(1.0, 1.0, 1.0))
    with pytest.raises(DetLossError, match="`weights`"):
        BoxCoder(weights=(1.0, 1.0, -1.0, 1.0))
    coder = BoxCoder()
    with pytest.raises(DetLossError, match="`gt`"):
        coder.encode(BOXES, BOXES[:1].expand(3, 4))
    with pytest.raises(DetLossError, match="`deltas`"):
        coder.decode(BOXES, BOXES[:, :3])


def test_error_type_is_a_value_error() -> None:
    assert issubclass(detloss.DetLossError, ValueError)


# ---------------------------------------------------------------- other public functions


def test_helpers_next_to_the_losses() -> None:
    from detloss.functional import distribution_expectation, iou_aware_score

    with pytest.raises(DetLossError, match="`logits`"):
        distribution_expectation(torch.zeros(2, 4, 17, dtype=torch.long))
    with pytest.raises(DetLossError, match="`logits`"):
        distribution_expectation(torch.tensor(1.0))
    with pytest.raises(DetLossError, match="`alpha`"):
        iou_aware_score(torch.rand(3), torch.rand(3), alpha=2.0)
    with pytest.raises(DetLossError, match="`cls_prob`"):
        iou_aware_score(torch.rand(3).long(), torch.rand(3))
    with pytest.raises(DetLossError, match="`iou`"):
        iou_aware_score(torch.rand(3), torch.rand(4))


def test_set_backend_unknown_name() -> None:
    with pytest.raises(DetLossError, match="`name`"):
        detloss.set_backend("gpu-please")

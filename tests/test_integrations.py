"""detloss.integrations without the frameworks: what it imports, its checks, mmdetection's conventions.

The same code against the real ultralytics, mmengine and torchvision is in tests/integration/.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detloss import LOSSES, DetLossError
from detloss.integrations import mmdet as dlm
from detloss.integrations import torchvision as dltv
from detloss.integrations import ultralytics as dlu
from detloss.nn import function_options
from detloss.registry import get_spec
from detloss.testing import sample_inputs

FRAMEWORKS = ("ultralytics", "torchvision", "mmengine", "mmdet", "mmcv")


def test_importing_the_integrations_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "import detloss.integrations, detloss.integrations.ultralytics, detloss.integrations.torchvision\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------- ultralytics: the losses, checked early


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (dict(box_loss="ciou2"), "box_loss"),
        (dict(box_loss="smooth_l1"), "box_loss"),  # not a loss of box pairs
        (dict(cls_loss="ciou"), "cls_loss"),
        (dict(cls_loss="ghm_c"), "cls_loss"),  # normalises by its own batch statistics, not target_scores_sum
        (dict(box_options={"reduction": "mean"}), "reduction"),
        (dict(box_options={"box_format": "cxcywh"}), "box_format"),
        (dict(box_loss="mpdiou", box_options={"image_size": (640, 640)}), "image_size"),
        (dict(box_options={"momentun": 0.1}), "momentun"),  # a misspelt option
        (dict(box_options={"delta": 0.0}), "delta"),  # a bad value: found by calling the loss once
        (dict(cls_loss="varifocal", cls_options={"alpha": 2.0}), "alpha"),
        (dict(cls_loss="varifocal", cls_options=[("alpha", 0.5)]), "cls_options"),
    ],
)
def test_losses_name_the_bad_argument(arguments: dict, named: str) -> None:
    with pytest.raises(DetLossError, match=f"`{named}`"):
        dlu.Losses(**arguments)


def test_losses_build_summing_box_and_elementwise_class_modules() -> None:
    losses = dlu.Losses("mpdiou", cls_loss="quality_focal", cls_options={"beta": 1.5})
    box, cls = losses.box_module(), losses.cls_module()
    assert box is not None and box.options["reduction"] == "sum" and box.options["image_size"] == dlu.PENDING_IMAGE_SIZE
    assert cls is not None and cls.options == {"beta": 1.5, "reduction": "none"}
    assert dlu.Losses(None, cls_loss=None).box_module() is None


def test_box_and_class_loss_lists_follow_the_registry() -> None:
    assert set(dlu.BOX_LOSSES) == {key for key, spec in LOSSES.items() if spec.inputs == "boxes"}
    assert {"wiou", "siou", "eiou", "mpdiou", "inner_iou", "nwd", "alpha_iou"} <= set(dlu.BOX_LOSSES)
    assert all(get_spec(key).inputs == "binary_logits" for key in dlu.CLASS_LOSSES)


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is not None, reason="ultralytics is installed here")
def test_without_ultralytics_patch_says_what_is_missing() -> None:
    with pytest.raises(ImportError, match="needs ultralytics"):
        dlu.patch("wiou")
    with pytest.raises(ImportError, match="needs ultralytics"):
        dlu.DetlossTrainer  # noqa: B018


# ---------------------------------------------------------------- mmdetection's conventions, as plain modules


def _shell(key: str, **options: object) -> dlm.MMDetLoss:
    spec = get_spec(key)
    return dlm.SHELLS[spec.module.__name__](**dict(spec.call_options), **options).eval()


def test_a_shell_for_every_registered_loss_with_its_options() -> None:
    assert set(dlm.SHELLS) == {spec.module.__name__ for spec in LOSSES.values()}
    for spec in LOSSES.values():
        shell = dlm.SHELLS[spec.module.__name__]
        assert shell.__module__ == "detloss.integrations.mmdet" and getattr(dlm, shell.__name__) is shell
        names = list(inspect.signature(shell).parameters)
        expected = [p.name for p in function_options(spec.function) if p.name != "reduction"]
        assert names == [*expected, "reduction", "loss_weight"]


@pytest.mark.parametrize("key", sorted(LOSSES))
def test_shell_equals_the_direct_call(key: str) -> None:
    """Weights of shape (n,) and, for boxes, (n, 4); avg_factor; reduction_override; loss_weight."""
    spec = get_spec(key)
    inputs = sample_inputs(key, 6, dtype=torch.float64, requires_grad=False)
    options = dict(spec.call_options)

    def direct(**kw: object) -> torch.Tensor:
        return 2.0 * spec.function(*inputs, **options, **kw)

    elementwise = spec.function(*inputs, **options, reduction="none")
    g = torch.Generator().manual_seed(1)
    rows = torch.rand(elementwise.shape[0], generator=g, dtype=torch.float64) + 0.1
    row_weight = rows if elementwise.dim() == 1 else rows.reshape(-1, *([1] * (elementwise.dim() - 1)))
    shell = _shell(key, loss_weight=2.0)
    cases: list[tuple[dict, dict]] = [
        ({}, {}),
        ({"reduction_override": "sum"}, {"reduction": "sum"}),
        ({"avg_factor": 3.0}, {"avg_factor": 3.0}),
        ({"reduction_override": "none", "avg_factor": 3.0}, {"reduction": "none"}),  # mmdetection ignores it
        ({"weight": rows, "avg_factor": 2.5}, {"weight": row_weight, "avg_factor": 2.5}),
        ({"weight": rows, "reduction_override": "none"}, {"weight": row_weight, "reduction": "none"}),
    ]
    if spec.inputs == "boxes":
        box_weight = torch.rand(6, 4, generator=g, dtype=torch.float64)
        cases.append(({"weight": box_weight}, {"weight": box_weight.mean(-1)}))
    for given, expected in cases:
        torch.testing.assert_close(shell(*inputs, **given), direct(**expected), rtol=1e-12, atol=1e-12)


def test_weight_and_avg_factor_may_be_positional() -> None:
    pred, target = sample_inputs("giou", 5)
    weight = torch.ones(5, 4)
    shell = _shell("giou")
    assert torch.equal(shell(pred, target, weight, 2.0), shell(pred, target, weight=weight, avg_factor=2.0))


@pytest.mark.parametrize("key", sorted(k for k, s in LOSSES.items() if s.inputs in ("boxes", "values")))
def test_no_positive_weight_gives_a_zero_that_keeps_the_graph(key: str) -> None:
    pred, target = sample_inputs(key, 4)
    loss = _shell(key)(pred, target, weight=torch.zeros(4, 4))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert pred.grad is not None and bool((pred.grad == 0).all())


def test_shell_checks_its_arguments() -> None:
    with pytest.raises(DetLossError, match="`reduction`"):
        dlm.SHELLS["CIoULoss"](reduction="avg")
    with pytest.raises(DetLossError, match="`loss_weight`"):
        dlm.SHELLS["CIoULoss"](loss_weight="2")
    with pytest.raises(DetLossError, match="`alpha_gat`"):
        dlm.SHELLS["CIoULoss"](alpha_gat=True)
    pred, target = sample_inputs("ciou", 3)
    with pytest.raises(DetLossError, match="`reduction_override`"):
        _shell("ciou")(pred, target, reduction_override="avg")
    with pytest.raises(DetLossError, match="`ignore_index`"):
        _shell("ciou")(pred, target, ignore_index=-1)


def test_wise_iou_state_is_in_the_state_dict() -> None:
    shell = dlm.SHELLS["WIoULoss"]().train()
    pred, target = sample_inputs("wiou", 6)
    shell(pred, target)
    assert set(shell.state_dict()) == {"loss.running_iou_mean"}
    assert 0.0 < float(shell.state_dict()["loss.running_iou_mean"]) <= 1.0


# ---------------------------------------------------------------- torchvision's defaults


def test_torchvision_drop_ins_default_to_no_reduction() -> None:
    pred, target = sample_inputs("ciou", 3, requires_grad=False)
    for name in ("generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"):
        assert getattr(dltv, name)(pred, target).shape == (3,)
    logits, labels = sample_inputs("sigmoid_focal", 3, requires_grad=False)
    no_alpha = dltv.sigmoid_focal_loss(logits, labels, alpha=-1)
    assert no_alpha.shape == logits.shape
    torch.testing.assert_close(no_alpha, dltv.sigmoid_focal_loss(logits, labels, alpha=0.5) * 2)


def test_torchvision_drop_ins_take_integer_boxes() -> None:
    boxes = torch.tensor([[0, 0, 100, 100], [0, 0, 50, 50]])
    iou = dltv.box_iou(boxes, boxes)
    assert iou.dtype == torch.float32
    torch.testing.assert_close(iou, torch.tensor([[1.0, 0.25], [0.25, 1.0]]))


def test_the_frameworks_guide_lists_the_box_losses_patch_takes() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "frameworks.md").read_text()
    line = re.search(r"\*\*Box losses\*\* \(`box_loss`\): `([^`]*)`", page)
    assert line is not None
    assert [name.strip() for name in line.group(1).replace("\n", " ").split(",")] == list(dlu.BOX_LOSSES)

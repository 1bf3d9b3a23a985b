"""YOLOLoss on a hand-built 2 x 2 grid: assignment and every term checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import DetLossError
from detloss.detection.assign import assign_targets, ignore_mask
from detloss.detection.model import decode, make_priors
from detloss.detection.yolo_loss import YOLOLoss

LOG2 = math.log(2.0)


def softplus(x: float) -> float:
    """-log(1 - sigmoid(x)) = BCE of logit x against target 0; BCE against 1 is softplus(-x)."""
    return math.log1p(math.exp(x))


def scene() -> tuple[torch.Tensor, object, list[dict[str, torch.Tensor]]]:
    """A 16 x 16 image, one level of stride 8 (a 2 x 2 grid), anchors 4 x 4 and 12 x 6, 2 classes.

    Slots (layout anchor, row, column): 0-3 anchor 0 at cells (0,0) (1,0) (0,1) (1,1) as (col,row),
    4-7 anchor 1 likewise. Raw output zero except the entries set below.
    """
    priors = make_priors(torch.tensor([[[4.0, 4.0], [12.0, 6.0]]]), (8,), 16)
    targets = [
        {
            # GT1: 4 x 4 at centre (4, 4): shape IoU 1 with anchor 0, 16/72 with anchor 1 -> anchor 0,
            #      cell (0, 0) -> slot 0. Label 1.
            # GT2: 12 x 6 at centre (10, 12): shape IoU 1 with anchor 1 -> anchor 1, cell (1, 1) -> slot 4 + 3 = 7.
            "boxes": torch.tensor([[2.0, 2.0, 6.0, 6.0], [4.0, 9.0, 16.0, 15.0]]),
            "labels": torch.tensor([1, 0]),
        }
    ]
    raw = torch.zeros(1, 8, 7)  # 4 box + 1 obj + 2 classes
    # slot 0: t_w = log 2 -> decoded (0, 2, 8, 6), IoU with GT1 = 16 / 32 = 0.5
    raw[0, 0, 2] = LOG2
    # slot 7 (zeros) decodes to centre (12, 12), 12 x 6: (6, 9, 18, 15); IoU with GT2 = 60 / 84 = 5/7
    # slot 3: anchor 0 at cell (1, 1) stretched to 12 x 6 -> (6, 9, 18, 15): IoU 5/7 > 0.5 -> ignored
    raw[0, 3, 2] = math.log(3.0)
    raw[0, 3, 3] = math.log(1.5)
    # objectness logits: slot 0 -> 2, slot 1 -> 1, slot 3 (ignored) -> 5, the others 0
    raw[0, 0, 4] = 2.0
    raw[0, 1, 4] = 1.0
    raw[0, 3, 4] = 5.0
    # class logits: slot 0 (label 1): (0, 0); slot 7 (label 0): (1, -1)
    raw[0, 7, 5] = 1.0
    raw[0, 7, 6] = -1.0
    return raw, priors, targets


def test_assignment_by_hand() -> None:
    raw, priors, targets = scene()
    a = assign_targets(priors, targets)
    assert a.slot_index.tolist() == [0, 7]
    assert a.batch_index.tolist() == [0, 0]
    assert a.labels.tolist() == [1, 0]
    decoded = decode(raw, priors)
    torch.testing.assert_close(decoded[0, 0], torch.tensor([0.0, 2.0, 8.0, 6.0]))
    torch.testing.assert_close(decoded[0, 7], torch.tensor([6.0, 9.0, 18.0, 15.0]))
    # only slot 3 exceeds IoU 0.5 with a ground truth among the non-positives; slot 7 (positive) too
    assert ignore_mask(decoded, targets, 0.5)[0].tolist() == [False, False, False, True, False, False, False, True]


def test_each_term_by_hand_iou_loss() -> None:
    raw, priors, targets = scene()
    out = YOLOLoss("iou", "bce", "bce", box_weight=2.0, obj_weight=1.0, cls_weight=0.5)(raw, priors, targets)
    assert out["num_pos"].item() == 2
    # box: (1 - 0.5) + (1 - 5/7) = 0.785714, over 2 positives
    box = (0.5 + 2.0 / 7.0) / 2
    # obj: slot 0 (target 1, logit 2): softplus(-2) = 0.126928; slot 1 (target 0, logit 1): softplus(1) = 1.313262;
    # slots 2, 4, 5, 6 (target 0, logit 0) and 7 (target 1, logit 0): log 2 each; slot 3 ignored
    obj = (softplus(-2.0) + softplus(1.0) + 5 * LOG2) / 2
    # cls: slot 0 (0, 0) vs (0, 1): 2 log 2; slot 7 (1, -1) vs (1, 0): 2 softplus(-1) = 2 * 0.313262
    cls = (2 * LOG2 + 2 * softplus(-1.0)) / 2
    assert out["box"].item() == pytest.approx(box, abs=1e-6)
    assert out["obj"].item() == pytest.approx(obj, abs=1e-6)  # 2.452963
    assert out["cls"].item() == pytest.approx(cls, abs=1e-6)  # 1.006409
    assert out["loss"].item() == pytest.approx(2 * box + obj + 0.5 * cls, abs=1e-5)  # 3.741881


def test_encoded_l2_box_term_by_hand() -> None:
    raw, priors, targets = scene()
    out = YOLOLoss("l2", "bce", "bce")(raw, priors, targets)
    # GT1: target (4/8 - 0, 4/8 - 0, log(4/4), log(4/4)) = (0.5, 0.5, 0, 0); pred (0.5, 0.5, log 2, 0)
    #      error (log 2)^2 = 0.480453, YOLOv3 weight 2 - 16/256 = 1.9375
    # GT2: target (10/8 - 1, 12/8 - 1, 0, 0) = (0.25, 0.5, 0, 0); pred (0.5, 0.5, 0, 0): 0.0625, weight 2 - 72/256
    expected = (1.9375 * LOG2**2 + (2 - 72 / 256) * 0.0625) / 2  # 0.519150
    assert out["box"].item() == pytest.approx(expected, abs=1e-6)


def test_quality_focal_objectness_uses_iou_targets() -> None:
    raw, priors, targets = scene()
    raw[..., 4] = 0.0  # every objectness probability 1/2
    out = YOLOLoss("iou", "quality_focal", "bce")(raw, priors, targets)
    # QFL = |y - p|^2 BCE(p, y): slot 0 target IoU 0.5 -> 0; slot 7 target 5/7 -> (5/7 - 1/2)^2 log 2;
    # five negatives (1, 2, 4, 5, 6) -> (1/2)^2 log 2 each; slot 3 ignored
    expected = ((5 / 7 - 0.5) ** 2 * LOG2 + 5 * 0.25 * LOG2) / 2  # 0.449131
    assert out["obj"].item() == pytest.approx(expected, abs=1e-6)


def test_focal_gamma0_alpha_none_equals_bce() -> None:
    g = torch.Generator().manual_seed(3)
    priors = make_priors(torch.tensor([[[4.0, 4.0], [12.0, 6.0]]]), (8,), 16)
    raw = torch.randn(3, 8, 7, generator=g)
    targets = [
        {"boxes": torch.tensor([[2.0, 2.0, 6.0, 6.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[1.0, 3.0, 13.0, 8.0], [9.0, 9.0, 12.0, 15.0]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    bce = YOLOLoss("giou", "bce", "bce")(raw, priors, targets)
    options = {"alpha": None, "gamma": 0.0}
    focal = YOLOLoss("giou", "focal", "focal", obj_options=options, cls_options=options)(raw, priors, targets)
    for key in ("loss", "box", "obj", "cls"):
        torch.testing.assert_close(focal[key], bce[key])
    # and the default focal (alpha 0.25, gamma 2) is a different loss
    assert YOLOLoss("giou", "focal", "bce")(raw, priors, targets)["obj"].item() < 0.5 * bce["obj"].item()


@pytest.mark.parametrize("obj_loss", ["bce", "focal", "varifocal", "quality_focal"])
@pytest.mark.parametrize("box_loss", ["ciou", "smooth_l1"])
def test_empty_images_finite_with_gradients(obj_loss: str, box_loss: str) -> None:
    priors = make_priors(torch.tensor([[[4.0, 4.0], [12.0, 6.0]]]), (8,), 16)
    raw = torch.randn(2, 8, 7, generator=torch.Generator().manual_seed(0)).requires_grad_()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    out = YOLOLoss(box_loss, obj_loss, "bce")(raw, priors, empty)
    assert out["num_pos"].item() == 0
    assert torch.isfinite(out["loss"]) and out["box"].item() == 0.0 and out["cls"].item() == 0.0
    out["loss"].backward()
    assert raw.grad is not None and torch.isfinite(raw.grad).all()
    assert raw.grad[..., 4].abs().sum() > 0  # objectness still learns "nothing here"
    assert raw.grad[..., :4].abs().sum() == 0 and raw.grad[..., 5:].abs().sum() == 0


def test_bad_configuration_and_labels() -> None:
    with pytest.raises(DetLossError, match="obj_loss"):
        YOLOLoss("ciou", "ciou")
    with pytest.raises(DetLossError, match="box_loss"):
        YOLOLoss("no_such_loss")
    raw, priors, targets = scene()
    targets[0]["labels"] = torch.tensor([1, 2])  # only 2 classes
    with pytest.raises(DetLossError, match="labels < 2"):
        YOLOLoss()(raw, priors, targets)

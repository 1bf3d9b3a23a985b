"""The anchor-free head: its decoding and its loss, each term by hand; every assigner, DFL on and off."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import DetLossError
from detloss.assign import AssignResult
from detloss.assign.base import DenseAssigner, DenseInputs
from detloss.detection.anchor_free import (
    AnchorFreeYOLO,
    decode_distances,
    decode_points,
    encode_points,
    make_point_priors,
)
from detloss.detection.anchor_free_loss import AnchorFreeLoss
from detloss.detection.assign import ASSIGNERS, pad_targets
from detloss.detection.postprocess import postprocess

R = 4  # bins 0..4 per side


def expectation(weights: list[float]) -> float:
    """sum_i i w_i / sum_i w_i: the distance a side with bin logits log(w) predicts."""
    return sum(i * w for i, w in enumerate(weights)) / sum(weights)


def dfl(weights: list[float], y: float) -> float:
    """-((y_r - y) log S_l + (y - y_l) log S_r) for the bin probabilities S = w / sum(w)."""
    total = sum(weights)
    left = min(math.floor(y), len(weights) - 2)
    right = left + 1
    return -((right - y) * math.log(weights[left] / total) + (y - left) * math.log(weights[right] / total))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_dfl_decoding_is_the_expectation_of_the_bins_by_hand() -> None:
    # a 16 x 16 image, stride 8: points (4, 4), (12, 4), (4, 12), (12, 12)
    priors = make_point_priors((8,), 16, reg_max=R)
    assert priors.anchors.points.tolist() == [[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]]
    sides = [[1.0, 1.0, 6.0, 2.0, 1.0], [4.0, 1.0, 1.0, 1.0, 1.0], [1.0] * 5, [1.0, 3.0, 0.5, 0.25, 0.25]]
    raw = torch.zeros(1, 4, 4 * (R + 1) + 2)
    raw[0, 1, : 4 * (R + 1)] = torch.log(torch.tensor(sides)).flatten()  # side-major: l bins, t bins, ...
    d = [23 / 11, 10 / 8, 2.0, (3 + 1 + 0.75 + 1) / 5]  # 0 w0 + 1 w1 + ... over the sum, per side
    assert [expectation(w) for w in sides] == pytest.approx(d)
    torch.testing.assert_close(decode_distances(raw[0, 1, : 4 * (R + 1)], priors), torch.tensor(d))
    box = decode_points(raw, priors)[0, 1]
    torch.testing.assert_close(box, torch.tensor([12 - 8 * d[0], 4 - 8 * d[1], 12 + 8 * d[2], 4 + 8 * d[3]]))
    # zero logits everywhere else: uniform bins, R / 2 = 2 strides on every side
    torch.testing.assert_close(decode_points(raw, priors)[0, 0], torch.tensor([-12.0, -12.0, 20.0, 20.0]))
    # encoding the decoded box at its point gives the distances back
    torch.testing.assert_close(encode_points(box, torch.tensor([12.0, 4.0]), torch.tensor(8.0)), torch.tensor(d))


def test_without_dfl_the_distances_are_softplus_of_the_outputs() -> None:
    priors = make_point_priors((8, 16), 32, reg_max=None)
    raw = torch.tensor([-3.0, 0.0, 0.5, 7.0, 1.0, 2.0])
    assert priors.box_channels == 4
    expected = [softplus(x) for x in (-3.0, 0.0, 0.5, 7.0)]
    torch.testing.assert_close(decode_distances(raw[:4], priors), torch.tensor(expected))
    # slot 16 is the first point of the stride-16 level, at (8, 8)
    full = torch.zeros(1, priors.num_slots, 6)
    full[0, 16] = raw
    x1, y1, x2, y2 = (8 - 16 * expected[0], 8 - 16 * expected[1], 8 + 16 * expected[2], 8 + 16 * expected[3])
    torch.testing.assert_close(decode_points(full, priors)[0, 16], torch.tensor([x1, y1, x2, y2]))


def test_model_output_slots_follow_the_points_of_make_anchors() -> None:
    torch.manual_seed(0)
    model = AnchorFreeYOLO(3, strides=(8, 16), width=8, reg_max=R).eval()
    images = torch.randn(2, 3, 32, 32)
    raw = model(images)
    priors = model.priors(32)
    assert raw.shape == (2, priors.num_slots, 4 * (R + 1) + 3) == (2, 16 + 4, 23)
    feats = model.features(images)
    for level, offset, width in ((0, 0, 4), (1, 16, 2)):
        box = model.box_heads[level](feats[level])
        cls = model.cls_heads[level](feats[level])
        for row, col in ((0, 1), (1, 0), (width - 1, width - 1)):
            slot = offset + row * width + col
            stride = 8 * 2**level
            assert priors.anchors.points[slot].tolist() == [(col + 0.5) * stride, (row + 0.5) * stride]
            torch.testing.assert_close(raw[:, slot, : 4 * (R + 1)], box[:, :, row, col])
            torch.testing.assert_close(raw[:, slot, 4 * (R + 1) :], cls[:, :, row, col])


@pytest.mark.parametrize("reg_max", [16, None])
def test_both_variants_start_from_boxes_two_strides_from_the_point(reg_max: int | None) -> None:
    torch.manual_seed(0)
    model = AnchorFreeYOLO(4, reg_max=reg_max)
    with torch.no_grad():
        for head in (*model.box_heads, *model.cls_heads):
            head[-1].weight.zero_()  # the outputs are the biases
        raw = model(torch.zeros(1, 3, 64, 64))
    priors = model.priors(64)
    distances = decode_distances(raw[..., : priors.box_channels], priors)
    # DFL: bin logits -(i - 2)^2 / 2 over 0..16; the tail above 4 lifts the mean to 2.0139
    weights = [math.exp(-0.5 * (i - 2) ** 2) for i in range(17)]
    expected = expectation(weights) if reg_max else 2.0
    torch.testing.assert_close(distances, torch.full_like(distances, expected), rtol=1e-4, atol=1e-4)
    p = 1 / (1 + math.exp(4.59512))  # class prior 0.01
    torch.testing.assert_close(raw[..., priors.box_channels :].sigmoid(), torch.full((1, 80, 4), p), rtol=1e-4, atol=0)


class FixedAssigner(DenseAssigner):
    """Returns a given result: the loss's terms can be checked by hand, apart from any assigner."""

    def __init__(self, result: AssignResult) -> None:
        self.result = result
        self.calls: list[DenseInputs] = []

    def assign(self, inp: DenseInputs, anchors: object) -> AssignResult:
        self.calls.append(inp)
        return self.result


def hand_scene() -> tuple[torch.Tensor, object, list[dict[str, torch.Tensor]], AssignResult, dict[str, list]]:
    """One 16 x 16 image, stride 8 (points (4, 4), (12, 4), (4, 12), (12, 12)), bins 0..4, 2 classes.

    One object (label 1, box (8, 0, 16, 8)), given by the assigner to slot 1 with soft score 0.9
    and to slot 3 with 0.6 (the normaliser is their sum 1.5, not the 2 positives).
    """
    priors = make_point_priors((8,), 16, reg_max=R)
    bins = {1: [[1.0, 2.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 3.0, 1.0, 1.0], [1.0] * 5],
            3: [[1.0, 1.0, 1.0, 2.0, 1.0], [1.0] * 5, [3.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 4.0]]}
    cls = [[-1.0, 0.5], [2.0, -2.0], [0.0, 1.0], [-3.0, 0.25]]
    raw = torch.zeros(1, 4, 4 * (R + 1) + 2)
    for slot, sides in bins.items():
        raw[0, slot, : 4 * (R + 1)] = torch.log(torch.tensor(sides)).flatten()
    raw[0, :, 4 * (R + 1) :] = torch.tensor(cls)
    target = [8.0, 0.0, 16.0, 8.0]
    scores = torch.zeros(1, 4, 2)
    scores[0, 1, 1], scores[0, 3, 1] = 0.9, 0.6
    fg = torch.tensor([[False, True, False, True]])
    boxes = torch.zeros(1, 4, 4)
    boxes[fg] = torch.tensor(target)
    result = AssignResult(
        labels=torch.tensor([[2, 1, 2, 1]]), boxes=boxes, scores=scores, fg_mask=fg,
        gt_index=torch.tensor([[-1, 0, -1, 0]]),
    )
    targets = [{"boxes": torch.tensor([target]), "labels": torch.tensor([1])}]
    return raw, priors, targets, result, {"bins": bins, "cls": cls, "target": target}


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def hand_terms(hand: dict[str, list], weights: dict[int, float]) -> tuple[float, float, float]:
    """The sums of the box (1 - IoU), class (BCE) and DFL terms, before the normaliser."""
    points = {1: (12.0, 4.0), 3: (12.0, 12.0)}
    box = dfl_sum = 0.0
    for slot, weight in weights.items():
        d = [expectation(w) for w in hand["bins"][slot]]
        x, y = points[slot]
        pred = [x - 8 * d[0], y - 8 * d[1], x + 8 * d[2], y + 8 * d[3]]
        box += weight * (1 - iou(pred, hand["target"]))
        t = hand["target"]
        distances = [(x - t[0]) / 8, (y - t[1]) / 8, (t[2] - x) / 8, (t[3] - y) / 8]  # slot 3: t = -0.5 -> 0
        distances = [min(max(v, 0.0), R) for v in distances]
        dfl_sum += weight * sum(dfl(w, v) for w, v in zip(hand["bins"][slot], distances)) / 4
    cls = sum(
        softplus(x) - x * (weights.get(a, 0.0) if c == 1 else 0.0)
        for a, row in enumerate(hand["cls"])
        for c, x in enumerate(row)
    )  # BCE(x, t) = softplus(x) - x t; the object's class is 1
    return box, cls, dfl_sum


def test_each_term_by_hand_normalised_by_the_sum_of_target_scores() -> None:
    raw, priors, targets, result, hand = hand_scene()
    assigner = FixedAssigner(result)
    loss = AnchorFreeLoss("iou", "bce", assigner=assigner, box_weight=2.0, cls_weight=0.5, dfl_weight=3.0)
    out = loss(raw, priors, targets)
    norm = 0.9 + 0.6
    box, cls, dfl_sum = hand_terms(hand, {1: 0.9, 3: 0.6})
    assert out["num_pos"].item() == 2
    assert out["box"].item() == pytest.approx(box / norm, rel=1e-5)
    assert out["dfl"].item() == pytest.approx(dfl_sum / norm, rel=1e-5)
    assert out["cls"].item() == pytest.approx(cls / norm, rel=1e-5)
    assert out["loss"].item() == pytest.approx(2 * box / norm + 0.5 * cls / norm + 3 * dfl_sum / norm, rel=1e-5)
    # the assigner saw the detached probabilities and the decoded boxes
    seen = assigner.calls[0]
    torch.testing.assert_close(seen.scores, raw[..., 4 * (R + 1) :].sigmoid())
    torch.testing.assert_close(seen.boxes, decode_points(raw, priors))

    # a sum of scores below 1 divides by 1, as ultralytics' max(target_scores.sum(), 1)
    low = result._replace(scores=result.scores / 3)  # 0.3 + 0.2
    out = AnchorFreeLoss("iou", "bce", assigner=FixedAssigner(low))(raw, priors, targets)
    box, cls, dfl_sum = hand_terms(hand, {1: 0.3, 3: 0.2})
    assert (out["box"].item(), out["cls"].item(), out["dfl"].item()) == pytest.approx((box, cls, dfl_sum), rel=1e-5)


def test_dfl_off_has_no_dfl_term_and_regresses_the_same_boxes() -> None:
    raw, _, targets, result, hand = hand_scene()
    priors = make_point_priors((8,), 16, reg_max=None)
    short = torch.zeros(1, 4, 6)
    short[..., 4:] = raw[..., 4 * (R + 1) :]
    short[0, 1, :4] = torch.tensor([0.0, 1.0, -1.0, 2.0])
    out = AnchorFreeLoss("iou", assigner=FixedAssigner(result), box_weight=1.0)(short, priors, targets)
    d = [softplus(v) for v in (0.0, 1.0, -1.0, 2.0)]
    pred1 = [12 - 8 * d[0], 4 - 8 * d[1], 12 + 8 * d[2], 4 + 8 * d[3]]
    s = softplus(0.0)
    pred3 = [12 - 8 * s, 12 - 8 * s, 12 + 8 * s, 12 + 8 * s]
    expected = (0.9 * (1 - iou(pred1, hand["target"])) + 0.6 * (1 - iou(pred3, hand["target"]))) / 1.5
    assert out["box"].item() == pytest.approx(expected, rel=1e-5)
    assert out["dfl"].item() == 0.0


def test_no_objects_the_normaliser_is_one_and_only_classes_learn() -> None:
    priors = make_point_priors((8,), 16, reg_max=R)
    raw = torch.randn(2, 4, 4 * (R + 1) + 2, generator=torch.Generator().manual_seed(0)).requires_grad_()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    out = AnchorFreeLoss()(raw, priors, empty)
    logits = raw.detach()[..., 4 * (R + 1) :].double()
    expected = torch.nn.functional.softplus(logits).sum().item()  # BCE against 0, divided by max(0, 1)
    assert out["cls"].item() == pytest.approx(expected, rel=1e-5)
    assert out["box"].item() == 0.0 and out["dfl"].item() == 0.0 and out["num_pos"].item() == 0
    out["loss"].backward()
    assert raw.grad is not None and torch.isfinite(raw.grad).all()
    assert raw.grad[..., : 4 * (R + 1)].abs().sum() == 0 and raw.grad[..., 4 * (R + 1) :].abs().sum() > 0


def batch() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[2.0, 3.0, 20.0, 12.0], [16.0, 16.0, 31.0, 30.0], [5.0, 20.0, 7.0, 23.0]]),
         "labels": torch.tensor([0, 2, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]), "labels": torch.tensor([1])},
    ]


@pytest.mark.parametrize("reg_max", [R, None])
@pytest.mark.parametrize("assigner", ASSIGNERS)
@pytest.mark.parametrize("cls_loss", ["bce", "focal", "varifocal", "quality_focal"])
def test_every_assigner_and_class_loss_gives_finite_terms_and_gradients(
    assigner: str, reg_max: int | None, cls_loss: str
) -> None:
    torch.manual_seed(0)
    model = AnchorFreeYOLO(3, strides=(8, 16), width=8, reg_max=reg_max)
    raw = model(torch.randn(3, 3, 32, 32))
    loss = AnchorFreeLoss("ciou", cls_loss, assigner=assigner)
    out = loss(raw, model.priors(32), batch())
    assert out["num_pos"].item() > 0
    for key in AnchorFreeLoss.terms:
        assert torch.isfinite(out[key]), key
    assert (out["dfl"].item() > 0) == (reg_max is not None)
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # saturated outputs (logits of +-100) stay finite
    wild = (raw.detach().sign() * 100).requires_grad_()
    out = loss(wild, model.priors(32), batch())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and wild.grad is not None and torch.isfinite(wild.grad).all()


def test_pad_targets_pads_images_of_different_counts() -> None:
    labels, boxes, mask = pad_targets(batch())
    assert labels.tolist() == [[0, 2, 1], [0, 0, 0], [1, 0, 0]]
    assert mask.tolist() == [[True, True, True], [False, False, False], [True, False, False]]
    torch.testing.assert_close(boxes[2, 0], torch.tensor([0.0, 0.0, 32.0, 32.0]))
    assert boxes[1].abs().sum() == 0


def test_postprocess_scores_are_the_class_probabilities() -> None:
    priors = make_point_priors((8,), 16, reg_max=None)
    raw = torch.full((1, 4, 6), -10.0)
    raw[0, :, :4] = 0.0
    raw[0, 2, 4:] = torch.tensor([-10.0, 1.5])  # slot 2, class 1: sigmoid(1.5) = 0.8176, no objectness factor
    detections = postprocess(raw, priors, image_size=16, score_threshold=0.01)
    assert detections[0]["labels"].tolist() == [1]
    assert detections[0]["scores"].tolist() == pytest.approx([1 / (1 + math.exp(-1.5))])
    s = 8 * softplus(0.0)
    expected = torch.tensor([max(4 - s, 0.0), 12 - s, 4 + s, min(12 + s, 16.0)])  # clipped to the image
    torch.testing.assert_close(detections[0]["boxes"][0], expected)


def test_bad_settings_name_the_argument() -> None:
    with pytest.raises(DetLossError, match="box_loss"):
        AnchorFreeLoss("l2")  # on encoded values: the YOLOv3 head's only
    with pytest.raises(DetLossError, match="cls_loss"):
        AnchorFreeLoss("ciou", "ciou")
    with pytest.raises(DetLossError, match="assigner"):
        AnchorFreeLoss(assigner="hungarian")
    with pytest.raises(DetLossError, match="dfl_weight"):
        AnchorFreeLoss(dfl_weight=-1.0)
    with pytest.raises(DetLossError, match="reg_max"):
        AnchorFreeYOLO(4, reg_max=0)
    priors = make_point_priors((8,), 16, reg_max=R)
    raw = torch.zeros(1, 4, 4 * (R + 1) + 2)
    with pytest.raises(DetLossError, match=r"labels in \[0, 2\)"):
        AnchorFreeLoss()(raw, priors, [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([2])}])
    with pytest.raises(DetLossError, match="raw"):
        AnchorFreeLoss()(raw[..., :20], priors, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])


def test_atss_anchors_of_four_strides_give_most_objects_a_positive_where_eight_do_not() -> None:
    from detloss.assign import ATSSAssigner
    from detloss.detection.assign import build_assigner
    from detloss.detection.data import SyntheticScenes, collate

    data = SyntheticScenes(64, 64, seed=0)
    _, targets = collate([data[i] for i in range(64)])
    labels, gt_boxes, gt_mask = pad_targets(targets)
    priors = make_point_priors((8, 16), 64, reg_max=None)
    boxes = decode_points(torch.zeros(64, priors.num_slots, 8), priors)  # only the anchor boxes matter to ATSS
    scores = torch.full((64, priors.num_slots, 4), 0.01)
    side = (gt_boxes[..., 2:] - gt_boxes[..., :2]).prod(-1).sqrt()

    def covered(assigner: DenseAssigner) -> torch.Tensor:
        r = assigner(scores, boxes, priors.anchors, labels, gt_boxes, gt_mask)
        hit = torch.zeros_like(gt_mask)
        b, a = r.fg_mask.nonzero(as_tuple=True)
        hit[b, r.gt_index[b, a]] = True
        return hit

    paper, ours = covered(ATSSAssigner()), covered(build_assigner("atss", (8, 16)))
    count = int(gt_mask.sum())
    small = gt_mask & (side < 12)
    assert int(paper.sum()) < 0.2 * count and int((paper & small).sum()) == 0
    assert int(ours.sum()) > 0.4 * count and int((ours & small).sum()) > 0

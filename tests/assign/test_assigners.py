"""The dense assigners against loop references, hand-worked cases, and the shared contracts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import detloss.assign._geometry as geometry
from detloss import DetLossError
from detloss.assign import (
    Anchors,
    AssignResult,
    ATSSAssigner,
    SimOTAAssigner,
    TaskAlignedAssigner,
    make_anchors,
)
from tests.assign.guards import NoHostReads
from tests.assign.reference import ref_atss, ref_simota, ref_task_aligned

C = 3
Box = tuple[float, float, float, float]


def _problem(seed: int, batch: int = 3, num_gt: int = 4, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """A 32 x 32 image, levels of stride 8 and 16 (20 anchors); some images padded."""
    g = torch.Generator().manual_seed(seed)
    anchors = make_anchors([(4, 4), (2, 2)], [8, 16], dtype=dtype)
    count = anchors.points.shape[0]
    ltrb = torch.rand(batch, count, 4, generator=g, dtype=dtype) * 12 + 2
    boxes = torch.cat([anchors.points - ltrb[..., :2], anchors.points + ltrb[..., 2:]], -1)
    centre = torch.rand(batch, num_gt, 2, generator=g, dtype=dtype) * 24 + 4
    size = torch.rand(batch, num_gt, 2, generator=g, dtype=dtype) * 18 + 6
    gt = torch.cat([centre - size / 2, centre + size / 2], -1)
    counts = torch.randint(0, num_gt + 1, (batch,), generator=g)
    counts[0] = num_gt
    mask = torch.arange(num_gt)[None] < counts[:, None]
    return {
        "scores": torch.rand(batch, count, C, generator=g, dtype=dtype) * 0.9 + 0.05,
        "boxes": boxes,
        "anchors": anchors,
        "gt_labels": torch.where(mask, torch.randint(0, C, (batch, num_gt), generator=g), -1),
        "gt_boxes": torch.where(mask[..., None], gt, float("nan")),  # padding is never read
        "gt_mask": mask,
    }


def _as_dicts(r: AssignResult) -> list[dict[int, tuple[int, float]]]:
    out = []
    for b in range(r.fg_mask.shape[0]):
        fg = r.fg_mask[b].nonzero().flatten().tolist()
        out.append({a: (int(r.gt_index[b, a]), float(r.scores[b, a, r.labels[b, a]])) for a in fg})
    return out


def _check_against(result: AssignResult, expected: list[dict[int, tuple[int, float]]], p: dict[str, Any]) -> None:
    got = _as_dicts(result)
    for b, (mine, ref) in enumerate(zip(got, expected)):
        assert {a: j for a, (j, _) in mine.items()} == {a: j for a, (j, _) in ref.items()}, f"image {b}"
        for a, (j, score) in ref.items():
            assert mine[a][1] == pytest.approx(score, rel=1e-6, abs=1e-9)
            assert int(result.labels[b, a]) == int(p["gt_labels"][b, j])
            assert torch.equal(result.boxes[b, a], p["gt_boxes"][b, j])
    bg = ~result.fg_mask
    assert (result.labels[bg] == C).all() and (result.gt_index[bg] == -1).all()
    assert (result.boxes[bg] == 0).all() and (result.scores[bg] == 0).all()
    assert (result.scores.count_nonzero(dim=2) <= 1).all()  # one class column at most


def _image(p: dict[str, Any], b: int) -> dict[str, Any]:
    n = int(p["gt_mask"][b].sum())
    return {
        "scores": p["scores"][b].tolist(),
        "preds": [tuple(x) for x in p["boxes"][b].tolist()],
        "points": [tuple(x) for x in p["anchors"].points.tolist()],
        "labels": p["gt_labels"][b, :n].tolist(),
        "gts": [tuple(x) for x in p["gt_boxes"][b, :n].tolist()],
    }


def _call(assigner: Callable[..., AssignResult], p: dict[str, Any]) -> AssignResult:
    return assigner(p["scores"], p["boxes"], p["anchors"], p["gt_labels"], p["gt_boxes"], p["gt_mask"])


# ------------------------------------------------------------------ against the loop references


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "settings",
    [
        {"topk": 3, "alpha": 0.5, "beta": 6.0, "kind": "iou", "rule": "tood"},
        {"topk": 13, "alpha": 1.0, "beta": 6.0, "kind": "iou", "rule": "tood"},
        {"topk": 3, "alpha": 0.5, "beta": 6.0, "kind": "iou", "rule": "ultralytics"},
        {"topk": 4, "alpha": 1.0, "beta": 2.0, "kind": "iou", "rule": "ultralytics", "min_box_size": 16.0},
    ],
)
def test_task_aligned_equals_reference(seed: int, settings: dict[str, Any]) -> None:
    p = _problem(seed)
    s = dict(settings)
    assigner = TaskAlignedAssigner(
        topk=s["topk"],
        alpha=s["alpha"],
        beta=s["beta"],
        iou_kind=s["kind"],
        rule=s["rule"],
        min_box_size=s.get("min_box_size", 0.0),
    )
    expected = [ref_task_aligned(**_image(p, b), **s) for b in range(p["gt_mask"].shape[0])]
    assert sum(map(len, expected)) > 0
    _check_against(_call(assigner, p), expected, p)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("topk", [2, 3, 9])
def test_atss_equals_reference(seed: int, topk: int) -> None:
    p = _problem(seed)
    assigner = ATSSAssigner(topk=topk, anchor_scale=2.0)  # 16 and 32 px anchors, 6-24 px objects
    half = 1.0 * p["anchors"].strides[:, None]
    anchor_boxes = [tuple(b) for b in torch.cat([p["anchors"].points - half, p["anchors"].points + half], 1).tolist()]
    expected = []
    for b in range(p["gt_mask"].shape[0]):
        image = _image(p, b)
        expected.append(ref_atss(image["preds"], anchor_boxes, p["anchors"].level_sizes, image["gts"], topk=topk))
    assert sum(map(len, expected)) > 0
    _check_against(_call(assigner, p), expected, p)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("assigner", [SimOTAAssigner(), SimOTAAssigner.yolox_2021(), SimOTAAssigner(center_radius=0.8)])
def test_simota_equals_reference(seed: int, assigner: SimOTAAssigner) -> None:
    p = _problem(seed)
    strides = p["anchors"].strides.tolist()
    expected = [
        ref_simota(**_image(p, b), strides=strides, radius=assigner.center_radius, box_prior=assigner.box_prior)
        for b in range(p["gt_mask"].shape[0])
    ]
    assert sum(map(len, expected)) > 0
    _check_against(_call(assigner, p), expected, p)


ASSIGNERS = [
    TaskAlignedAssigner(),
    TaskAlignedAssigner.tood(),
    TaskAlignedAssigner.yolov8(),
    ATSSAssigner(anchor_scale=2.0),  # the default 8 strides would dwarf these 32 px images
    SimOTAAssigner(),
    SimOTAAssigner.yolox_2021(),
]


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=repr)
def test_blocks_of_objects_give_the_same_result(assigner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _problem(11, batch=2, num_gt=5)
    whole = _call(assigner, p)
    count = p["anchors"].points.shape[0]
    monkeypatch.setattr(geometry, "PAIR_BLOCK", 2 * count)  # one object per block
    import detloss.assign.base as base

    monkeypatch.setattr(base, "PAIR_BLOCK", 2 * count)
    blocked = _call(assigner, p)
    for x, y in zip(whole, blocked):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------ hand-worked cases

# A row of anchors at x = 2, 6, 10, 14 (y = 2, stride 4). With scores 1 and alpha = beta = 1
# the task-aligned metric is the IoU itself: t = u.
ROW = make_anchors([(1, 4)], [4], dtype=torch.float64)


def _row_call(
    assigner: Any, preds: list[Box], gts: list[Box], labels: list[int], anchors: Anchors = ROW, score: float = 1.0
) -> AssignResult:
    count = anchors.points.shape[0]
    return assigner(
        torch.full((1, count, C), score, dtype=torch.float64),
        torch.tensor([preds], dtype=torch.float64),
        anchors,
        torch.tensor([labels]),
        torch.tensor([gts], dtype=torch.float64),
        torch.ones(1, len(gts), dtype=torch.bool),
    )


def test_tal_rules_differ_on_the_topk_domain() -> None:
    # object (0, 0, 8, 4) holds the points x = 2 and 6. IoUs of the predictions with it:
    # x=2 (0,0,4,4): 16/32 = 0.5;  x=6 (6,0,8,4): 8/32 = 0.25;  x=10 is the object itself: 1.0
    # (but its point lies outside);  x=14: 0.
    preds = [(0.0, 0.0, 4.0, 4.0), (6.0, 0.0, 8.0, 4.0), (0.0, 0.0, 8.0, 4.0), (12.0, 0.0, 16.0, 4.0)]
    gts = [(0.0, 0.0, 8.0, 4.0)]
    # tood: top 2 over all anchors = {x=10 (1.0), x=2 (0.5)}; x=10 is outside: one positive,
    # t / (max t + 1e-7) * max u = 0.5 / (0.5 + 1e-7) * 0.5
    r = _row_call(TaskAlignedAssigner(topk=2, alpha=1.0, beta=1.0, iou_kind="iou"), preds, gts, [1])
    assert r.fg_mask[0].tolist() == [True, False, False, False]
    assert float(r.scores[0, 0, 1]) == pytest.approx(0.5 * 0.5 / (0.5 + 1e-7), rel=1e-8)  # 0.5 would fail
    # ultralytics: top 2 among the anchors inside = {x=2, x=6}: scores 0.5 and 0.25 * 0.5 / 0.5
    r = _row_call(TaskAlignedAssigner(topk=2, alpha=1.0, beta=1.0, iou_kind="iou", rule="ultralytics"), preds, gts, [1])
    assert r.fg_mask[0].tolist() == [True, True, False, False]
    torch.testing.assert_close(r.scores[0, :2, 1], torch.tensor([0.5, 0.25], dtype=torch.float64), rtol=1e-7, atol=0)


def test_tal_rules_differ_on_zero_metrics() -> None:
    # two anchors, x = 2 and 6, both inside the object (0,0,8,4); x=6 predicts a box far away
    # (IoU 0, so t = 0). topk 2: tood drops t = 0; ultralytics keeps it, with a 0 soft target.
    anchors = make_anchors([(1, 2)], [4], dtype=torch.float64)
    preds = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [20.0, 0.0, 24.0, 4.0]]], dtype=torch.float64)
    gt, labels, mask = (
        torch.tensor([[[0.0, 0.0, 8.0, 4.0]]], dtype=torch.float64),
        torch.tensor([[0]]),
        torch.ones(1, 1, dtype=torch.bool),
    )
    scores = torch.ones(1, 2, C, dtype=torch.float64)
    tood = TaskAlignedAssigner(topk=2, iou_kind="iou")(scores, preds, anchors, labels, gt, mask)
    ul = TaskAlignedAssigner(topk=2, iou_kind="iou", rule="ultralytics")(scores, preds, anchors, labels, gt, mask)
    assert tood.fg_mask[0].tolist() == [True, False]
    assert ul.fg_mask[0].tolist() == [True, True] and float(ul.scores[0, 1, 0]) == 0.0


def test_tal_rules_differ_on_anchors_claimed_twice() -> None:
    # x=6 predicts (4,0,8,4) and lies inside G0 (0,0,8,8), G1 (5,0,7,8) and G2 (4,0,12,4):
    # IoUs 16/64 = 0.25, 8/24 = 1/3, 16/32 = 0.5. x=10 predicts G2 exactly (IoU 1), so with
    # topk = 1 G2 takes x=10, while G0 and G1 both take x=6 (their best anchor:
    # x=2 predicts (0,0,1,1), 1/64 with G0; x=10's box has 16/80 = 0.2 with G0, 8/40 with G1).
    preds = [(0.0, 0.0, 1.0, 1.0), (4.0, 0.0, 8.0, 4.0), (4.0, 0.0, 12.0, 4.0), (13.0, 0.0, 16.0, 4.0)]
    gts = [(0.0, 0.0, 8.0, 8.0), (5.0, 0.0, 7.0, 8.0), (4.0, 0.0, 12.0, 4.0)]
    tood = _row_call(TaskAlignedAssigner(topk=1, alpha=1.0, beta=1.0, iou_kind="iou"), preds, gts, [0, 1, 2])
    ultra = TaskAlignedAssigner(topk=1, alpha=1.0, beta=1.0, iou_kind="iou", rule="ultralytics")
    ul = _row_call(ultra, preds, gts, [0, 1, 2])
    # tood: x=6 goes to the better of the objects that chose it, G1 (1/3 > 1/4)
    assert tood.gt_index[0].tolist() == [-1, 1, 2, -1] and tood.labels[0].tolist() == [C, 1, 2, C]
    # ultralytics: to the best of all objects containing its point, G2 (1/2), which it never chose
    assert ul.gt_index[0].tolist() == [-1, 2, 2, -1] and ul.labels[0].tolist() == [C, 2, 2, C]
    # soft targets: tood G1 alone, 1/3 / (1/3 + 1e-7) * 1/3; G2 alone, 1 / (1 + 1e-7)
    torch.testing.assert_close(
        tood.scores[0, [1, 2], [1, 2]], torch.tensor([1 / 9 / (1 / 3 + 1e-7), 1 / (1 + 1e-7)], dtype=torch.float64)
    )
    # ultralytics: G2 owns x=6 (t = 0.5) and x=10 (t = 1): max t = max u = 1
    torch.testing.assert_close(ul.scores[0, [1, 2], [2, 2]], torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_tal_min_box_size_widens_thin_objects_for_the_centre_test() -> None:
    # a 1 px wide object between the points x = 6 and 10 holds no anchor point; widened to
    # 4 px about x = 7 it spans 5..9 and holds x = 6
    preds = [(0.0, 0.0, 4.0, 4.0), (5.0, 0.0, 9.0, 4.0), (8.0, 0.0, 12.0, 4.0), (12.0, 0.0, 16.0, 4.0)]
    gts = [(6.5, 0.0, 7.5, 4.0)]
    plain = TaskAlignedAssigner(topk=2, iou_kind="iou", rule="ultralytics")
    assert not _row_call(plain, preds, gts, [0]).fg_mask.any()
    wide = TaskAlignedAssigner(topk=2, iou_kind="iou", rule="ultralytics", min_box_size=4.0)
    assert _row_call(wide, preds, gts, [0]).fg_mask[0].tolist() == [False, True, False, False]


def test_atss_per_level_candidates_and_threshold() -> None:
    # level 0: stride 4, 4 x 4 cells (points 2, 6, 10, 14); level 1: stride 8, 2 x 2 (points
    # 4, 12); anchor boxes of side 2 strides. Object (3,2,11,10), centre (7, 6).
    # nearest 2 per level: (6,6) and (10,6) at 1 and 3; (4,4) and (12,4) at 3.6 and 5.4
    # IoUs: (2,2,10,10) 56/72, (6,2,14,10) 40/88, (-4,-4,12,12) 64/256, (4,-4,20,12) 56/264
    # mean 0.4236 + std 0.2590 = 0.6826: only (6,6) passes, and its point lies inside
    anchors = make_anchors([(4, 4), (2, 2)], [4, 8], dtype=torch.float64)
    gt = torch.tensor([[[3.0, 2.0, 11.0, 10.0]]], dtype=torch.float64)
    preds = gt.expand(1, 20, 4)  # every prediction exact: soft score 1
    r = ATSSAssigner(topk=2, anchor_scale=2.0)(
        torch.zeros(1, 20, C), preds, anchors, torch.tensor([[2]]), gt, torch.tensor([[True]])
    )
    assert r.fg_mask[0].nonzero().flatten().tolist() == [5]  # (6, 6): row 1, column 1 of level 0
    assert float(r.scores[0, 5, 2]) == pytest.approx(1.0)
    # with the 4 nearest over all levels instead (no per-level split), (6,2) and (6,10) at 4.1
    # would replace the level-1 anchors: the per-level rule is what the result shows


def test_atss_requires_the_centre_inside_the_object() -> None:
    # level 0: 4 x 4 cells of 4 px (anchor boxes = cells); level 1: one 16 px anchor at (8, 8).
    # Object (0, 0, 7.9, 16): candidates (2,6), (2,10) with IoU 16/126.4 and the big anchor with
    # 126.4/256 = 0.494 > threshold 0.461, but its point x = 8 lies outside (x2 = 7.9): none.
    # Widened to (0, 0, 8.1, 16) the point lies inside: IoU 129.6/256 = 0.506 > 0.472.
    anchors = make_anchors([(4, 4), (1, 1)], [4, 16], dtype=torch.float64)
    for right, expected in ((7.9, []), (8.1, [16])):
        gt = torch.tensor([[[0.0, 0.0, right, 16.0]]], dtype=torch.float64)
        r = ATSSAssigner(topk=2, anchor_scale=1.0)(
            torch.zeros(1, 17, C), gt.expand(1, 17, 4), anchors, torch.tensor([[0]]), gt, torch.tensor([[True]])
        )
        assert r.fg_mask[0].nonzero().flatten().tolist() == expected


def test_atss_anchor_claimed_twice_keeps_the_higher_iou() -> None:
    # 3 x 3 cells of 4 px; the middle cell (4,4,8,8) is positive for A (3,3,9,9), IoU 16/36,
    # and for B (4,4,8.5,8.5), IoU 16/20.25 (each: see the ATSSAssigner example for A; for B
    # the 5 nearest cells give IoUs 0.79, 0.058, 0.058, 0, 0: threshold 0.18 + 0.34)
    anchors = make_anchors([(3, 3)], [4], dtype=torch.float64)
    cells = torch.cat([anchors.points - 2, anchors.points + 2], 1)[None]
    a, b = [3.0, 3.0, 9.0, 9.0], [4.0, 4.0, 8.5, 8.5]
    for gts, owner in (([a, b], 1), ([b, a], 0)):
        r = ATSSAssigner(topk=5, anchor_scale=1.0)(
            torch.zeros(1, 9, C),
            cells,
            anchors,
            torch.tensor([[0, 1]]),
            torch.tensor([gts], dtype=torch.float64),
            torch.ones(1, 2, dtype=torch.bool),
        )
        assert r.fg_mask[0].nonzero().flatten().tolist() == [4]
        assert int(r.gt_index[0, 4]) == owner  # B, wherever it stands
        assert float(r.scores[0, 4, r.labels[0, 4]]) == pytest.approx(16 / 20.25, rel=1e-6)


def test_simota_conflict_goes_to_the_cheaper_object() -> None:
    # points x = 2, 6, 10, 14, 18 (stride 4, radius 1.5: |x - c_x| < 6). G0 (4,0,12,4) centre 8
    # holds x = 6, 10 in its region; G1 (8,0,16,4) centre 12 holds x = 10, 14.
    # predictions: x=6 (4,0,7,4): IoU 12/32 with G0; x=10 (7.5,0,13,4): 18/36 with G0 and
    # 20/34 with G1; x=14 (12,0,16,4): 16/32 with G1. Sums of IoUs below 2: k = 1 each.
    # G0's cheapest is x=10 (-log 0.5 < -log 0.375), G1's too (-log 0.588 < -log 0.5): the
    # anchor goes to G1, the cheaper (same class cost, IoU cost 3 (-log 0.588) < 3 (-log 0.5)),
    # and G0 keeps nothing.
    anchors = make_anchors([(1, 5)], [4], dtype=torch.float64)
    preds = [
        (0.0, 0.0, 1.0, 1.0),
        (4.0, 0.0, 7.0, 4.0),
        (7.5, 0.0, 13.0, 4.0),
        (12.0, 0.0, 16.0, 4.0),
        (20.0, 0, 21, 1),
    ]
    gts = [(4.0, 0.0, 12.0, 4.0), (8.0, 0.0, 16.0, 4.0)]
    r = _row_call(SimOTAAssigner(), preds, gts, [1, 1], anchors=anchors, score=0.3)
    assert r.gt_index[0].tolist() == [-1, -1, 1, -1, -1]
    assert float(r.scores[0, 2, 1]) == pytest.approx(20 / 34, rel=1e-6)


def test_simota_dynamic_k_truncates_the_iou_sum() -> None:
    # one object (0,0,16,4) centre (8, 2): the region |x - 8| < 6 holds x = 6 and 10 (x = 2 and
    # 14 are 6 away). Predictions: x=6 the object itself (IoU 1), x=10 (2,0,16,4) (56/64).
    # Sum 1.875: k = int(1.875) = 1, so only x=6 (the cheaper) is taken, not both.
    preds = [(0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 16.0, 4.0), (2.0, 0.0, 16.0, 4.0), (30.0, 0.0, 31.0, 1.0)]
    gts = [(0.0, 0.0, 16.0, 4.0)]
    assert _row_call(SimOTAAssigner(), preds, gts, [0], score=0.5).fg_mask[0].tolist() == [False, True, False, False]
    # a wider centre region (2.5 strides: |x - 8| < 10) makes all four points candidates;
    # predictions with IoUs 0.875, 1, 0.9375, 0.75 sum to 3.56: the 3 cheapest, all but x=14
    preds = [(0.0, 0.0, 14.0, 4.0), (0.0, 0.0, 16.0, 4.0), (1.0, 0.0, 16.0, 4.0), (0.0, 0.0, 12.0, 4.0)]
    r = _row_call(SimOTAAssigner(center_radius=2.5), preds, gts, [0], score=0.5)
    assert r.fg_mask[0].tolist() == [True, True, True, False]
    torch.testing.assert_close(r.scores[0, :3, 0], torch.tensor([0.875, 1.0, 0.9375], dtype=torch.float64))


# ------------------------------------------------------------------ shared contracts


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=repr)
def test_no_objects_at_all(assigner: Any) -> None:
    p = _problem(0)
    for key, shape in (("gt_labels", (3, 0)), ("gt_boxes", (3, 0, 4)), ("gt_mask", (3, 0))):
        p[key] = torch.zeros(shape, dtype=p[key].dtype)
    r = _call(assigner, p)
    assert not r.fg_mask.any() and (r.labels == C).all() and (r.scores == 0).all()
    assert r.scores.shape == p["scores"].shape and r.boxes.shape == p["boxes"].shape


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=repr)
def test_images_of_padding_only_get_no_positives(assigner: Any) -> None:
    p = _problem(2)
    p["gt_mask"][1] = False
    r = _call(assigner, p)
    assert not r.fg_mask[1].any()
    assert r.fg_mask[0].any()


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=repr)
def test_one_object_in_the_middle(assigner: Any) -> None:
    p = _problem(4, batch=1, num_gt=1)
    p["gt_boxes"] = torch.tensor([[[8.0, 8.0, 24.0, 24.0]]], dtype=torch.float64)
    p["gt_labels"] = torch.tensor([[2]])
    p["gt_mask"] = torch.tensor([[True]])
    r = _call(assigner, p)
    assert r.fg_mask.any()
    assert (r.gt_index[r.fg_mask] == 0).all() and (r.labels[r.fg_mask] == 2).all()
    assert ((r.scores[r.fg_mask][:, 2] > 0) & (r.scores[r.fg_mask][:, 2] <= 1)).all()


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=repr)
def test_fewer_anchors_than_topk(assigner: Any) -> None:
    anchors = make_anchors([(1, 2)], [16])  # 2 anchors, topk 9 / 10 / 13
    gt = torch.tensor([[[0.0, 0.0, 32.0, 16.0]]])
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [16.0, 0.0, 32.0, 16.0]]])
    r = assigner(torch.full((1, 2, C), 0.5), boxes, anchors, torch.tensor([[0]]), gt, torch.tensor([[True]]))
    assert r.fg_mask.shape == (1, 2) and r.fg_mask.any()


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=repr)
def test_float16_inputs_give_the_float32_result(assigner: Any) -> None:
    p = _problem(5, dtype=torch.float32)
    full = _call(assigner, p)
    half = dict(p)
    for key in ("scores", "boxes", "gt_boxes"):
        half[key] = p[key].half()
    rounded = dict(p)  # the same values, rounded to float16, computed in float32
    for key in ("scores", "boxes", "gt_boxes"):
        rounded[key] = half[key].float()
    r = _call(assigner, half)
    assert r.scores.dtype == torch.float32
    expected = _call(assigner, rounded)
    for x, y in zip(r, expected):
        torch.testing.assert_close(x, y.to(x.dtype), equal_nan=True)
    assert full.fg_mask.any()


def test_make_anchors_and_anchors_checks() -> None:
    a = make_anchors([(2, 3)], [8], offset=0.0)
    assert a.points[:4].tolist() == [[0.0, 0.0], [8.0, 0.0], [16.0, 0.0], [0.0, 8.0]]
    with pytest.raises(DetLossError, match="make_anchors\\(\\): argument `strides`"):
        make_anchors([(2, 2)], [8, 16])
    with pytest.raises(DetLossError, match="Anchors\\(\\): argument `level_sizes`"):
        Anchors(a.points, a.strides, (5,))
    with pytest.raises(DetLossError, match="Anchors\\(\\): argument `strides`"):
        Anchors(a.points, a.strides[:2], (6,))


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: TaskAlignedAssigner(topk=0), "topk"),
        (lambda: TaskAlignedAssigner(alpha=-1.0), "alpha"),
        (lambda: TaskAlignedAssigner(rule="mmdet"), "rule"),  # type: ignore[arg-type]
        (lambda: TaskAlignedAssigner(iou_kind="dice"), "iou_kind"),  # type: ignore[arg-type]
        (lambda: ATSSAssigner(topk=2.5), "topk"),  # type: ignore[arg-type]
        (lambda: ATSSAssigner(anchor_scale=0.0), "anchor_scale"),
        (lambda: SimOTAAssigner(center_radius=-1.0), "center_radius"),
        (lambda: SimOTAAssigner(candidate_topk=0), "candidate_topk"),
        (lambda: SimOTAAssigner(box_prior=1), "box_prior"),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_fail_when_built(build: Callable[[], Any], name: str) -> None:
    with pytest.raises(DetLossError, match=f"argument `{name}`"):
        build()


@pytest.mark.parametrize("assigner", [TaskAlignedAssigner(), ATSSAssigner(), SimOTAAssigner()], ids=repr)
def test_bad_inputs_name_the_argument(assigner: Any) -> None:
    p = _problem(0)
    cases = {
        "scores": dict(p, scores=p["scores"][0]),
        "boxes": dict(p, boxes=p["boxes"][:, :5]),
        "anchors": dict(p, anchors=p["anchors"].points),
        "gt_labels": dict(p, gt_labels=p["gt_labels"].double()),
        "gt_boxes": dict(p, gt_boxes=p["gt_boxes"][..., :3]),
        "gt_mask": dict(p, gt_mask=p["gt_mask"].long()),
    }
    for name, inputs in cases.items():
        with pytest.raises(DetLossError, match=f"argument `{name}`"):
            _call(assigner, inputs)


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=repr)
def test_no_host_reads_inside(assigner: Any) -> None:
    p = _problem(6)
    with NoHostReads():
        r = _call(assigner, p)
    assert r.fg_mask.any()
    with pytest.raises(AssertionError, match="host read"), NoHostReads():  # the guard itself works
        p["boxes"][p["gt_mask"][:, :1].expand(-1, 20)]

"""Matching costs against a plain loop over (image, query, object) with the scalar formulas."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import DetLossError
from detloss.assign import (
    NONFINITE_COST,
    MatchingCost,
    class_cost,
    focal_cost,
    iou_cost,
    l1_cost,
    sanitize_cost,
    target_mask,
)
from tests.assign.guards import NoHostReads
from tests.reference import ref_similarity

B, Q, T, C = 2, 5, 4, 3


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _focal_pair(x: float, alpha: float, gamma: float) -> float:
    """Deformable DETR's focal class cost, exact logarithms."""
    p = _sigmoid(x)
    return alpha * (1 - p) ** gamma * -math.log(p) - (1 - alpha) * p**gamma * -math.log(1 - p)


def _cxcywh_to_xyxy(b: list[float]) -> tuple[float, float, float, float]:
    cx, cy, w, h = b
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


@pytest.fixture
def problem() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    cxcy = torch.rand(B, Q, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
    wh = torch.rand(B, Q, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
    tcxcy = torch.rand(B, T, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
    twh = torch.rand(B, T, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
    return {
        "logits": torch.randn(B, Q, C, generator=g, dtype=torch.float64) * 3,
        "boxes": torch.cat([cxcy, wh], -1),
        "labels": torch.randint(0, C, (B, T), generator=g),
        "target": torch.cat([tcxcy, twh], -1),
    }


def _loop(fn) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.tensor([[[fn(b, q, t) for t in range(T)] for q in range(Q)] for b in range(B)], dtype=torch.float64)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 0.0), (0.9, 1.5)])
def test_focal_cost_equals_loop(problem: dict[str, torch.Tensor], alpha: float, gamma: float) -> None:
    x, lab = problem["logits"], problem["labels"]
    expected = _loop(lambda b, q, t: _focal_pair(float(x[b, q, lab[b, t]]), alpha, gamma))
    torch.testing.assert_close(focal_cost(x, lab, alpha=alpha, gamma=gamma), expected, rtol=1e-10, atol=1e-12)


def test_focal_cost_matches_the_authors_eps_form_at_moderate_logits(problem: dict[str, torch.Tensor]) -> None:
    # Deformable DETR writes -log(p + 1e-8) and -log(1 - p + 1e-8)
    x, lab = problem["logits"], problem["labels"]

    def eps_form(v: float) -> float:
        p = _sigmoid(v)
        return 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p**2 * -math.log(1 - p + 1e-8)

    expected = _loop(lambda b, q, t: eps_form(float(x[b, q, lab[b, t]])))
    torch.testing.assert_close(focal_cost(x, lab), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_class_cost_equals_loop(problem: dict[str, torch.Tensor], activation: str) -> None:
    x, lab = problem["logits"], problem["labels"]

    def prob(b: int, q: int, c: int) -> float:
        if activation == "sigmoid":
            return _sigmoid(float(x[b, q, c]))
        exps = [math.exp(float(v)) for v in x[b, q]]
        return exps[c] / sum(exps)

    expected = _loop(lambda b, q, t: -prob(b, q, int(lab[b, t])))
    torch.testing.assert_close(class_cost(x, lab, activation=activation), expected, rtol=1e-12, atol=1e-12)  # type: ignore[arg-type]


@pytest.mark.parametrize("box_format", ["cxcywh", "xyxy", "xywh"])
def test_l1_cost_is_on_cxcywh_whatever_the_format(problem: dict[str, torch.Tensor], box_format: str) -> None:
    p, t = problem["boxes"], problem["target"]
    expected = _loop(lambda b, q, j: sum(abs(float(p[b, q, i] - t[b, j, i])) for i in range(4)))
    if box_format == "xyxy":
        p, t = (torch.tensor([[_cxcywh_to_xyxy(r) for r in img.tolist()] for img in z], dtype=z.dtype) for z in (p, t))
    elif box_format == "xywh":
        p, t = (torch.cat([z[..., :2] - z[..., 2:] / 2, z[..., 2:]], -1) for z in (p, t))
    torch.testing.assert_close(l1_cost(p, t, box_format=box_format), expected, rtol=1e-10, atol=1e-12)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou", "eiou", "siou"])
def test_iou_cost_equals_loop(problem: dict[str, torch.Tensor], kind: str) -> None:
    p, t = problem["boxes"], problem["target"]
    expected = _loop(
        lambda b, q, j: -ref_similarity(_cxcywh_to_xyxy(p[b, q].tolist()), _cxcywh_to_xyxy(t[b, j].tolist()), kind)
    )
    # SIoU: the kernel's angle cost has an eps the reference's arcsin form has not; they differ
    # by ~eps / rho^2, 1e-5 for normalised boxes whose centres are 0.1 apart
    tol = 2e-5 if kind == "siou" else 1e-9
    torch.testing.assert_close(iou_cost(p, t, kind=kind), expected, rtol=tol, atol=tol)  # type: ignore[arg-type]


def test_iou_cost_blocks_give_the_same_matrix(
    problem: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    import detloss.assign._geometry as geometry

    whole = iou_cost(problem["boxes"], problem["target"], kind="ciou")
    monkeypatch.setattr(geometry, "PAIR_BLOCK", 2 * T)  # one query per block
    torch.testing.assert_close(iou_cost(problem["boxes"], problem["target"], kind="ciou"), whole, rtol=0, atol=0)


def test_costs_never_mix_images(problem: dict[str, torch.Tensor]) -> None:
    # each image's block equals the cost of that image alone
    full = MatchingCost.dino()(problem["logits"], problem["boxes"], problem["labels"], problem["target"])[0]
    for b in range(B):
        alone = MatchingCost.dino()(
            problem["logits"][b : b + 1],
            problem["boxes"][b : b + 1],
            problem["labels"][b : b + 1],
            problem["target"][b : b + 1],
        )[0]
        torch.testing.assert_close(full[b : b + 1], alone, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["detr", "deformable_detr", "dino"])
def test_matching_cost_presets_equal_the_weighted_loop(problem: dict[str, torch.Tensor], preset: str) -> None:
    x, p, lab, t = problem["logits"], problem["boxes"], problem["labels"], problem["target"]
    weights = {"detr": (1.0, 5.0, 2.0), "deformable_detr": (2.0, 5.0, 2.0), "dino": (2.0, 5.0, 2.0)}[preset]

    def pair(b: int, q: int, j: int) -> float:
        c = int(lab[b, j])
        if preset == "detr":
            exps = [math.exp(float(v)) for v in x[b, q]]
            cls = -exps[c] / sum(exps)
        else:
            cls = _focal_pair(float(x[b, q, c]), 0.25, 2.0)
        l1 = sum(abs(float(p[b, q, i] - t[b, j, i])) for i in range(4))
        giou = ref_similarity(_cxcywh_to_xyxy(p[b, q].tolist()), _cxcywh_to_xyxy(t[b, j].tolist()), "giou")
        return weights[0] * cls + weights[1] * l1 - weights[2] * giou

    cost, bad = getattr(MatchingCost, preset)()(x, p, lab, t)
    torch.testing.assert_close(cost, _loop(pair), rtol=1e-9, atol=1e-9)
    assert int(bad) == 0


def test_padding_columns_are_large_and_never_read(problem: dict[str, torch.Tensor]) -> None:
    lab, t = problem["labels"].clone(), problem["target"].clone()
    lab[0, 2:] = -1  # garbage labels and boxes in the padding of image 0
    t[0, 2:] = float("nan")
    num = [2, T]
    cost, bad = MatchingCost.dino()(problem["logits"], problem["boxes"], lab, t, num)
    assert int(bad) == 0  # the NaN boxes are padding, not an error
    assert (cost[0, :, 2:] == NONFINITE_COST).all()
    clean = MatchingCost.dino()(problem["logits"], problem["boxes"], problem["labels"], problem["target"])[0]
    torch.testing.assert_close(cost[0, :, :2], clean[0, :, :2], rtol=0, atol=0)
    torch.testing.assert_close(cost[1], clean[1], rtol=0, atol=0)


@pytest.mark.parametrize("part", ["logits", "boxes"])
def test_a_nan_prediction_gives_a_counted_finite_cost(problem: dict[str, torch.Tensor], part: str) -> None:
    inputs = dict(problem)
    inputs[part] = inputs[part].clone()
    inputs[part][1, 3, 0] = float("nan")  # query 3 of image 1
    cost, bad = MatchingCost.dino()(inputs["logits"], inputs["boxes"], inputs["labels"], inputs["target"])
    assert torch.isfinite(cost).all()
    if part == "boxes":
        assert int(bad) == T  # the whole row: every cost of that query
        assert (cost[1, 3] == NONFINITE_COST).all()
    else:  # only the objects of class 0 read that logit
        assert int(bad) == int((problem["labels"][1] == 0).sum())
        assert (cost[1, 3][problem["labels"][1] == 0] == NONFINITE_COST).all()
    assert (cost[0] < NONFINITE_COST).all()


@pytest.mark.parametrize("fn", [focal_cost, class_cost])
def test_each_class_cost_with_a_nan_logit_is_reported_by_sanitize(problem: dict[str, torch.Tensor], fn) -> None:  # type: ignore[no-untyped-def]
    x = problem["logits"].clone()
    x[0, 0, :] = float("nan")
    clean, bad = sanitize_cost(fn(x, problem["labels"]))
    assert int(bad) == T and torch.isfinite(clean).all()


@pytest.mark.parametrize("fn", [l1_cost, iou_cost])
def test_each_box_cost_with_a_nan_box_is_reported_by_sanitize(problem: dict[str, torch.Tensor], fn) -> None:  # type: ignore[no-untyped-def]
    p = problem["boxes"].clone()
    p[1, 4, 2] = float("inf")
    clean, bad = sanitize_cost(fn(p, problem["target"]))
    assert int(bad) == T and torch.isfinite(clean).all()


def test_float16_inputs_compute_in_float32(problem: dict[str, torch.Tensor]) -> None:
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in problem.items()}
    cost, bad = MatchingCost.dino()(half["logits"], half["boxes"], half["labels"], half["target"])
    assert cost.dtype == torch.float32 and int(bad) == 0
    full = MatchingCost.dino()(
        *(half[k].double() if half[k].is_floating_point() else half[k] for k in ("logits", "boxes", "labels", "target"))
    )[0]
    torch.testing.assert_close(cost.double(), full, rtol=1e-5, atol=1e-5)


def test_no_objects_and_no_queries() -> None:
    cost, bad = MatchingCost.detr()(
        torch.zeros(2, 3, 4), torch.rand(2, 3, 4), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 4)
    )
    assert cost.shape == (2, 3, 0) and int(bad) == 0
    cost, _ = MatchingCost.dino()(
        torch.zeros(1, 0, 4), torch.zeros(1, 0, 4), torch.zeros(1, 2, dtype=torch.long), torch.rand(1, 2, 4)
    )
    assert cost.shape == (1, 0, 2)


def test_target_mask() -> None:
    assert target_mask(torch.tensor([1, 3]), 3).tolist() == [[True, False, False], [True, True, True]]
    with pytest.raises(DetLossError, match="num_targets"):
        target_mask([4], 3)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: MatchingCost(alpha=1.5), "alpha"),
        (lambda: MatchingCost(gamma=-1.0), "gamma"),
        (lambda: MatchingCost(class_cost="hinge"), "class_cost"),  # type: ignore[arg-type]
        (lambda: MatchingCost(iou_kind="wiou"), "iou_kind"),  # type: ignore[arg-type]
        (lambda: MatchingCost(l1_weight=-5.0), "l1_weight"),
    ],
)
def test_bad_settings_fail_when_built(build, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DetLossError, match=f"MatchingCost\\(\\): argument `{name}`"):
        build()


def test_bad_inputs_name_the_argument(problem: dict[str, torch.Tensor]) -> None:
    x, lab, p, t = problem["logits"], problem["labels"], problem["boxes"], problem["target"]
    with pytest.raises(DetLossError, match="focal_cost\\(\\): argument `labels`"):
        focal_cost(x, lab.double())
    with pytest.raises(DetLossError, match="class_cost\\(\\): argument `logits`"):
        class_cost(x[0], lab)
    with pytest.raises(DetLossError, match="l1_cost\\(\\): argument `target`"):
        l1_cost(p, t[:1])
    with pytest.raises(DetLossError, match="iou_cost\\(\\): argument `kind`"):
        iou_cost(p, t, kind="dice")  # type: ignore[arg-type]
    with pytest.raises(DetLossError, match="iou_cost\\(\\): argument `pred`"):
        iou_cost(p[..., :3], t)


def test_matching_cost_reads_nothing_on_the_host(problem: dict[str, torch.Tensor]) -> None:
    with NoHostReads():
        cost, bad = MatchingCost.dino()(
            problem["logits"], problem["boxes"], problem["labels"], problem["target"], [4, 2]
        )
    assert int(bad) == 0 and cost.shape == (B, Q, T)


@pytest.mark.parametrize("blocked", [False, True])
def test_costs_have_float64_gradients(
    problem: dict[str, torch.Tensor], blocked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import detloss.assign._geometry as geometry

    if blocked:  # the block-filling path of the pairwise kernel too
        monkeypatch.setattr(geometry, "PAIR_BLOCK", 2 * T)
    x = problem["logits"][:1, :3].clone().requires_grad_()
    p = problem["boxes"][:1, :3].clone().requires_grad_()
    lab, t = problem["labels"][:1], problem["target"][:1]
    assert torch.autograd.gradcheck(lambda v: focal_cost(v, lab), (x,))
    assert torch.autograd.gradcheck(lambda v: class_cost(v, lab), (x,))
    assert torch.autograd.gradcheck(lambda v: l1_cost(v, t), (p,))
    for kind in ("giou", "diou"):  # not ciou: its alpha is held constant, as in the paper
        assert torch.autograd.gradcheck(lambda v, k=kind: iou_cost(v, t, kind=k), (p,))  # type: ignore[misc]

"""Classification and quality losses: hand values, float64 references, identities, stability, errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as tnf

import detloss
from detloss import functional as F
from detloss.boxes import aligned_iou
from detloss.errors import DetLossError
from tests import reference as R

DT = torch.float64
LN2 = math.log(2.0)


def logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT) * scale


def soft_targets(*shape: int, seed: int = 1) -> torch.Tensor:
    """Targets in [0, 1]: the first half of the rows exact 0/1, the rest soft."""
    t = torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
    t[: shape[0] // 2] = (t[: shape[0] // 2] > 0.6).to(DT)
    return t


def labels(n: int, classes: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def close(actual: torch.Tensor, expected: object, **kw: float) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), **kw)  # type: ignore[arg-type]


def grad_of(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    value = fn(x)
    (g,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), g


# ---------------------------------------------------------------------------- golden values by hand


def test_golden_binary_cross_entropy() -> None:
    x, t = torch.zeros(2), torch.tensor([1.0, 0.0])
    close(F.binary_cross_entropy_loss(x, t), LN2)  # p = 1/2 either way
    close(F.binary_cross_entropy_loss(x, t, pos_weight=3.0), 2 * LN2)  # (3 ln 2 + ln 2) / 2
    # p = 3/4 against t = 1/4: -(1/4 ln 3/4 + 3/4 ln 1/4) = 0.0719205 + 1.0397208
    x = torch.tensor([math.log(3.0)])
    close(F.binary_cross_entropy_loss(x, torch.tensor([0.25])), 1.1116413)


def test_golden_sigmoid_focal() -> None:
    x = torch.full((2,), math.log(3.0))  # p = 3/4
    out = F.sigmoid_focal_loss(x, torch.tensor([1.0, 0.0]), reduction="none")
    # positive: 0.25 * (1/4)^2 * ln(4/3) = 0.0044950; negative: 0.75 * (3/4)^2 * ln 4 = 0.5848428
    close(out, [0.25 * 0.0625 * math.log(4 / 3), 0.75 * 0.5625 * math.log(4.0)])
    close(out, [0.0044950, 0.5848428], atol=1e-6, rtol=0)
    # logit 0, target 1: 0.25 * (1/2)^2 * ln 2 = 0.0433217
    close(F.sigmoid_focal_loss(torch.zeros(1), torch.ones(1)), 0.0433217, atol=1e-6, rtol=0)


def test_golden_cross_entropy() -> None:
    close(F.cross_entropy_loss(torch.zeros(1, 4), torch.tensor([2])), math.log(4.0))  # uniform over 4
    x = torch.log(torch.tensor([[1.0, 3.0]]))  # p = (1/4, 3/4)
    close(F.cross_entropy_loss(x, torch.tensor([1])), 0.2876821, atol=1e-6, rtol=0)  # ln 4/3
    # q = (0.1, 0.9): 0.1 ln 4 + 0.9 ln 4/3 = 0.1386294 + 0.2589139
    close(F.cross_entropy_loss(x, torch.tensor([1]), label_smoothing=0.2), 0.3975433, atol=1e-6, rtol=0)
    close(F.cross_entropy_loss(x, torch.tensor([1]), class_weight=[1.0, 2.0]), 2 * 0.2876821, atol=1e-6, rtol=0)
    # the ignored row gives 0; "mean" divides by both rows
    close(F.cross_entropy_loss(x.repeat(2, 1), torch.tensor([1, -100])), 0.2876821 / 2, atol=1e-6, rtol=0)
    # probability targets (1/2, 1/2): 1/2 ln 4 + 1/2 ln 4/3
    close(F.cross_entropy_loss(x, torch.tensor([[0.5, 0.5]])), 0.8369882, atol=1e-6, rtol=0)


def test_golden_softmax_focal() -> None:
    x = torch.log(torch.tensor([[1.0, 3.0]]))
    close(F.softmax_focal_loss(x, torch.tensor([1])), 0.0625 * 0.2876821, atol=1e-6, rtol=0)
    close(F.softmax_focal_loss(x, torch.tensor([0])), 0.5625 * math.log(4.0), atol=1e-6, rtol=0)  # (3/4)^2 ln 4
    close(F.softmax_focal_loss(x, torch.tensor([0]), alpha=[0.2, 0.8]), 0.2 * 0.5625 * math.log(4.0))


def test_golden_quality_and_varifocal() -> None:
    close(F.quality_focal_loss(torch.zeros(1), torch.tensor([0.8])), 0.09 * LN2)  # |0.8 - 0.5|^2 ln 2
    close(F.quality_focal_loss(torch.zeros(1), torch.tensor([0.8]), beta=1.0), 0.3 * LN2)
    out = F.varifocal_loss(torch.zeros(2), torch.tensor([0.8, 0.0]), reduction="none")
    close(out, [0.8 * LN2, 0.75 * 0.25 * LN2])  # q BCE(1/2, q) = q ln 2; alpha p^2 ln 2


def test_golden_ghm_c() -> None:
    x = torch.log(torch.tensor([1.0, 1.0, 1.0, 3.0]))  # p = 1/2 (g = 1/2) x3 and 3/4 (g = 1/4)
    out = F.ghm_c_loss(x, torch.ones(4), reduction="none")
    # N = 4, two occupied regions: beta = 4 / 3 / 2 and 4 / 1 / 2
    close(out, [2 / 3 * LN2] * 3 + [2 * math.log(4 / 3)])
    # all in one region: beta = 1, plain BCE
    close(F.ghm_c_loss(torch.zeros(3), torch.ones(3)), LN2)
    # a zero weight removes the element from the counts: N = 3, regions 1/2 (x2), 1/4 (x1)
    w = torch.tensor([1.0, 0.0, 1.0, 1.0])
    out = F.ghm_c_loss(x, torch.ones(4), weight=w, reduction="none")
    close(out, [3 / 2 / 2 * LN2, 0.0, 3 / 2 / 2 * LN2, 3 / 2 * math.log(4 / 3)])


def test_ghm_c_mean_divides_by_the_valid_elements() -> None:
    # the paper's L = (1 / N) sum_i beta_i BCE_i with N the valid (not ignored) examples:
    # two valid elements at p = 1/2 (one region, beta = 2 / 2 / 1 = 1) give (ln 2 + ln 2) / 2
    w = torch.tensor([1.0, 1.0, 0.0, 0.0])
    close(F.ghm_c_loss(torch.zeros(4), torch.ones(4), weight=w), LN2)
    close(F.ghm_c_loss(torch.zeros(4), torch.ones(4), weight=w, reduction="sum"), 2 * LN2)
    # an explicit avg_factor still wins
    close(F.ghm_c_loss(torch.zeros(4), torch.ones(4), weight=w, avg_factor=4.0), LN2 / 2)


def test_ghm_c_mean_with_ignored_anchors_matches_reference() -> None:
    x, t = logits(10, 5, seed=4), soft_targets(10, 5, seed=5)
    ignored = torch.rand(10, 1, generator=torch.Generator().manual_seed(6), dtype=DT) < 0.3
    w = (~ignored).to(DT).expand(10, 5)
    elementwise, _ = R.ref_ghm_c(x.flatten().tolist(), t.flatten().tolist(), 10, w.flatten().tolist())
    valid = sum(1 for v in w.flatten().tolist() if v > 0)
    assert 0 < valid < 50
    close(F.ghm_c_loss(x, t, weight=w), sum(elementwise) / valid)
    close(F.ghm_c_loss(x, t, weight=(~ignored).to(DT)), sum(elementwise) / valid)  # a (N, 1) weight


def test_golden_kl_distill() -> None:
    s, t = torch.zeros(1, 2), torch.log(torch.tensor([[1.0, 3.0]]))
    # q = (1/4, 3/4), p = (1/2, 1/2): 1/4 ln 1/2 + 3/4 ln 3/2
    close(F.kl_div_distill_loss(s, t), 0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    # T = 2: q = (1, sqrt 3) / (1 + sqrt 3) = (0.3660254, 0.6339746); 4 * sum q ln 2q
    # = 4 (0.3660254 * -0.3119054 + 0.6339746 * 0.2374008) = 4 * 0.0363408
    q = torch.tensor([1.0, math.sqrt(3.0)], dtype=DT) / (1 + math.sqrt(3.0))
    close(F.kl_div_distill_loss(s.double(), t.double(), temperature=2.0), 4 * (q * torch.log(2 * q)).sum())
    close(F.kl_div_distill_loss(s.double(), t.double(), temperature=2.0), 0.1453631, atol=1e-7, rtol=0)


def test_golden_margins() -> None:
    f = torch.tensor([2.0, 0.5, -1.0, -3.0])
    close(F.hinge_loss(f, torch.tensor([1, 1, 0, 1]), reduction="none"), [0.0, 0.5, 0.0, 4.0])
    close(F.hinge_loss(f, torch.tensor([1.0, 1.0, -1.0, 1.0]), margin=2.0, reduction="none"), [0.0, 1.5, 1.0, 5.0])
    f = torch.tensor([0.0, LN2, LN2], dtype=DT)
    close(F.exponential_loss(f, torch.tensor([1.0, -1.0, 1.0], dtype=DT), reduction="none"), [1.0, 2.0, 0.5])
    # beyond the cap the tangent: e^m (1 + z - m); at z = m + 1 that is 2 e^m
    z = torch.tensor([4.0], dtype=DT)
    close(F.exponential_loss(-z, torch.ones(1, dtype=DT), max_exponent=3.0), 2 * math.exp(3.0))


def test_golden_iou_aware() -> None:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    target = torch.tensor([[2.0, 0.0, 6.0, 2.0]])  # IoU 4 / 12
    close(F.iou_aware_loss(torch.zeros(1), boxes, target), LN2)  # logit 0: ln 2 whatever the IoU
    # sigmoid(ln 1/2) = 1/3 = IoU: the entropy of 1/3 = 1/3 ln 3 + 2/3 ln 3/2
    expected = math.log(3) / 3 + 2 / 3 * math.log(1.5)
    close(F.iou_aware_loss(torch.log(torch.tensor([0.5])), boxes, target), expected)
    close(F.iou_aware_score(torch.tensor([0.64]), torch.tensor([0.25])), [0.4])
    close(F.iou_aware_score(torch.tensor([0.64]), torch.tensor([0.25]), alpha=0.0), [0.64])
    close(F.iou_aware_score(torch.tensor([0.64]), torch.tensor([0.25]), alpha=1.0), [0.25])


# ---------------------------------------------------------------------------- independent float64 references


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 2.0), (0.5, 0.5), (0.25, 0.0), (0.75, 1.5), (None, 3.0)])
def test_sigmoid_focal_matches_reference(alpha: float | None, gamma: float) -> None:
    x, t = logits(12, 3), soft_targets(12, 3)
    out = F.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
    ref = [[R.ref_sigmoid_focal(a, b, alpha, gamma) for a, b in zip(r, s)] for r, s in zip(x.tolist(), t.tolist())]
    close(out, ref)


@pytest.mark.parametrize("pos_weight", [None, 2.5])
def test_bce_matches_reference_and_torch(pos_weight: float | None) -> None:
    x, t = logits(10, 4), soft_targets(10, 4)
    out = F.binary_cross_entropy_loss(x, t, pos_weight=pos_weight, reduction="none")
    pw = 1.0 if pos_weight is None else pos_weight
    close(out, [[R.ref_bce(a, b, pw) for a, b in zip(r, s)] for r, s in zip(x.tolist(), t.tolist())])
    torch_pw = None if pos_weight is None else torch.full((4,), pos_weight, dtype=DT)
    close(out, tnf.binary_cross_entropy_with_logits(x, t, pos_weight=torch_pw, reduction="none"))
    # a per-class pos_weight tensor
    pw_t = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=DT)
    out = F.binary_cross_entropy_loss(x, t, pos_weight=pw_t, reduction="none")
    close(out, tnf.binary_cross_entropy_with_logits(x, t, pos_weight=pw_t, reduction="none"))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("class_weight", [None, [0.5, 1.0, 2.0, 1.5, 0.25]])
def test_cross_entropy_matches_reference_and_torch(smoothing: float, class_weight: list[float] | None) -> None:
    x, y = logits(9, 5), labels(9, 5)
    out = F.cross_entropy_loss(x, y, class_weight=class_weight, label_smoothing=smoothing, reduction="none")
    close(out, [R.ref_cross_entropy(r, int(c), class_weight, smoothing) for r, c in zip(x.tolist(), y.tolist())])
    w = None if class_weight is None else torch.tensor(class_weight, dtype=DT)
    y_ignored = y.clone()
    y_ignored[::3] = 7
    out = F.cross_entropy_loss(
        x, y_ignored, class_weight=class_weight, label_smoothing=smoothing, ignore_index=7, reduction="none"
    )
    expected = tnf.cross_entropy(x, y_ignored, weight=w, ignore_index=7, label_smoothing=smoothing, reduction="none")
    close(out, expected)
    assert (out[::3] == 0).all()
    # probability targets, against the reference and torch
    q = torch.softmax(logits(9, 5, seed=5), -1)
    out = F.cross_entropy_loss(x, q, class_weight=class_weight, label_smoothing=smoothing, reduction="none")
    close(out, [R.ref_cross_entropy(r, s, class_weight, smoothing) for r, s in zip(x.tolist(), q.tolist())])
    close(out, tnf.cross_entropy(x, q, weight=w, label_smoothing=smoothing, reduction="none"))


@pytest.mark.parametrize("alpha, gamma", [(None, 2.0), ([0.1, 0.2, 0.3, 0.9, 1.0], 2.0), (None, 0.5), (None, 0.0)])
def test_softmax_focal_matches_reference(alpha: list[float] | None, gamma: float) -> None:
    x, y = logits(9, 5), labels(9, 5)
    out = F.softmax_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="none")
    close(out, [R.ref_softmax_focal(r, int(c), alpha, gamma) for r, c in zip(x.tolist(), y.tolist())])
    q = torch.softmax(logits(9, 5, seed=5), -1)
    out = F.softmax_focal_loss(x, q, alpha=alpha, gamma=gamma, reduction="none")
    close(out, [R.ref_softmax_focal(r, s, alpha, gamma) for r, s in zip(x.tolist(), q.tolist())])


@pytest.mark.parametrize("beta", [2.0, 0.5, 1.0, 0.0])
def test_quality_focal_matches_reference(beta: float) -> None:
    x, t = logits(10, 4), soft_targets(10, 4)
    out = F.quality_focal_loss(x, t, beta=beta, reduction="none")
    close(out, [[R.ref_quality_focal(a, b, beta) for a, b in zip(r, s)] for r, s in zip(x.tolist(), t.tolist())])


@pytest.mark.parametrize("alpha, gamma", [(0.75, 2.0), (0.25, 1.0), (1.0, 0.5), (0.5, 0.0)])
def test_varifocal_matches_reference(alpha: float, gamma: float) -> None:
    x, t = logits(10, 4), soft_targets(10, 4)
    out = F.varifocal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
    ref = [[R.ref_varifocal(a, b, alpha, gamma) for a, b in zip(r, s)] for r, s in zip(x.tolist(), t.tolist())]
    close(out, ref)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 10.0, 0.5])
def test_kl_distill_matches_reference(temperature: float) -> None:
    s, t = logits(7, 6), logits(7, 6, seed=9)
    out = F.kl_div_distill_loss(s, t, temperature=temperature, reduction="none")
    close(out, [R.ref_kl_distill(a, b, temperature) for a, b in zip(s.tolist(), t.tolist())])
    # torch's kl_div (pointwise q (ln q - ln p)) summed over classes, times T^2
    expected = tnf.kl_div(
        tnf.log_softmax(s / temperature, -1), tnf.log_softmax(t / temperature, -1), log_target=True, reduction="none"
    ).sum(-1) * temperature**2
    close(out, expected)


def test_margin_losses_match_reference() -> None:
    f = logits(20, scale=2.0)
    y = labels(20, 2).to(DT) * 2 - 1
    close(F.hinge_loss(f, y, reduction="none"), [R.ref_hinge(a, b) for a, b in zip(f.tolist(), y.tolist())])
    ref = [R.ref_hinge(a, b, 0.3) for a, b in zip(f.tolist(), y.tolist())]
    close(F.hinge_loss(f, y, margin=0.3, reduction="none"), ref)
    close(F.exponential_loss(f, y, reduction="none"), [R.ref_exponential(a, b) for a, b in zip(f.tolist(), y.tolist())])
    # {0, 1} labels are the same as {-1, +1}
    close(F.hinge_loss(f, (y > 0).long(), reduction="none"), F.hinge_loss(f, y, reduction="none"))
    close(F.exponential_loss(f, (y > 0).to(DT), reduction="none"), F.exponential_loss(f, y, reduction="none"))


@pytest.mark.parametrize("bins", [10, 3, 30])
def test_ghm_c_matches_reference(bins: int) -> None:
    x, t = logits(12, 5), soft_targets(12, 5)
    out = F.ghm_c_loss(x, t, bins=bins, reduction="none")
    ref, _ = R.ref_ghm_c(x.flatten().tolist(), t.flatten().tolist(), bins)
    close(out.flatten(), ref)
    w = (torch.rand(12, 5, generator=torch.Generator().manual_seed(4), dtype=DT) > 0.3).to(DT)
    out = F.ghm_c_loss(x, t, bins=bins, weight=w, reduction="none")
    ref, _ = R.ref_ghm_c(x.flatten().tolist(), t.flatten().tolist(), bins, w.flatten().tolist())
    close(out.flatten(), [a * b for a, b in zip(ref, w.flatten().tolist())])


def test_ghm_c_momentum_matches_reference_over_steps() -> None:
    running = torch.zeros(10, dtype=DT)
    ref_running: list[float] = [0.0] * 10
    for step in range(3):
        x, t = logits(8, 5, seed=step), soft_targets(8, 5, seed=10 + step)
        out = F.ghm_c_loss(x, t, momentum=0.75, running_count=running, reduction="none")
        ref, ref_running = R.ref_ghm_c(
            x.flatten().tolist(), t.flatten().tolist(), 10, momentum=0.75, running=ref_running
        )
        close(out.flatten(), ref)
        close(running, ref_running)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou", "eiou", "siou"])
def test_iou_aware_matches_reference(kind: str) -> None:
    from detloss.testing import sample_inputs

    x, pred_boxes, target_boxes = sample_inputs("iou_aware", 10, dtype=DT, requires_grad=False, seed=4)
    out = F.iou_aware_loss(x, pred_boxes, target_boxes, kind=kind, reduction="none")  # type: ignore[arg-type]
    sims = [R.ref_similarity(tuple(p), tuple(t), kind) for p, t in zip(pred_boxes.tolist(), target_boxes.tolist())]
    close(out, [R.ref_iou_aware(a, s) for a, s in zip(x.tolist(), sims)])
    iou = aligned_iou(pred_boxes, target_boxes, kind).clamp(0, 1)  # type: ignore[arg-type]
    close(out, tnf.binary_cross_entropy_with_logits(x, iou, reduction="none"))


# ---------------------------------------------------------------------------- gradients


GRADCHECK_CASES: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
    ("focal_gamma_half_soft", lambda x: F.sigmoid_focal_loss(x, soft_targets(4, 3), gamma=0.5, reduction="sum")),
    ("focal_alpha_none_labels", lambda x: F.sigmoid_focal_loss(x, torch.tensor([0, 3, 1, 2]), alpha=None)),
    ("bce_pos_weight", lambda x: F.binary_cross_entropy_loss(x, soft_targets(4, 3), pos_weight=2.0)),
    (
        "ce_all_options",
        lambda x: F.cross_entropy_loss(
            x, torch.tensor([0, 2, -1, 1]), class_weight=[0.5, 2.0, 1.0], ignore_index=-1, label_smoothing=0.1
        ),
    ),
    ("ce_probabilities", lambda x: F.cross_entropy_loss(x, torch.softmax(logits(4, 3, seed=8), -1))),
    (
        "softmax_focal_alpha",
        lambda x: F.softmax_focal_loss(x, torch.tensor([0, 2, 2, 1]), alpha=[0.2, 0.5, 0.9], gamma=1.5),
    ),
    ("softmax_focal_gamma_half", lambda x: F.softmax_focal_loss(x, torch.tensor([0, 2, 2, 1]), gamma=0.5)),
    ("qfl_beta_half", lambda x: F.quality_focal_loss(x, soft_targets(4, 3), beta=0.5)),
    ("vfl_gamma_half", lambda x: F.varifocal_loss(x, soft_targets(4, 3), gamma=0.5)),
    ("kl_t3", lambda x: F.kl_div_distill_loss(x, logits(4, 3, seed=8), temperature=3.0)),
    ("exponential_both_sides_of_cap", lambda x: F.exponential_loss(x * 20, torch.ones(4, 3), max_exponent=5.0)),
    ("ghm_bins_5", lambda x: F.ghm_c_loss(x, soft_targets(4, 3), bins=5)),
]


@pytest.mark.parametrize("name, fn", GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
def test_gradcheck_with_options(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    x = logits(4, 3, seed=6).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_iou_aware_not_detached_into_boxes() -> None:
    from detloss.testing import sample_inputs

    x, boxes, target = sample_inputs("iou_aware", 4, dtype=DT, seed=5)

    def fn(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return F.iou_aware_loss(x, boxes, target, kind="diou", detach_target=False)

    assert torch.autograd.gradcheck(fn, (x, boxes), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_iou_aware_detach_gives_boxes_a_zero_gradient() -> None:
    from detloss.testing import sample_inputs

    x, boxes, target = sample_inputs("iou_aware", 6, dtype=DT, seed=5)
    F.iou_aware_loss(x, boxes, target).backward()
    assert boxes.grad is not None and torch.count_nonzero(boxes.grad) == 0
    detached_grad = x.grad.clone()  # type: ignore[union-attr]
    x.grad, boxes.grad = None, None
    F.iou_aware_loss(x, boxes, target, detach_target=False).backward()
    assert boxes.grad is not None and torch.count_nonzero(boxes.grad) > 0
    close(x.grad, detached_grad)  # type: ignore[arg-type]
    # the boxes' gradient is that of BCE wrt its target, -x, through the IoU
    boxes2 = boxes.detach().clone().requires_grad_(True)
    iou = aligned_iou(boxes2, target)
    (-(x.detach() * iou)).mean().backward()
    close(boxes.grad, boxes2.grad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- identities


def test_focal_gamma0_alpha_none_is_bce_values_and_gradients() -> None:
    x, t = logits(10, 4), soft_targets(10, 4)
    v1, g1 = grad_of(lambda z: F.sigmoid_focal_loss(z, t, alpha=None, gamma=0.0, reduction="none"), x)
    v2, g2 = grad_of(lambda z: F.binary_cross_entropy_loss(z, t, reduction="none"), x)
    close(v1, v2)
    close(g1, g2)
    close(g2, torch.sigmoid(x) - t)  # the BCE gradient, analytically


def test_qfl_beta0_is_bce_on_soft_targets() -> None:
    x, t = logits(10, 4), soft_targets(10, 4)
    v1, g1 = grad_of(lambda z: F.quality_focal_loss(z, t, beta=0.0, reduction="none"), x)
    v2, g2 = grad_of(lambda z: F.binary_cross_entropy_loss(z, t, reduction="none"), x)
    close(v1, v2)
    close(g1, g2)


def test_qfl_on_hard_targets_is_focal_without_alpha() -> None:
    x, t = logits(10, 4), (soft_targets(10, 4) > 0.5).to(DT)
    for gamma in (2.0, 0.5):
        close(F.quality_focal_loss(x, t, beta=gamma, reduction="none"),
              F.sigmoid_focal_loss(x, t, alpha=None, gamma=gamma, reduction="none"))


def test_varifocal_on_hard_targets_against_its_formula() -> None:
    x = logits(10, 4)
    t = (soft_targets(10, 4) > 0.5).to(DT)
    p = torch.sigmoid(x)
    expected = torch.where(t > 0, -torch.log(p), -0.75 * p**2 * torch.log(1 - p))
    close(F.varifocal_loss(x, t, reduction="none"), expected)


def test_kl_distill_zero_when_equal_and_nonnegative() -> None:
    s = logits(16, 7)
    for temperature in (1.0, 4.0):
        assert (F.kl_div_distill_loss(s, s.clone(), temperature=temperature, reduction="none") == 0).all()
        out = F.kl_div_distill_loss(s, logits(16, 7, seed=3), temperature=temperature, reduction="none")
        assert (out >= 0).all() and (out > 0).any()


def test_kl_distill_teacher_is_detached() -> None:
    s, t = logits(4, 3).requires_grad_(True), logits(4, 3, seed=5).requires_grad_(True)
    F.kl_div_distill_loss(s, t, temperature=2.0).backward()
    assert t.grad is None and s.grad is not None
    # gradient of T^2 KL wrt the student is T (p - q) per row, / 4 rows for the mean
    p, q = torch.softmax(s.detach() / 2, -1), torch.softmax(t.detach() / 2, -1)
    close(s.grad, 2 * (p - q) / 4)


def test_softmax_focal_gamma0_is_cross_entropy() -> None:
    x, y = logits(10, 5), labels(10, 5)
    v1, g1 = grad_of(lambda z: F.softmax_focal_loss(z, y, gamma=0.0, reduction="none"), x)
    v2, g2 = grad_of(lambda z: F.cross_entropy_loss(z, y, reduction="none"), x)
    close(v1, v2)
    close(g1, g2)
    q = torch.softmax(logits(10, 5, seed=4), -1)
    close(F.softmax_focal_loss(x, q, gamma=0.0), F.cross_entropy_loss(x, q))


@pytest.mark.parametrize("alpha", [None, 0.25, 0.9])
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
def test_focal_at_most_bce_elementwise(alpha: float | None, gamma: float) -> None:
    x, t = logits(40, 5, scale=5.0), soft_targets(40, 5)
    focal = F.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
    bce = F.binary_cross_entropy_loss(x, t, reduction="none")
    assert (focal <= bce).all()
    assert (focal < bce).any()


def test_integer_labels_equal_one_hot_for_the_sigmoid_family() -> None:
    x = logits(6, 4)
    y = torch.tensor([0, 3, 4, 1, 4, 2])  # 4 = C: background, an all-zero row
    one_hot = torch.zeros(6, 4, dtype=DT)
    for i, c in enumerate(y.tolist()):
        if c < 4:
            one_hot[i, c] = 1
    close(F.sigmoid_focal_loss(x, y, reduction="none"), F.sigmoid_focal_loss(x, one_hot, reduction="none"))
    expected = F.binary_cross_entropy_loss(x, one_hot, reduction="none")
    close(F.binary_cross_entropy_loss(x, y, reduction="none"), expected)


def test_cross_entropy_labels_equal_one_hot_probabilities() -> None:
    x, y = logits(8, 5), labels(8, 5)
    one_hot = tnf.one_hot(y, 5)
    for kw in ({}, {"class_weight": [1.0, 2.0, 3.0, 0.5, 1.0], "label_smoothing": 0.2}):
        expected = F.cross_entropy_loss(x, one_hot, reduction="none", **kw)  # type: ignore[arg-type]
        close(F.cross_entropy_loss(x, y, reduction="none", **kw), expected)  # type: ignore[arg-type]
    close(F.softmax_focal_loss(x, y, reduction="none"), F.softmax_focal_loss(x, one_hot.to(DT), reduction="none"))


def test_cross_entropy_higher_dimensional_logits() -> None:
    x = logits(2, 3, 5)
    y = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(0))
    out = F.cross_entropy_loss(x, y, reduction="none")
    assert out.shape == (2, 3)
    close(out, tnf.cross_entropy(x.permute(0, 2, 1), y, reduction="none"))


def test_hinge_gradient() -> None:
    f = torch.tensor([2.0, 0.5, -1.0, 0.2], dtype=DT)
    y = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=DT)
    _, g = grad_of(lambda z: F.hinge_loss(z, y, reduction="none"), f)
    close(g, [0.0, -1.0, -1.0, 1.0])  # -y where y f < 1


# ---------------------------------------------------------------------------- stability at large logits


def _binary(fn: Callable[..., torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def call(x: torch.Tensor) -> torch.Tensor:
        t = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5], dtype=x.dtype).repeat(x.shape[0] // 6)
        return fn(x, t, reduction="none")

    return call


STABILITY_CASES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bce": _binary(F.binary_cross_entropy_loss),
    "focal": _binary(F.sigmoid_focal_loss),
    "focal_gamma_half": _binary(lambda x, t, **kw: F.sigmoid_focal_loss(x, t, gamma=0.5, **kw)),
    "qfl": _binary(F.quality_focal_loss),
    "qfl_beta_half": _binary(lambda x, t, **kw: F.quality_focal_loss(x, t, beta=0.5, **kw)),
    "varifocal": _binary(F.varifocal_loss),
    "varifocal_gamma_half": _binary(lambda x, t, **kw: F.varifocal_loss(x, t, gamma=0.5, **kw)),
    "ghm_c": _binary(F.ghm_c_loss),
    "hinge": _binary(F.hinge_loss),
    # the documented float16 setting: e^10 keeps a float16 gradient in range (the default 50 does not)
    "exponential": _binary(
        lambda x, t, **kw: F.exponential_loss(x, t, max_exponent=10.0 if x.dtype == torch.float16 else 50.0, **kw)
    ),
    "cross_entropy": lambda x: F.cross_entropy_loss(x.view(-1, 3), torch.tensor([0, 2]), reduction="none"),
    "ce_smoothing": lambda x: F.cross_entropy_loss(x.view(-1, 3), torch.tensor([0, 2]), label_smoothing=0.1),
    "softmax_focal": lambda x: F.softmax_focal_loss(x.view(-1, 3), torch.tensor([0, 2]), reduction="none"),
    "softmax_focal_gamma_half": lambda x: F.softmax_focal_loss(x.view(-1, 3), torch.tensor([0, 1]), gamma=0.5),
    "kl_distill": lambda x: F.kl_div_distill_loss(x.view(-1, 3), -x.view(-1, 3).flip(-1), reduction="none"),
    "kl_distill_self": lambda x: F.kl_div_distill_loss(x.view(-1, 3), x.view(-1, 3), reduction="none"),
    "iou_aware": lambda x: F.iou_aware_loss(
        x, torch.tensor([[0.0, 0.0, 4.0, 2.0]]).repeat(6, 1), torch.tensor([[2.0, 0.0, 6.0, 2.0]]).repeat(6, 1)
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [100.0, 1e4])
@pytest.mark.parametrize("name", sorted(STABILITY_CASES))
def test_finite_value_and_gradient_at_large_logits(name: str, size: float, dtype: torch.dtype) -> None:
    x = (torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0]) * size).to(dtype).requires_grad_(True)
    out = STABILITY_CASES[name](x)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all(), out
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g.float()).all(), g


def test_exact_limits_at_large_logits() -> None:
    x = torch.tensor([-1e4, 1e4, 1e4, -1e4, 100.0, -100.0])
    t = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    v, g = grad_of(lambda z: F.binary_cross_entropy_loss(z, t, reduction="none"), x)
    close(v, [1e4, 1e4, 0.0, 0.0, 0.0, 100.0])
    close(g, [-1.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    v, g = grad_of(lambda z: F.sigmoid_focal_loss(z, t, reduction="none"), x)
    close(v, [0.25e4, 0.75e4, 0.0, 0.0, 0.0, 25.0])  # alpha_t * 1 * |x| where p_t -> 0
    close(g, [-0.25, 0.75, 0.0, 0.0, 0.0, -0.25])
    v, _ = grad_of(lambda z: F.varifocal_loss(z, t, reduction="none"), x)
    close(v, [1e4, 0.75e4, 0.0, 0.0, 0.0, 100.0])
    v, _ = grad_of(lambda z: F.quality_focal_loss(z, t, reduction="none"), x)
    close(v, [1e4, 1e4, 0.0, 0.0, 0.0, 100.0])
    ce_x = torch.tensor([[1e4, -1e4, 0.0]])
    v, g = grad_of(lambda z: F.cross_entropy_loss(z, torch.tensor([1]), reduction="none"), ce_x)
    close(v, [2e4])
    close(g, [[1.0, -1.0, 0.0]])
    v, _ = grad_of(lambda z: F.softmax_focal_loss(z, torch.tensor([1]), reduction="none"), ce_x)
    close(v, [2e4])
    v, g = grad_of(lambda z: F.kl_div_distill_loss(z, torch.tensor([[-1e4, 1e4]]), reduction="none"), ce_x[:, :2])
    close(v, [2e4])
    close(g, [[1.0, -1.0]])  # p - q
    v, g = grad_of(lambda z: F.exponential_loss(z, torch.ones(1), reduction="none"), torch.tensor([-1e4]))
    close(v, [math.exp(50.0) * (1 + 1e4 - 50)])
    close(g, [-math.exp(50.0)])


def test_exponent_below_one_gives_finite_gradient_where_pt_is_one() -> None:
    # (1 - p_t)^0.5 has an infinite derivative at p_t = 1; the loss there is 0 with a finite gradient
    # (varifocal's alpha p^gamma likewise at p = 0, i.e. a negative with a very negative logit)
    x = torch.tensor([200.0, -200.0, 1e4], dtype=DT)
    t = torch.tensor([1.0, 0.0, 1.0], dtype=DT)
    for fn in (
        lambda z: F.sigmoid_focal_loss(z, t, gamma=0.5, reduction="none"),
        lambda z: F.quality_focal_loss(z, t, beta=0.5, reduction="none"),
        lambda z: F.varifocal_loss(-z.abs(), torch.zeros_like(z), gamma=0.5, reduction="none"),
    ):
        v, g = grad_of(fn, x)
        assert torch.isfinite(g).all() and (v.abs() < 1e-80).all(), (v, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exponent_below_one_does_not_move_the_value(dtype: torch.dtype) -> None:
    """The floor that keeps the gradient of base^0.1 finite must not move the value: QFL at
    y = p is |y - p|^beta BCE = 0 exactly (the floor 1.2e-38 to the power 0.1 is 1.6e-4)."""
    x = torch.zeros(1, dtype=dtype, requires_grad=True)
    value = F.quality_focal_loss(x, torch.tensor([0.5], dtype=dtype), beta=0.1)
    assert value.item() == 0.0
    (g,) = torch.autograd.grad(value, x)
    assert torch.isfinite(g).all()
    # away from the floor the value is the formula: |0.75 - 0.5|^0.1 ln 2 at p = 1/2, y = 0.75
    value = F.quality_focal_loss(torch.zeros(1, dtype=dtype), torch.tensor([0.75], dtype=dtype), beta=0.1)
    assert value.item() == pytest.approx(0.25**0.1 * LN2, rel=1e-6, abs=0)


# ---------------------------------------------------------------------------- empty input


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: F.cross_entropy_loss(x, torch.zeros(0, dtype=torch.long)),
        lambda x: F.softmax_focal_loss(x, torch.zeros(0, dtype=torch.long), alpha=[0.5] * 5),
        lambda x: F.sigmoid_focal_loss(x, torch.zeros(0, dtype=torch.long)),
        lambda x: F.binary_cross_entropy_loss(x, torch.zeros(0, dtype=torch.long), reduction="sum"),
        lambda x: F.ghm_c_loss(x, torch.zeros(0, 5), momentum=0.5, running_count=torch.zeros(10)),
    ],
)
def test_empty_input_is_zero_with_gradient(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    x = torch.zeros(0, 5, requires_grad=True)
    out = fn(x)
    assert out.shape == () and out.item() == 0.0
    out.backward()
    assert x.grad is not None and x.grad.shape == (0, 5)


# ---------------------------------------------------------------------------- errors


X, T = torch.zeros(4, 5), torch.zeros(4, 5)
Y = torch.tensor([0, 1, 2, 3])

ERROR_CASES: list[tuple[str, Callable[[], object], str]] = [
    ("focal alpha > 1", lambda: F.sigmoid_focal_loss(X, T, alpha=1.5), "sigmoid_focal_loss.*`alpha`"),
    ("focal alpha < 0", lambda: F.sigmoid_focal_loss(X, T, alpha=-0.1), "`alpha`"),
    ("focal gamma < 0", lambda: F.sigmoid_focal_loss(X, T, gamma=-1.0), "sigmoid_focal_loss.*`gamma`"),
    ("focal shape", lambda: F.sigmoid_focal_loss(X, torch.zeros(4, 4)), "sigmoid_focal_loss.*`target`"),
    ("focal label", lambda: F.sigmoid_focal_loss(X, torch.tensor([0, 6, 1, 2])), "`target`.*label 6"),
    ("focal int logits", lambda: F.sigmoid_focal_loss(X.long(), T), "sigmoid_focal_loss.*`pred`.*floating"),
    ("bce pos_weight", lambda: F.binary_cross_entropy_loss(X, T, pos_weight=-1.0), "`pos_weight`"),
    ("bce pos_weight shape", lambda: F.binary_cross_entropy_loss(X, T, pos_weight=torch.ones(3)), "`pos_weight`"),
    ("qfl beta < 0", lambda: F.quality_focal_loss(X, T, beta=-0.5), "quality_focal_loss.*`beta`"),
    ("qfl labels", lambda: F.quality_focal_loss(X, Y), "quality_focal_loss.*`target`"),
    ("vfl alpha", lambda: F.varifocal_loss(X, T, alpha=2.0), "varifocal_loss.*`alpha`"),
    ("vfl gamma", lambda: F.varifocal_loss(X, T, gamma=-2.0), "varifocal_loss.*`gamma`"),
    ("ce label", lambda: F.cross_entropy_loss(X, torch.tensor([0, 5, 1, 2])), "cross_entropy_loss.*`target`.*label 5"),
    ("ce negative label", lambda: F.cross_entropy_loss(X, torch.tensor([0, -1, 1, 2])), "`target`.*label -1"),
    ("ce smoothing", lambda: F.cross_entropy_loss(X, Y, label_smoothing=1.5), "`label_smoothing`"),
    ("ce class_weight len", lambda: F.cross_entropy_loss(X, Y, class_weight=[1.0, 2.0]), "`class_weight`"),
    ("ce class_weight < 0", lambda: F.cross_entropy_loss(X, Y, class_weight=[1.0, -2.0, 1, 1, 1]), "`class_weight`"),
    ("ce target shape", lambda: F.cross_entropy_loss(X, torch.zeros(4, 3)), "cross_entropy_loss.*`target`"),
    ("ce float labels", lambda: F.cross_entropy_loss(X, Y.float()), "cross_entropy_loss.*`target`"),
    ("ce int logits", lambda: F.cross_entropy_loss(Y, Y), "cross_entropy_loss.*`pred`"),
    ("sfl alpha", lambda: F.softmax_focal_loss(X, Y, alpha=[0.5, 2.0, 0.5, 0.5, 0.5]), "softmax_focal_loss.*`alpha`"),
    ("sfl alpha len", lambda: F.softmax_focal_loss(X, Y, alpha=[0.5]), "`alpha`.*5 entries"),
    ("sfl gamma", lambda: F.softmax_focal_loss(X, Y, gamma=-1.0), "`gamma`"),
    ("sfl label", lambda: F.softmax_focal_loss(X, torch.tensor([0, 9, 1, 2])), "`target`"),
    ("kl temperature 0", lambda: F.kl_div_distill_loss(X, T, temperature=0.0), "kl_div_distill_loss.*`temperature`"),
    ("kl temperature < 0", lambda: F.kl_div_distill_loss(X, T, temperature=-1.0), "`temperature`"),
    ("kl shape", lambda: F.kl_div_distill_loss(X, torch.zeros(4, 4)), "kl_div_distill_loss.*`target`"),
    ("hinge shape", lambda: F.hinge_loss(X, torch.zeros(4)), "hinge_loss.*`target`"),
    ("hinge margin", lambda: F.hinge_loss(X, T, margin=-1.0), "`margin`"),
    ("exp int", lambda: F.exponential_loss(Y, Y), "exponential_loss.*`pred`"),
    ("ghm bins", lambda: F.ghm_c_loss(X, T, bins=0), "ghm_c_loss.*`bins`"),
    ("ghm momentum", lambda: F.ghm_c_loss(X, T, momentum=1.0), "`momentum`"),
    ("ghm state missing", lambda: F.ghm_c_loss(X, T, momentum=0.5), "`running_count`"),
    ("ghm state shape", lambda: F.ghm_c_loss(X, T, running_count=torch.zeros(3)), "`running_count`"),
    ("ghm weight shape", lambda: F.ghm_c_loss(X, T, weight=torch.ones(3)), "`weight`"),
    ("iou_aware kind", lambda: F.iou_aware_loss(X[:, 0], X[:, :4], X[:, :4], kind="xiou"), "iou_aware_loss.*`kind`"),  # type: ignore[arg-type]
    ("iou_aware shape", lambda: F.iou_aware_loss(X, X[:, :4], X[:, :4]), "iou_aware_loss.*`pred`"),
    ("iou_aware boxes", lambda: F.iou_aware_loss(X[:, 0], X, X), "`pred_boxes`"),
    ("score alpha", lambda: F.iou_aware_score(X, T, alpha=1.5), "iou_aware_score.*`alpha`"),
    ("dfl target shape", lambda: F.distribution_focal_loss(torch.zeros(4, 4, 17), torch.zeros(4)), "`target`"),
    ("dfl one bin", lambda: F.distribution_focal_loss(torch.zeros(4, 4, 1), torch.zeros(4, 4)), "`pred`"),
    ("dfl int", lambda: F.distribution_focal_loss(torch.zeros(4, 17), torch.zeros(4, dtype=torch.long)), "`target`"),
]


@pytest.mark.parametrize("name, call, match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_input_raises_detloss_error(name: str, call: Callable[[], object], match: str) -> None:
    with pytest.raises(DetLossError, match=match):
        call()


# ---------------------------------------------------------------------------- modules


def test_modules_and_names() -> None:
    assert detloss.FocalLoss is detloss.SigmoidFocalLoss
    loss = detloss.build_loss("sigmoid_focal", alpha=None, reduction="sum")
    x, t = logits(4, 3), soft_targets(4, 3)
    close(loss(x, t), F.sigmoid_focal_loss(x, t, alpha=None, reduction="sum"))
    assert "alpha=None" in repr(loss)
    assert isinstance(detloss.build_loss({"type": "VarifocalLoss"}), detloss.VarifocalLoss)


def test_ghm_module_keeps_state_in_training_only() -> None:
    module = detloss.GHMCLoss(momentum=0.75)
    state: torch.Tensor = module.running_count  # type: ignore[assignment]  # the buffer, updated in place
    assert "running_count" not in repr(module)
    assert state.shape == (10,) and "running_count" in module.state_dict()
    x, t = logits(8, 5).float(), soft_targets(8, 5).float()
    running = torch.zeros(10)
    out = module(x, t)
    close(out, F.ghm_c_loss(x, t, momentum=0.75, running_count=running))
    close(state, running)
    assert state.sum() > 0
    module.eval()
    before = state.clone()
    out = module(logits(8, 5, seed=3).float(), t)
    close(state, before)  # eval: the batch is counted, the state is not changed
    close(out, F.ghm_c_loss(logits(8, 5, seed=3).float(), t, momentum=0.75, running_count=before.clone()))
    with pytest.raises(DetLossError, match="bins"):
        detloss.GHMCLoss(bins=0)

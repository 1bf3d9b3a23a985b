"""Seeded adversarial cases for every registered loss, every dtype mode, every family.

Profiles (environment variable ``DETLOSS_FUZZ``): ``quick`` (default, what ``make test``
runs: every family of every loss once per dtype mode, about 2,000 cases) or ``long`` (the
same plus 400 random cases per loss and dtype mode, about 60,000), or a number of extra
random cases per loss and dtype mode. ``detloss fuzz --cases N`` runs the same checks.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from detloss import available_losses
from detloss.cli import main
from detloss.experiments.fuzz import (
    DISCONTINUOUS,
    DTYPE_MODES,
    LAYOUTS,
    TOLERANCES,
    Case,
    check_case,
    evaluate,
    families_for,
    make_case,
)
from detloss.registry import LOSSES as REGISTRY
from detloss.registry import LossSpec, get_spec
from detloss.testing import sample_inputs

LOSSES = available_losses()
PROFILE = os.environ.get("DETLOSS_FUZZ", "quick")
EXTRA = {"quick": 0, "long": 400}[PROFILE] if not PROFILE.isdigit() else int(PROFILE)
SEED = 2026
REDUCTIONS = ("none", "mean", "sum")


def report(failures: list[str]) -> str:
    return f"{len(failures)} failing cases:\n" + "\n".join(failures[:25])


@pytest.mark.parametrize("dtype", DTYPE_MODES)
@pytest.mark.parametrize("key", LOSSES)
def test_every_family(key: str, dtype: str) -> None:
    """Each family of the input kind once, rotating layouts and reductions; then ``EXTRA``
    random cases. A failure names the case; ``make_case(key, dtype, seed, index)`` replays it."""
    failures = []
    for j, family in enumerate(families_for(key)):
        case = make_case(key, dtype, SEED, j, family=family, layout=LAYOUTS[j % 3], reduction=REDUCTIONS[(j // 3) % 3])
        outcome = check_case(case)
        if not outcome.ok:
            failures.append(f"{case.describe()} index {j}: [{outcome.failure}] {outcome.detail}")
    for i in range(EXTRA):
        case = make_case(key, dtype, SEED + 1, i)
        outcome = check_case(case)
        if not outcome.ok:
            failures.append(f"{case.describe()} seed {SEED + 1} index {i}: [{outcome.failure}] {outcome.detail}")
    assert not failures, report(failures)


FAST_PATH_KINDS = ("boxes", "binary_logits", "iou_aware")


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("key", [k for k in LOSSES if get_spec(k).inputs in FAST_PATH_KINDS])
def test_every_family_on_the_other_backends(key: str, backend: str) -> None:
    """The default run above uses the fastest backend (the native kernel where it builds);
    the pure-torch reference and fused paths get every family in float32 and float16 too."""
    import detloss

    failures = []
    with detloss.use_backend(backend):
        for dtype in ("float32", "float16"):
            for j, family in enumerate(families_for(key)):
                case = make_case(key, dtype, SEED + 2, j, family=family, layout=LAYOUTS[j % 3])
                outcome = check_case(case)
                if not outcome.ok:
                    failures.append(f"{case.describe()} index {j}: [{outcome.failure}] {outcome.detail}")
    assert not failures, report(failures)


@pytest.mark.parametrize("dtype", DTYPE_MODES)
@pytest.mark.parametrize("key", LOSSES)
def test_empty_batches(key: str, dtype: str) -> None:
    """0 rows: a 0 loss (never NaN) that back-propagates, in every layout and reduction."""
    for j, (layout, reduction) in enumerate(
        (lay, red) for lay in ("contiguous", "noncontiguous") for red in REDUCTIONS
    ):
        case = make_case(key, dtype, SEED, 100 + j, layout=layout, reduction=reduction, n=0)
        outcome = check_case(case)
        assert outcome.ok, f"{case.describe()}: [{outcome.failure}] {outcome.detail}"
        out, grads = evaluate(case)
        if reduction != "none":
            assert out.shape == () and out.item() == 0.0
        assert all(g is None or g.numel() == 0 for g in grads)


@pytest.mark.parametrize("dtype", DTYPE_MODES)
@pytest.mark.parametrize("key", LOSSES)
def test_zero_weight_gives_exact_zero_on_adversarial_inputs(key: str, dtype: str) -> None:
    """``weight = 0`` everywhere: loss exactly 0 and gradient exactly 0, even where the loss
    itself is huge (logits 1e4, boxes 1e6 apart), i.e. no ``0 * inf`` anywhere."""
    for j, family in enumerate(families_for(key)):
        case = make_case(key, dtype, SEED, 200 + j, family=family, reduction="sum")
        case.weight = "zeros"
        out, grads = evaluate(case)
        assert out.item() == 0.0, case.describe()
        for g in grads:
            assert g is None or torch.count_nonzero(g) == 0, f"{case.describe()}: gradient {g}"


# ---------------------------------------------------------------- the anchors' known failures

BOX_LOSSES = [k for k in LOSSES if get_spec(k).inputs == "boxes"]


def box_case(key: str, dtype: str, pred: list[list[float]], target: list[list[float]]) -> Case:
    options = dict(getattr(get_spec(key), "call_options", None) or ())
    return Case(
        loss=key,
        dtype=dtype,
        family="hand",
        layout="contiguous",
        reduction="none",
        inputs=(torch.tensor(pred, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)),
        grad=(True, False),
        options=options,
    )


KNOWN = {
    # mmdetection's CIoU: NaN for identical boxes (alpha without eps); non-square on purpose
    "identical boxes": (
        [[0.0, 0.0, 4.0, 2.0], [10.0, 10.0, 10.5, 13.0]],
        [[0.0, 0.0, 4.0, 2.0], [10.0, 10.0, 10.5, 13.0]],
    ),
    # torchvision / detectron2 CIoU: NaN for a zero-height or zero-width prediction (atan(w/h))
    "zero-area prediction": (
        [[1.0, 1.0, 3.0, 1.0], [1.0, 1.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0]],
        [[0.0, 0.0, 4.0, 2.0]] * 3,
    ),
    # fvcore / detectron2 assert on inverted boxes
    "inverted boxes": ([[3.0, 3.0, 1.0, 1.0], [0.0, 5.0, 4.0, 1.0]], [[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0]]),
    # float16 with 300-pixel boxes: area products overflow (ultralytics, mmdet NaN or -inf)
    "300-pixel boxes": ([[10.0, 20.0, 310.0, 330.0]], [[40.0, 10.0, 350.0, 300.0]]),
}


ROTATED_LOSSES = [k for k in LOSSES if get_spec(k).inputs == "rotated_boxes"]

ROTATED_KNOWN = {
    # mmcv's diff_iou_rotated: 0.333 for identical boxes (its strict intersection tests find
    # no vertex on a shared edge); the pair also at angles differing by pi/2 (a square)
    "identical boxes": (
        [[3.0, 4.0, 5.0, 2.0, 0.3], [3.0, 4.0, 3.0, 3.0, 0.0]],
        [[3.0, 4.0, 5.0, 2.0, 0.3], [3.0, 4.0, 3.0, 3.0, math.pi / 2]],
    ),
    # lilanxiao's Rotated_IoU: 1/3 for boxes sharing an edge from outside
    "shared edge": (
        [[0.0, 0.0, 2.0, 2.0, 0.0], [0.0, 0.0, 2.0, 2.0, 0.4]],
        [[2.0, 0.0, 2.0, 2.0, 0.0], [-2 * math.sin(0.4), 2 * math.cos(0.4), 2.0, 2.0, 0.4]],
    ),
    # detectron2 before its fix: 0.58 for near-identical boxes (a hull test on rounded points)
    "near-identical boxes": ([[100.0, 200.0, 30.0, 10.0, 0.5]], [[100.000001, 200.0, 30.0, 10.0, 0.5000001]]),
    # mmcv: IoU of -1.2e7 for w = 8e-7; a zero-area and a negative-width box too
    "tiny and degenerate boxes": (
        [[0.0, 0.0, 8e-7, 8e-7, 0.3], [0.0, 0.0, 0.0, 2.0, 0.3], [0.0, 0.0, -1.0, 2.0, 0.3]],
        [[1e-7, 0.0, 8e-7, 8e-7, 0.1], [0.0, 0.0, 2.0, 2.0, 0.1], [0.0, 0.0, 2.0, 2.0, 0.1]],
    ),
    # mmcv #2335: 0 for concentric 5 x 10 at pi/6 and 10 x 5 at pi/3 (exact IoU 0.4058)
    "concentric crossed boxes": ([[0.0, 0.0, 5.0, 10.0, math.pi / 6]], [[0.0, 0.0, 10.0, 5.0, math.pi / 3]]),
    # ultralytics' probiou: NaN where a covariance is not positive definite (a zero side),
    # and under AMP; mmrotate's GWD / KLD / KFIoU: NaN for degenerate or identical boxes
    "gaussian degeneracies": (
        [[5.0, 5.0, 0.0, 0.0, 0.0], [5.0, 5.0, 1e-6, 30.0, 1.0], [5.0, 5.0, 300.0, 200.0, 0.2]],
        [[5.1, 5.0, 0.0, 0.0, 0.0], [5.0, 5.0, 1e-6, 30.0, 1.0], [40.0, 10.0, 310.0, 290.0, -0.3]],
    ),
}


KNOWN_CASES = [(k, s) for k in BOX_LOSSES for s in sorted(KNOWN)]
KNOWN_CASES += [(k, s) for k in ROTATED_LOSSES for s in sorted(ROTATED_KNOWN)]
#: (pred, target) of a scenario, from the table of the loss's input kind
KNOWN_INPUTS = {"boxes": KNOWN, "rotated_boxes": ROTATED_KNOWN}


@pytest.mark.parametrize("dtype", DTYPE_MODES)
@pytest.mark.parametrize(("key", "scenario"), KNOWN_CASES)
def test_known_failures_of_public_implementations(key: str, scenario: str, dtype: str) -> None:
    pred, target = KNOWN_INPUTS[get_spec(key).inputs][scenario]
    outcome = check_case(box_case(key, dtype, pred, target))
    assert outcome.ok, f"{scenario}: [{outcome.failure}] {outcome.detail}"


@pytest.mark.parametrize("key", LOSSES)
def test_empty_input_mean_is_zero_not_nan(key: str) -> None:
    """torchvision's sigmoid focal loss gives NaN for empty input with reduction "mean"."""
    loss = get_spec(key).function(*sample_inputs(key, 0), **dict(getattr(get_spec(key), "call_options", None) or ()))
    assert loss.item() == 0.0


def test_float32_far_from_the_origin_is_as_good_as_float32_can_be() -> None:
    """Unit boxes at x = 1e6 in cxcywh: float32's spacing there is 0.0625, so the corners
    ``cx -+ w / 2`` move by up to 0.03 and DIoU can only agree with float64 to ~1e-2; the
    tolerance allows that (kappa ~ 1e6). The same boxes at the origin agree to 1e-5."""
    far_pred, far_target = [[1e6 + 0.8, 1e6 + 0.85, 1.07, 1.53]], [[1e6 + 1.05, 1e6 + 0.6, 0.97, 1.01]]
    case = box_case("diou", "float32", far_pred, far_target)
    case.options["box_format"] = "cxcywh"
    out, _ = evaluate(case)
    reference = case.inputs[0].float().double(), case.inputs[1].float().double()
    exact = get_spec("diou").function(*reference, box_format="cxcywh")
    assert 1e-3 < abs(out.item() - exact.item()) < 0.05  # a real float32 error, not a bug
    assert check_case(case).ok
    near = box_case("diou", "float32", [[0.8, 0.85, 1.07, 1.53]], [[1.05, 0.6, 0.97, 1.01]])
    near.options["box_format"] = "cxcywh"
    assert check_case(near).ratio <= 1.0  # within atol + rtol alone


# ---------------------------------------------------------------- the checker can fail


def _reduce(loss: torch.Tensor, weight: torch.Tensor | None, reduction: str, avg_factor: object) -> torch.Tensor:
    from detloss.reduction import reduce_loss

    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor)  # type: ignore[arg-type]


def nan_for_identical(pred, target, *, weight=None, reduction="mean", avg_factor=None):  # type: ignore[no-untyped-def]
    d = (pred.float() - target.float()).abs().sum(-1)
    return _reduce(d / d, weight, reduction, avg_factor)  # 0 / 0 for identical boxes


def area_in_half(pred, target, *, weight=None, reduction="mean", avg_factor=None):  # type: ignore[no-untyped-def]
    area = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])  # no upcast: float16 overflows
    return _reduce((area / (area + 1.0)).float(), weight, reduction, avg_factor)


def matmul_under_autocast(pred, target, *, weight=None, reduction="mean", avg_factor=None):  # type: ignore[no-untyped-def]
    d = (pred.float() - target.float()).abs()
    loss = d @ torch.ones(4, dtype=d.dtype)  # autocast runs matmul in bfloat16: 3 significant digits
    return _reduce(loss.float(), weight, reduction, avg_factor)


def sqrt_of_area(pred, target, *, weight=None, reduction="mean", avg_factor=None):  # type: ignore[no-untyped-def]
    p = pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred
    area = ((p[..., 2] - p[..., 0]).clamp(min=0) * (p[..., 3] - p[..., 1]).clamp(min=0)).sqrt()  # inf slope at 0
    return _reduce(area, weight, reduction, avg_factor)


def plain_mean(pred, target, *, weight=None, reduction="mean", avg_factor=None):  # type: ignore[no-untyped-def]
    loss = (pred.float() - target.float()).abs().sum(-1)
    return loss.mean() if reduction == "mean" else _reduce(loss, weight, reduction, avg_factor)


BROKEN = {
    "broken_nan_identical": (nan_for_identical, "identical", "float32", "value"),
    "broken_half_area": (area_in_half, "fp16_overflow", "float16", "value"),
    "broken_autocast_matmul": (matmul_under_autocast, "random", "autocast_bf16", "mismatch"),
    "broken_sqrt": (sqrt_of_area, "zero_width", "float64", "gradient"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_checker_catches_broken_losses(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from detloss.nn import LossModule

    fn, family, dtype, failure = BROKEN[name]
    monkeypatch.setitem(REGISTRY, name, LossSpec(name, fn, LossModule, "boxes", "none", 2026))
    outcomes = [check_case(make_case(name, dtype, SEED, i, family=family, layout="contiguous", n=4)) for i in range(4)]
    assert any(o.failure == failure for o in outcomes), [(o.failure, o.detail) for o in outcomes]


def test_checker_catches_nan_for_empty_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    from detloss.nn import LossModule

    monkeypatch.setitem(REGISTRY, "broken_empty", LossSpec("broken_empty", plain_mean, LossModule, "boxes", "none", 1))
    outcome = check_case(make_case("broken_empty", "float32", SEED, 0, reduction="mean", n=0))
    assert outcome.failure == "value"


def test_tolerances_are_documented() -> None:
    assert set(TOLERANCES) == set(DTYPE_MODES)
    assert TOLERANCES["float32"].unit == 2.0**-24 and TOLERANCES["float64"].unit == 2.0**-53
    assert all(isinstance(reason, str) and reason for reason in DISCONTINUOUS.values())


# ---------------------------------------------------------------- detloss fuzz


def test_fuzz_command_writes_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fuzz", "--cases", "40", "--losses", "giou,l1", "--seed", "3", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert info.value.code == 0, out
    assert "40 cases, 0 failures" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["command"] == "fuzz" and results["cases"] == 40 and results["failures"] == 0
    assert results["args"] == {"cases": 40, "losses": ["giou", "l1"], "seed": 3, "jobs": 1, "backend": None}
    assert {(r["loss"], r["dtype"]) for r in results["rows"]} == {(k, d) for k in ("giou", "l1") for d in DTYPE_MODES}
    assert sum(r["cases"] for r in results["rows"]) == 40
    assert set(results["tolerances"]) == set(DTYPE_MODES)
    assert (tmp_path / "results.csv").exists() and (tmp_path / "report.md").exists()


def test_fuzz_command_exits_1_on_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from detloss.nn import LossModule

    monkeypatch.setitem(
        REGISTRY,
        "broken_nan_identical",
        LossSpec("broken_nan_identical", nan_for_identical, LossModule, "boxes", "none", 1),
    )
    with pytest.raises(SystemExit) as info:
        main(["fuzz", "--cases", "60", "--losses", "broken_nan_identical", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert info.value.code == 1
    assert "FAILED broken_nan_identical" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["failures"] > 0 and results["failed_cases"][0]["loss"] == "broken_nan_identical"
    first = results["failed_cases"][0]
    replayed = check_case(make_case(first["loss"], first["dtype"], first["seed"], first["index"]))
    assert replayed.failure == first["failure"]

"""``detloss simulate``: the DIoU paper's simulation, checked against independent computations.

- exact mode: a plain per-case Python loop whose gradients are central finite differences of
  the float64 reference formulas of ``tests/reference.py`` (CIoU with its alpha frozen);
- paper mode: a scalar transcription of the authors' published directions (the six items of
  :func:`detloss.experiments.simulation.paper_direction`'s docstring), written separately
  from the vectorised code, and one case worked out by hand;
- resume: an interrupted run, resumed, gives the numbers of an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from detloss.errors import DetLossError
from detloss.experiments.simulation import (
    CASES_PER_POINT,
    Setup,
    anchor_points,
    case_boxes,
    learning_rate,
    paper_direction,
    regress,
    simulate,
)
from tests.reference import ref_similarity

STEPS = 30  # the schedule scales with T: eta drops after step 24 and step 27


def xyxy(b: tuple[float, ...]) -> tuple[float, float, float, float]:
    x, y, w, h = b
    return (x - w / 2, y - h / 2, x + w / 2, y + h / 2)


def paper_cases(points: torch.Tensor) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """The cases of the DIoU paper, built here from its text, in the authors' loop order
    (centre, target aspect, anchor scale, anchor aspect)."""
    ratios = (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0)
    scales = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)
    cases = []
    for cx, cy in points.tolist():
        for rt in ratios:
            target = (10.0, 10.0, math.sqrt(rt), 1 / math.sqrt(rt))
            for s in scales:
                for ra in ratios:
                    cases.append(((cx, cy, math.sqrt(s * ra), math.sqrt(s / ra)), target))
    return cases


def run_loop(cases, direction, steps: int = STEPS) -> list[float]:
    """E(0..steps) of ``B <- B + eta (2 - IoU) D`` case by case; ``direction(B, G)`` -> (D, IoU)."""
    curve = [0.0] * (steps + 1)
    for anchor, target in cases:
        box = list(anchor)
        curve[0] += sum(abs(a - b) for a, b in zip(box, target))
        for t in range(1, steps + 1):
            eta = 0.1 if t <= 0.8 * steps else 0.01 if t <= 0.9 * steps else 0.001
            move, iou = direction(tuple(box), target)
            box = [b + eta * (2 - iou) * m for b, m in zip(box, move)]
            curve[t] += sum(abs(a - b) for a, b in zip(box, target))
    return curve


# ------------------------------------------------------------------------- exact gradient


def similarity_gradient(kind: str, box: tuple[float, ...], target: tuple[float, ...], eps: float = 1e-7) -> list[float]:
    """d(similarity)/d(x, y, w, h), derived by hand: the one-sided derivatives of every max/min
    (the side that is larger), the quotient rule, then x1 = x - w/2, x2 = x + w/2; CIoU's alpha
    held constant. The similarities are those of ``tests/reference.py`` (same eps)."""
    p, t = xyxy(box), xyxy(target)
    pw, ph = p[2] - p[0], p[3] - p[1]
    tw, th = t[2] - t[0], t[3] - t[1]
    # derivatives with respect to (x1, y1, x2, y2) of the prediction
    iw = min(p[2], t[2]) - max(p[0], t[0])
    ih = min(p[3], t[3]) - max(p[1], t[1])
    d_iw = [-1.0 if p[0] > t[0] else 0.0, 0.0, 1.0 if p[2] < t[2] else 0.0, 0.0] if iw > 0 else [0.0] * 4
    d_ih = [0.0, -1.0 if p[1] > t[1] else 0.0, 0.0, 1.0 if p[3] < t[3] else 0.0] if ih > 0 else [0.0] * 4
    iw, ih = max(iw, 0.0), max(ih, 0.0)
    inter = iw * ih
    d_inter = [ih * a + iw * b for a, b in zip(d_iw, d_ih)]
    union = pw * ph + tw * th - inter + eps
    d_union = [u - i for u, i in zip((-ph, -pw, ph, pw), d_inter)]
    iou = inter / union
    grad = [(di * union - inter * du) / union**2 for di, du in zip(d_inter, d_union)]
    cw = max(p[2], t[2]) - min(p[0], t[0])
    ch = max(p[3], t[3]) - min(p[1], t[1])
    d_cw = [-1.0 if p[0] < t[0] else 0.0, 0.0, 1.0 if p[2] > t[2] else 0.0, 0.0]
    d_ch = [0.0, -1.0 if p[1] < t[1] else 0.0, 0.0, 1.0 if p[3] > t[3] else 0.0]
    if kind == "giou":  # iou - (C - U) / C = iou - 1 + U / C
        c = cw * ch + eps
        d_c = [ch * a + cw * b for a, b in zip(d_cw, d_ch)]
        grad = [g + (du * c - union * dc) / c**2 for g, du, dc in zip(grad, d_union, d_c)]
    if kind in ("diou", "ciou"):  # iou - rho^2 / (cw^2 + ch^2 + eps)
        dx = (t[0] + t[2] - p[0] - p[2]) / 2
        dy = (t[1] + t[3] - p[1] - p[3]) / 2
        rho2 = dx**2 + dy**2
        d_rho2 = [-dx, -dy, -dx, -dy]
        diag = cw**2 + ch**2 + eps
        d_diag = [2 * cw * a + 2 * ch * b for a, b in zip(d_cw, d_ch)]
        grad = [g - (dr * diag - rho2 * dd) / diag**2 for g, dr, dd in zip(grad, d_rho2, d_diag)]
    if kind == "ciou":  # - alpha v, alpha constant; v = 4/pi^2 (atan q_t - atan q)^2, q = (w + eps)/(h + eps)
        q = (pw + eps) / (ph + eps)
        gap = math.atan((tw + eps) / (th + eps)) - math.atan(q)
        v = 4 / math.pi**2 * gap**2
        alpha = v / (1 - iou + v + eps)
        dv_dq = 4 / math.pi**2 * 2 * gap * (-1 / (1 + q * q))
        dv_dw, dv_dh = dv_dq / (ph + eps), dv_dq * -(pw + eps) / (ph + eps) ** 2
        d_v = [-dv_dw, -dv_dh, dv_dw, dv_dh]
        grad = [g - alpha * dv for g, dv in zip(grad, d_v)]
    return [grad[0] + grad[2], grad[1] + grad[3], (grad[2] - grad[0]) / 2, (grad[3] - grad[1]) / 2]


def exact_reference(kind: str):
    def direction(box: tuple[float, ...], target: tuple[float, ...]) -> tuple[list[float], float]:
        # the descent direction of the loss 1 - similarity is the ascent of the similarity
        return similarity_gradient(kind, box, target), ref_similarity(xyxy(box), xyxy(target), "iou")

    return direction


def test_hand_gradient_agrees_with_finite_differences() -> None:
    # the hand-derived gradient against central differences of tests/reference.py, away from kinks
    box, target = (10.3, 9.6, 1.2, 0.7), (10.0, 10.0, 1.0, 1.3)
    for kind in ("iou", "giou", "diou"):
        grad = similarity_gradient(kind, box, target)
        for i in range(4):
            up, down = list(box), list(box)
            up[i] += 1e-6
            down[i] -= 1e-6
            numeric = (
                ref_similarity(xyxy(up), xyxy(target), kind) - ref_similarity(xyxy(down), xyxy(target), kind)
            ) / 2e-6
            assert grad[i] == pytest.approx(numeric, rel=1e-6, abs=1e-9), (kind, i)


# --------------------------------------------------------------------------- paper recipe


def paper_reference(kind: str):
    """The six items of ``paper_direction``'s docstring, one case at a time, in plain Python."""

    def direction(box: tuple[float, ...], target: tuple[float, ...]) -> tuple[list[float], float]:
        x, y, w, h = box
        X, Y, W, H = target
        t, b, l, r = y - h / 2, y + h / 2, x - w / 2, x + w / 2  # noqa: E741
        T, B, L, R = Y - H / 2, Y + H / 2, X - W / 2, X + W / 2
        it, ib, il, ir = max(t, T), min(b, B), max(l, L), min(r, R)
        inter = (ib - it) * (ir - il)  # item 1: not clamped
        union = (b - t) * (r - l) + (B - T) * (R - L) - inter
        overlap = it < ib and il < ir
        iou = inter / union if overlap else 0.0  # item 6
        d_i = {
            "t": -(ir - il) if t > T else 0.0,
            "b": (ir - il) if b < B else 0.0,
            "l": -(ib - it) if l > L else 0.0,
            "r": (ib - it) if r < R else 0.0,
        }
        d_u = {"t": -(r - l) - d_i["t"], "b": (r - l) - d_i["b"], "l": -(b - t) - d_i["l"], "r": (b - t) - d_i["r"]}
        side = {k: (union * d_i[k] - inter * d_u[k]) / union**2 if overlap and union > 0 else 0.0 for k in "tblr"}
        if not t < b:
            side["t"] = side["b"]
        if not l < r:
            side["l"] = side["r"]
        if kind == "giou":  # item 3
            ct, cb, cl, cr = min(t, T), max(b, B), min(l, L), max(r, R)
            c = (cb - ct) * (cr - cl)
            d_c = {
                "t": -(cr - cl) if t < T else 0.0,
                "b": (cr - cl) if b > B else 0.0,
                "l": -(cb - ct) if l < L else 0.0,
                "r": (cb - ct) if r > R else 0.0,
            }
            for k in "tblr":
                penalty = (c * d_u[k] - union * d_c[k]) / c**2
                side[k] = (side[k] + penalty if c > 0 else side[k]) if overlap else penalty
        move = [side["l"] + side["r"], side["t"] + side["b"], side["r"] - side["l"], side["b"] - side["t"]]  # item 2
        if kind in ("diou", "ciou"):  # item 4
            cw = max(r, R) - min(l, L)
            ch = max(b, B) - min(t, T)
            c = cw**2 + ch**2
            d = (x - X) ** 2 + (y - Y) ** 2
            d_x = float(r > R) - float(l < L)
            d_y = float(b > B) - float(t < T)
            d_w = (float(r > R) + float(l < L)) / 2
            d_h = (float(b > B) + float(t < T)) / 2
            cw_w = -1.0 if (l < L and r > R) else d_w
            ch_h = -1.0 if (t < T and b > B) else d_h
            move[0] += (2 * (X - x) * c - (2 * cw * d_x + 2 * ch * d_x) * d) / c**2
            move[1] += (2 * (Y - y) * c - (2 * cw * d_y + 2 * ch * d_y) * d) / c**2
            move[2] += (2 * cw * cw_w + 2 * ch * d_w) * d / c**2
            move[3] += (2 * cw * d_h + 2 * ch * ch_h) * d / c**2
            if kind == "ciou":  # item 5
                delta = math.atan(W / H) - math.atan(w / h)
                v = 4 / math.pi**2 * delta**2
                alpha = v / (1 - iou + v + 1e-7)
                move[2] += alpha * 8 / math.pi**2 * delta * h
                move[3] -= alpha * 8 / math.pi**2 * delta * w
        return move, iou

    return direction


# ------------------------------------------------------------------------------------ tests


def test_cases_are_the_papers() -> None:
    points = anchor_points(50, seed=3)
    assert points.shape == (50, 2)
    assert float(((points - 10.0) ** 2).sum(-1).max()) <= 9.0  # inside the disc of radius 3
    anchors, targets = case_boxes(points)
    assert anchors.shape == targets.shape == (50 * CASES_PER_POINT, 4)
    assert CASES_PER_POINT == 343 and 5000 * CASES_PER_POINT == 1_715_000
    expected = paper_cases(points)
    torch.testing.assert_close(anchors, torch.tensor([a for a, _ in expected], dtype=torch.float64))
    torch.testing.assert_close(targets, torch.tensor([t for _, t in expected], dtype=torch.float64))
    torch.testing.assert_close(targets[:, 2] * targets[:, 3], torch.ones(len(targets), dtype=torch.float64))
    assert [learning_rate(t, 200) for t in (1, 160, 161, 180, 181, 200)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def _curves(out: Path) -> dict[tuple[str, str], list[float]]:
    payload = json.loads((out / "results.json").read_text())
    return {(r["loss"], r["gradient"]): r["curve"] for r in payload["runs"]}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    setup = Setup(points=1, steps=STEPS, seed=7)
    return simulate(gradients=("exact", "paper"), setup=setup, out=out, progress=False)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_exact_mode_matches_a_per_case_loop(small_run: Path, kind: str) -> None:
    cases = paper_cases(anchor_points(1, seed=7))
    expected = run_loop(cases, exact_reference(kind))
    got = _curves(small_run)[(kind, "exact")]
    assert got[-1] < got[0]
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_paper_mode_matches_the_recipe(small_run: Path, kind: str) -> None:
    cases = paper_cases(anchor_points(1, seed=7))
    expected = run_loop(cases, paper_reference(kind))
    got = _curves(small_run)[(kind, "paper")]
    assert got == pytest.approx(expected, rel=1e-9)


def test_paper_direction_of_one_case_by_hand() -> None:
    # Target (x, y, w, h) = (10, 10, 1, 1): t = 9.5, b = 10.5, l = 9.5, r = 10.5.
    # Prediction (10.5, 10, 1, 1), half a box to the right: t = 9.5, b = 10.5, l = 10, r = 11.
    # Intersection: it = 9.5, ib = 10.5, il = 10, ir = 10.5 -> I = 1 * 0.5 = 0.5,
    # U = 1 + 1 - 0.5 = 1.5, IoU = 1/3.
    # dI: t > t_g? no -> 0; b < b_g? no -> 0; l > l_g? yes -> -(ib - it) = -1; r < r_g? no -> 0.
    # dU = dX - dI: t: -(r - l) = -1; b: r - l = 1; l: -(b - t) + 1 = 0; r: b - t = 1.
    # Side = (U dI - I dU) / U^2, U^2 = 9/4:
    #   t: (0 + 0.5) / 2.25 = 2/9; b: -0.5 / 2.25 = -2/9; l: -1.5 / 2.25 = -2/3; r: -2/9.
    # (x, y, w, h): dx = l + r = -8/9; dy = t + b = 0; dw = r - l = 4/9; dh = b - t = -4/9.
    # (The exact dIoU/dx is also -8/9; the exact dIoU/dw is 2/9: the code's w step is twice it.)
    box = torch.tensor([[10.5, 10.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[10.0, 10.0, 1.0, 1.0]], dtype=torch.float64)
    move, iou = paper_direction("iou")(box, target)
    torch.testing.assert_close(iou, torch.tensor([1 / 3], dtype=torch.float64))
    torch.testing.assert_close(move, torch.tensor([[-8 / 9, 0.0, 4 / 9, -4 / 9]], dtype=torch.float64))
    # GIoU adds (C dU - U dC) / C^2 per side. Enclosing box: t 9.5, b 10.5, l 9.5, r 11 -> C = 1.5.
    # dC: t < t_g? no; b > b_g? no; l < l_g? no -> 0; r > r_g? yes -> (C_b - C_t) = 1.
    # Penalty, C^2 = 2.25: t: 1.5 * (-1) / 2.25 = -2/3; b: 1.5 / 2.25 = 2/3; l: 0; r: (1.5 - 1.5) / 2.25 = 0.
    # Sides: t = 2/9 - 2/3 = -4/9, b = -2/9 + 2/3 = 4/9, l = -2/3, r = -2/9
    # -> dx = -8/9, dy = 0, dw = 4/9, dh = 4/9 + 4/9 = 8/9.
    move, _ = paper_direction("giou")(box, target)
    torch.testing.assert_close(move, torch.tensor([[-8 / 9, 0.0, 4 / 9, 8 / 9]], dtype=torch.float64))
    # DIoU adds, in (x, y, w, h): C_w = 11 - 9.5 = 1.5, C_h = 1, C = 2.25 + 1 = 3.25, d = 0.25.
    # Indicators: r > r_g only -> D_x = 1, D_y = 0, D_w = 1/2, D_h = 0 (no enclosure override).
    # s_x = (2 (10 - 10.5) 3.25 - (2 * 1.5 * 1 + 2 * 1 * 1) * 0.25) / 3.25^2 = (-3.25 - 1.25) / 10.5625 = -72/169
    # s_y = 0; s_w = (2 * 1.5 * 0.5 + 2 * 1 * 0.5) * 0.25 / 10.5625 = 0.625 / 10.5625 = 10/169; s_h = 0.
    # (The exact ascent of -rho^2/c^2 in x is -(3.25 - 0.25 * 3) / 10.5625 = -40/169: the sign of the d term differs.)
    move, _ = paper_direction("diou")(box, target)
    expected = torch.tensor([[-8 / 9 - 72 / 169, 0.0, 4 / 9 + 10 / 169, -4 / 9]], dtype=torch.float64)
    torch.testing.assert_close(move, expected)
    # One step of the update, B_1 = B_0 + eta (2 - IoU) D, with T = 1 (so step 1 > 0.9 T: eta = 0.001):
    # x_1 = 10.5 + 0.001 * (2 - 1/3) * (-8/9 - 72/169) = 10.5 - 0.00219154...
    final, curve = regress(box, target, paper_direction("diou"), steps=1)
    assert float(final[0, 0]) == pytest.approx(10.5 + 0.001 * (5 / 3) * (-8 / 9 - 72 / 169), abs=1e-12)
    assert float(curve[0]) == pytest.approx(0.5)


def test_results_json_keys_and_report_links(small_run: Path) -> None:
    payload = json.loads((small_run / "results.json").read_text())
    for key in ("command", "args", "detloss_version", "torch_version", "seconds", "cases", "points", "initial_error"):
        assert key in payload
    assert payload["cases"] == 343 and payload["points"] == 1
    assert {(r["loss"], r["gradient"]) for r in payload["runs"]} == {
        (k, g) for k in ("iou", "giou", "diou", "ciou") for g in ("exact", "paper")
    }
    for run in payload["runs"]:
        assert set(run) >= {"loss", "gradient", "error_at", "final_error", "converged_fraction", "curve"}
        assert list(run["error_at"]) == ["1", str(STEPS)]  # the table's steps that exist at T = 30
        assert run["final_error"] == run["curve"][-1] == run["error_at"][str(STEPS)]
        assert len(run["curve"]) == STEPS + 1 and run["curve"][0] == payload["initial_error"]
        assert 0.0 <= run["converged_fraction"] <= 1.0
    rows = list(csv.DictReader((small_run / "results.csv").open()))
    assert len(rows) == 8
    report = (small_run / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert {"error_curves.png", "paper_vs_exact.png", "final_error_map_paper.png", "final_error_map_exact.png"} <= set(
        links
    )
    for link in links:
        assert (small_run / link).is_file(), link
        if link.endswith(".png"):
            assert (small_run / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| E(1) |" in report and "converged" in report


class Stop(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_numbers_whatever_the_workers(tmp_path: Path) -> None:
    setup = Setup(points=3, steps=12, seed=1, chunk_points=1)
    kwargs = {"losses": ("giou", "ciou"), "gradients": ("exact", "paper"), "progress": False, "figures": False}
    simulate(setup=setup, out=tmp_path / "whole", workers=2, **kwargs)  # two processes; the cut run uses one

    computed: list[tuple[str, str, int]] = []

    def stop_after_five(loss: str, gradient: str, k: int) -> None:
        computed.append((loss, gradient, k))
        if len(computed) == 5:
            raise Stop

    with pytest.raises(Stop):
        simulate(setup=setup, out=tmp_path / "cut", on_chunk=stop_after_five, **kwargs)
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed_chunks: list[tuple[str, str, int]] = []
    simulate(
        resume=True,
        out=tmp_path / "cut",
        progress=False,
        figures=False,
        on_chunk=lambda *a: resumed_chunks.append(a),
    )
    assert len(resumed_chunks) == 4 * 3 - 5  # only the chunks the interrupted run had not finished
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    strip = lambda runs: [{k: v for k, v in r.items() if k != "seconds"} for r in runs]  # noqa: E731
    assert strip(a["runs"]) == strip(b["runs"])
    assert (tmp_path / "whole" / "point_errors.csv").read_text() == (tmp_path / "cut" / "point_errors.csv").read_text()
    assert b["args"]["points"] == 3 and b["args"]["resume"] is True


def test_resume_without_a_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DetLossError, match="resume"):
        simulate(resume=True, out=tmp_path, progress=False)


def test_paper_mode_exists_only_for_the_classic_four(tmp_path: Path) -> None:
    out = simulate(
        losses=("diou", "eiou"),
        gradients=("paper",),
        setup=Setup(points=1, steps=2),
        out=tmp_path,
        progress=False,
        figures=False,
    )
    payload = json.loads((out / "results.json").read_text())
    assert [(r["loss"], r["gradient"]) for r in payload["runs"]] == [("diou", "paper")]
    assert any("eiou" in note and "exact gradients only" in note for note in payload["notes"])


def test_cli_simulate_quick_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from detloss.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--points", "1", "--steps", "3", "--losses", "iou,diou", "--out", str(tmp_path)])
    assert exit_info.value.code == 0
    assert str(tmp_path / "report.md") in capsys.readouterr().out
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["args"]["losses"] == ["iou", "diou"] and payload["args"]["gradient"] == ["exact"]
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--points", "1", "--gradient", "sideways", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "gradient" in capsys.readouterr().err

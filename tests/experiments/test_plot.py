"""``detloss plot curves | boxes | landscape``: a PNG of the expected size, numbers from the library
that agree with the independent references of ``tests/reference.py``, reports whose links resolve."""

from __future__ import annotations

import csv
import json
import math
import re
import struct
from pathlib import Path

import pytest

from detloss.cli import main
from detloss.experiments import box_grid, curves, landscape
from tests.reference import (
    ref_balanced_l1,
    ref_bce,
    ref_huber,
    ref_l1,
    ref_l2,
    ref_quality_focal,
    ref_sigmoid_focal,
    ref_similarity,
    ref_smooth_l1,
    ref_varifocal,
)

DPI = 120  # experiments.runs.save_figure


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height


def check_png(path: Path, figsize: tuple[float, float]) -> None:
    """The figure size at 120 dpi, give or take the trimming of empty margins (5%)."""
    width, height = png_size(path)
    assert width == pytest.approx(figsize[0] * DPI, rel=0.05)
    assert height == pytest.approx(figsize[1] * DPI, rel=0.05)


def check_report(folder: Path) -> list[str]:
    links = re.findall(r"\]\(([^)]+)\)", (folder / "report.md").read_text())
    assert links
    for link in links:
        assert (folder / link).is_file(), link
    return links


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return out


def rows_of(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "results.csv").open()))


def test_plot_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(["plot", "curves", "--out", str(tmp_path)], capsys)
    assert str(tmp_path / "report.md") in out
    check_png(tmp_path / "curves.png", curves.FIGSIZE)
    assert "curves.png" in check_report(tmp_path)
    rows = rows_of(tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["command"] == "plot curves"
    regression = {
        "l1": ref_l1,
        "l2": ref_l2,
        "smooth_l1": ref_smooth_l1,
        "huber": ref_huber,
        "balanced_l1": ref_balanced_l1,
    }
    h = 1e-6
    for row in rows[::37]:
        x = float(row["error"])
        for key, ref in regression.items():
            assert float(row[key]) == pytest.approx(ref(x), abs=1e-9), (key, x)
            if min(abs(x - k) for k in (-1.0, 0.0, 1.0)) > 1e-3:  # away from the kinks
                numeric = (ref(x + h) - ref(x - h)) / (2 * h)
                assert float(row[f"d{key}/dx"]) == pytest.approx(numeric, rel=1e-5, abs=1e-6), (key, x)
        p = float(row["prob"])
        logit = math.log(p / (1 - p))
        assert float(row["binary_cross_entropy"]) == pytest.approx(ref_bce(logit, 1.0), rel=1e-9)
        for gamma in curves.FOCAL_GAMMAS:
            got = float(row[f"sigmoid_focal gamma={gamma:g}"])
            assert got == pytest.approx(ref_sigmoid_focal(logit, 1.0, None, gamma), rel=1e-7, abs=1e-12)
        for q in curves.TARGETS:
            assert float(row[f"quality_focal y={q:g}"]) == pytest.approx(
                ref_quality_focal(logit, q, 2.0), rel=1e-7, abs=1e-12
            )
            assert float(row[f"varifocal q={q:g}"]) == pytest.approx(
                ref_varifocal(logit, q, 0.75, 2.0), rel=1e-7, abs=1e-12
            )
    # by hand: smooth L1 (beta 1) at x = 0.495 is x^2 / 2; focal with gamma 0 is the BCE
    middle = rows[len(rows) // 2 + 33]  # error = -3 + 6 * 233 / 400 = 0.495
    assert float(middle["error"]) == pytest.approx(0.495)
    assert float(middle["smooth_l1"]) == pytest.approx(0.5 * 0.495**2)
    assert float(middle["sigmoid_focal gamma=0"]) == pytest.approx(float(middle["binary_cross_entropy"]), rel=1e-12)


def test_plot_boxes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(["plot", "boxes", "--out", str(tmp_path)], capsys)
    check_png(tmp_path / "boxes.png", box_grid.FIGSIZE)
    check_report(tmp_path)
    rows = {r["configuration"]: r for r in rows_of(tmp_path)}
    assert len(rows) == len(box_grid.CONFIGURATIONS) == 9
    for name, pred, gt in box_grid.CONFIGURATIONS:
        for kind in ("iou", "giou", "diou", "ciou", "eiou", "siou"):
            assert float(rows[name][kind]) == pytest.approx(ref_similarity(pred, gt, kind), abs=1e-7), (name, kind)
    # By hand, ground truth 4 x 3 = 12: every nested 2 x 1 prediction has IoU = GIoU = 2/12 (the
    # enclosing box is the ground truth, so the GIoU penalty is 0); disjoint pairs have IoU 0;
    # touching along a side: IoU 0 and GIoU 0 (enclosing 6 x 3 = the union 12 + 6).
    for name in ("nested, centred", "nested, at a side", "nested, in a corner"):
        assert float(rows[name]["iou"]) == pytest.approx(1 / 6, abs=1e-7)
        assert float(rows[name]["giou"]) == pytest.approx(1 / 6, abs=1e-7)
    # DIoU separates them: centres 0, 1 and sqrt(1 + 1) apart, diagonal^2 = 16 + 9 = 25
    assert float(rows["nested, centred"]["diou"]) == pytest.approx(1 / 6, abs=1e-7)
    assert float(rows["nested, at a side"]["diou"]) == pytest.approx(1 / 6 - 1 / 25, abs=1e-7)
    assert float(rows["nested, in a corner"]["diou"]) == pytest.approx(1 / 6 - 2 / 25, abs=1e-7)
    for name in ("disjoint, near", "disjoint, far", "disjoint, diagonal", "touching along a side"):
        assert float(rows[name]["iou"]) == 0.0
    assert float(rows["touching along a side"]["giou"]) == pytest.approx(0.0, abs=1e-7)


def test_plot_landscape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(["plot", "landscape", "--loss", "ciou", "--out", str(tmp_path)], capsys)
    check_png(tmp_path / "landscape_ciou.png", landscape.FIGSIZE)
    assert "landscape_ciou.png" in check_report(tmp_path)
    rows = rows_of(tmp_path)
    tx, ty, tw, th = landscape.TARGET
    target = (tx - tw / 2, ty - th / 2, tx + tw / 2, ty + th / 2)
    for row in rows[::29]:
        if row["grid"] == "move":
            x, y, w, h = float(row["x"]), float(row["y"]), 1.0, 1.0
        else:
            x, y, w, h = 0.0, 0.0, float(row["w"]), float(row["h"])
        pred = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        assert float(row["loss"]) == pytest.approx(1 - ref_similarity(pred, target, "ciou"), abs=1e-7)
    # By hand: the 1 x 1 prediction centred on the 2 x 1 target (grid point x = y = 0 of a 3 x 3
    # grid): IoU 1/2, no centre term, v = 4/pi^2 (atan 2 - atan 1)^2 = 0.041956,
    # alpha = v / (1/2 + v) = 0.077417, loss = 1/2 + alpha v = 0.503248; by symmetry dL/dx = dL/dy = 0.
    data = landscape.landscape_data("ciou", size=3)
    assert float(data["move_loss"][1, 1]) == pytest.approx(0.503248, abs=1e-6)
    assert data["move_grad"][1, 1, :2].abs().max() < 1e-9


def test_plot_landscape_rejects_a_loss_that_takes_no_boxes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "landscape", "--loss", "l1"])
    assert exit_info.value.code == 2
    assert "loss" in capsys.readouterr().err


def _probiou_reference(pred: tuple[float, ...], target: tuple[float, ...]) -> float:
    """Hellinger distance of the boxes as Gaussians, Sigma = R diag(w^2, h^2) R^T / 12, float64."""

    def sigma(box: tuple[float, ...]) -> list[list[float]]:
        _, _, w, h, a = box
        c, s = math.cos(a), math.sin(a)
        vw, vh = w * w / 12, h * h / 12
        return [[c * c * vw + s * s * vh, c * s * (vw - vh)], [c * s * (vw - vh), s * s * vw + c * c * vh]]

    sp, st = sigma(pred), sigma(target)
    m = [[(sp[i][j] + st[i][j]) / 2 for j in range(2)] for i in range(2)]
    det = m[0][0] * m[1][1] - m[0][1] ** 2
    dx, dy = pred[0] - target[0], pred[1] - target[1]
    quad = (m[1][1] * dx * dx - 2 * m[0][1] * dx * dy + m[0][0] * dy * dy) / det  # D^T M^-1 D
    det_p, det_t = (s[0][0] * s[1][1] - s[0][1] ** 2 for s in (sp, st))
    b = quad / 8 + 0.5 * math.log(det / math.sqrt(det_p * det_t))
    return math.sqrt(1 - math.exp(-b))


def test_plot_landscape_of_a_rotated_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(["plot", "landscape", "--loss", "probiou", "--out", str(tmp_path)], capsys)
    check_png(tmp_path / "landscape_probiou.png", landscape.ROTATED_FIGSIZE)
    assert "landscape_probiou.png" in check_report(tmp_path)
    rows = rows_of(tmp_path)
    assert {row["grid"] for row in rows} == {"move", "stretch", "turn"}
    target = (*landscape.TARGET, 0.0)
    for row in rows[::23]:
        if row["grid"] == "move":
            pred = (float(row["x"]), float(row["y"]), 1.0, 1.0, 0.0)
        elif row["grid"] == "stretch":
            pred = (0.0, 0.0, float(row["w"]), float(row["h"]), 0.0)
        else:
            pred = (float(row["x"]), 0.0, target[2], target[3], float(row["a"]))
        assert float(row["loss"]) == pytest.approx(_probiou_reference(pred, target), abs=1e-6), row
    # By hand: the 1 x 1 prediction on the 2 x 1 target's centre: Sigma = diag(2.5, 1) / 12,
    # B = 1/2 ln(2.5 / sqrt(4)) = 0.111572, loss sqrt(1 - e^-B) = 0.324920; by symmetry no
    # centre gradient. The 2 x 1 prediction at x = 0, a = 0 is the target: loss 0
    data = landscape.landscape_data("probiou", size=3)
    assert float(data["move_loss"][1, 1]) == pytest.approx(0.324920, abs=1e-6)
    assert data["move_grad"][1, 1, :2].abs().max() < 1e-9
    assert float(data["turn_loss"][1, 1]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loss", ["kld", "gwd", "kfiou", "rotated_iou"])
def test_plot_landscape_takes_every_rotated_loss(loss: str) -> None:
    data = landscape.landscape_data(loss, size=5)
    for grid in ("move", "stretch", "turn"):
        assert bool(data[f"{grid}_loss"].isfinite().all()) and bool(data[f"{grid}_grad"].isfinite().all())

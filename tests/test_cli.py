from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from detloss.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_boxes_prints_every_kind_and_draws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "b.png"
    # gt 4x2 at (0,0), pred 3x3 at (2,1) in xywh: golden case A of tests/boxes/test_iou.py
    code, out, _ = run(["boxes", "--gt", "0,0,4,2", "--pred", "2,1,3,3", "--out", str(png)], capsys)
    assert code == 0
    for header in ("IoU", "GIoU", "DIoU", "CIoU", "EIoU", "SIoU"):
        assert header in out
    assert "0.1333" in out and "-0.1167" in out and "0.0236" in out  # IoU, GIoU, DIoU by hand
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["boxes", "--gt", "1,2,3"], "--gt"),
        (["boxes", "--pred", "a,b,c,d"], "--pred"),
        (["boxes", "--format", "yxyx"], "--format"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(args, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "detloss", "boxes", "--gt", "0,0,2,2", "--pred", "1,1,2,2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "GIoU" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["boxes", "--gt", "0,0,-5,5"], "--gt"),  # xywh: a negative width
        (["boxes", "--gt", "0,0,5,5", "--pred", "1,1,2,-0.5"], "--pred"),
        (["boxes", "--format", "cxcywh", "--gt", "5,5,-1,2"], "--gt"),
        (["boxes", "--format", "xyxy", "--gt", "4,0,2,2"], "--gt"),  # x2 < x1
    ],
)
def test_boxes_with_negative_sides_are_refused(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(args, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err and ">= " in err


def test_boxes_degenerate_but_valid_boxes_still_print(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["boxes", "--gt", "0,0,0,5", "--pred", "0,0,2,2"], capsys)  # zero width: IoU 0
    assert code == 0 and "0.0000" in out


def test_boxes_out_is_checked_before_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad, needle in ((tmp_path / "missing" / "x.png", "missing"), (tmp_path / "x.gif", ".png")):
        code, out, err = run(["boxes", "--out", str(bad)], capsys)
        assert code == 2 and out == "", out  # nothing printed before the refusal
        assert len(err.strip().splitlines()) == 1 and "--out" in err and needle in err
        assert not bad.exists()


@pytest.mark.parametrize(
    ("suffix", "magic"), [(".jpg", b"\xff\xd8\xff"), (".jpeg", b"\xff\xd8\xff"), (".pdf", b"%PDF")]
)
def test_boxes_out_writes_the_format_of_its_suffix(
    suffix: str, magic: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"boxes{suffix}"
    code, _, _ = run(["boxes", "--out", str(path)], capsys)
    assert code == 0 and path.read_bytes().startswith(magic)


def widest_line(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


def test_tables_fit_an_80_column_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Output that is not a terminal is 80 columns wide, as rich assumes; nothing is cut."""
    code, out, _ = run(["boxes"], capsys)
    assert code == 0 and widest_line(out) <= 80 and "…" not in out
    assert "-0.1075" in out and "1.1075" in out  # CIoU of the first demo prediction and its loss
    fuzz = ["fuzz", "--cases", "20", "--losses", "binary_cross_entropy,ghm_c", "--out", str(tmp_path)]
    code, out, _ = run(fuzz, capsys)
    assert code == 0 and widest_line(out) <= 80
    assert "binary_cross_entropy" in out and "autocast_bf16" in out and "…" not in out.split("inf value,")[0]


def test_version_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    import detloss

    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith(f"detloss {detloss.__version__} (torch ")
    code, out, _ = run(["list"], capsys)
    assert code == 0 and widest_line(out) <= 80
    for key in detloss.available_losses():
        assert f"\n {key} " in out or f"\n {key}\n" in out, key
    focal = out.split("\n sigmoid_focal ")[1].split("\n\n")[0]
    assert "Lin et al." in focal and "alpha=0.25" in focal and "gamma=2.0" in focal  # the paper's defaults
    assert "SigmoidFocalLoss" in focal


def test_bare_command_prints_help_and_no_empty_error(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, err = run([], capsys)
    assert "Usage" in out + err and "convert-dataset" in out + err
    assert "error" not in err


def test_boxes_rotated_prints_every_kind_and_draws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 4 x 2 box and the same box turned by 90 degrees, by hand: intersection 2 x 2 of union 12
    (IoU 1/3); hull: the 4 x 4 square less four corner triangles of area 1/2 (14), GIoU 1/3 - 2/14;
    B = 1/2 ln(det S / sqrt(det S_p det S_t)) with S = (S_p + S_t)/2 = diag(10, 10)/12: ln(10/8);
    KL(N_t || N_p) = 1/2 (tr(S_p^-1 S_t) - 2) = 1/2 (1/4 + 4 - 2) with S = diag(4, 1), diag(1, 4);
    W2^2 = tr(S_p + S_t) - 2 tr((S_p^1/2 S_t S_p^1/2)^1/2) = 10 - 2 (2 + 2); KFIoU 3.2 / 12.8."""
    png = tmp_path / "rotated.png"
    code, out, _ = run(["boxes", "--rotated", "--gt", "0,0,4,2,0", "--pred", "0,0,4,2,90", "--out", str(png)], capsys)
    assert code == 0
    for header in ("IoU", "GIoU", "ProbIoU", "KLD", "GWD", "KFIoU"):
        assert header in out
    for value in (1 / 3, 1 / 3 - 1 / 7, math.log(10 / 8), 1.125, 2.0, 0.25):
        assert f"{value:.4f}" in out, value
    assert f"{1 - (1 / 3 - 1 / 7):.4f}" in out  # the rotated GIoU loss
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same boxes in radians and as corners
    code, radians, _ = run(
        ["boxes", "--rotated", "--angle-unit", "rad", "--gt", "0,0,4,2,0", "--pred", f"0,0,4,2,{math.pi / 2}"], capsys
    )
    corners = [
        "boxes",
        "--rotated",
        "--format",
        "xyxyxyxy",
        "--gt",
        "2,1,-2,1,-2,-1,2,-1",
        "--pred",
        "-1,2,-1,-2,1,-2,1,2",
    ]
    code_c, from_corners, _ = run(corners, capsys)
    assert code == code_c == 0
    for value in (1 / 3, 1 / 3 - 1 / 7, math.log(10 / 8), 1.125, 2.0, 0.25):
        assert f"{value:.4f}" in radians and f"{value:.4f}" in from_corners, value


def test_boxes_rotated_demo_fits_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["boxes", "--rotated"], capsys)
    assert code == 0 and widest_line(out) <= 80 and "…" not in out
    assert "(cxcywha, deg)" in out and out.count("1.0000") >= 2  # the last demo box is the target turned by 180


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["boxes", "--rotated", "--gt", "1,2,3,4"], "--gt"),
        (["boxes", "--rotated", "--pred", "0,0,-1,2,0"], "--pred"),
        (["boxes", "--rotated", "--format", "xywh"], "--format"),
        (["boxes", "--rotated", "--format", "xyxyxyxy"], "--gt"),  # the demo boxes are cxcywha
        (["boxes", "--rotated", "--angle-unit", "grad"], "--angle-unit"),
    ],
)
def test_boxes_rotated_bad_options_give_one_line(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(args, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err

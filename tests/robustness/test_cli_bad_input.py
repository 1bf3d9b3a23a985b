"""Bad options to every ``detloss`` command: one line on stderr, exit code 2, no traceback.

The commands are read from the typer app, so a new command is probed the day it lands: an
unknown option, a non-number for every numeric option, an output folder that cannot be
created. A table adds the values only the command can know to be wrong (counts of 0,
unknown loss names, a probability above 1, unreadable or malformed COCO files, ...).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import typer.main

from detloss.cli import app, main

#: Seconds a rejected command may take (a bad option must be refused before any work).
LIMIT_S = 20


def commands() -> list[tuple[tuple[str, ...], Any]]:
    def walk(cmd: Any, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, (*prefix, name))
        else:
            yield prefix, cmd

    return sorted(walk(typer.main.get_command(app), ()), key=lambda pc: pc[0])


COMMANDS = commands()
PATHS = [path for path, _ in COMMANDS]


def option_types(path: tuple[str, ...]) -> dict[str, Any]:
    """``--option`` -> its annotation (``int``, ``float | None``, ``Path``, ...)."""
    cmd = dict(COMMANDS)[path]
    return {p.opts[0]: p.type_descriptor.annotation for p in cmd.params if p.opts and p.opts[0].startswith("--")}


def _timeout(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError(f"a rejected command ran for more than {LIMIT_S} s: it did work before checking its options")


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(LIMIT_S)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def assert_usage_error(args: list[str], capsys: pytest.CaptureFixture[str], needle: str | None = None) -> str:
    code, _, err = run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"{args}: exit code {code}, stderr {err!r}"
    assert len(lines) == 1, f"{args}: expected one line on stderr, got {lines}"
    assert "Traceback" not in err
    if needle is not None:
        # an option may be named as typed (--batch-size) or as its parameter (`batch_size`)
        names = [needle] + ([f"`{needle[2:].replace('-', '_')}`"] if needle.startswith("--") else [])
        assert any(n in err for n in names), f"{args}: none of {names} in {err!r}"
    return err


def test_the_commands_of_the_issue_exist() -> None:
    names = {path[0] for path in PATHS}
    assert {"boxes", "demo", "fuzz"} <= names


@pytest.mark.parametrize("path", PATHS, ids=["-".join(p) for p in PATHS])
def test_unknown_option(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error([*path, "--no-such-option", "1"], capsys, "--no-such-option")


def _is_number(annotation: Any) -> bool:
    text = str(annotation)
    return annotation in (int, float) or text in ("int | None", "float | None", "typing.Optional[int]")


NUMERIC = [(path, opt) for path in PATHS for opt, ann in option_types(path).items() if _is_number(ann)]


@pytest.mark.parametrize(("path", "option"), NUMERIC, ids=["-".join(p) + o for p, o in NUMERIC])
def test_numeric_option_given_text(path: tuple[str, ...], option: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error([*path, option, "not-a-number"], capsys, option)


WITH_OUT = [path for path in PATHS if "--out" in option_types(path)]


@pytest.mark.parametrize("path", WITH_OUT, ids=["-".join(p) for p in WITH_OUT])
def test_output_folder_that_cannot_be_created(
    path: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out`` under a regular file: an OS error, reported in one line naming the path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    extra = ["--cases", "1"] if path == ("fuzz",) else []
    assert_usage_error([*path, *extra, "--out", str(blocker / "sub" / "x.png")], capsys, "a-file")


# ---------------------------------------------------------------- values only the command knows are wrong

SEMANTIC: list[tuple[list[str], str]] = [
    (["boxes", "--gt", "1,2,3"], "--gt"),
    (["boxes", "--gt", "nan,0,1,1"], "--gt"),
    (["boxes", "--pred", "a,b,c,d"], "--pred"),
    (["boxes", "--format", "yxyx"], "--format"),
    (["fuzz", "--cases", "0"], "--cases"),
    (["fuzz", "--cases", "-5"], "--cases"),
    (["fuzz", "--losses", "no_such_loss"], "--losses"),
    (["simulate", "--points", "0"], "--points"),
    (["simulate", "--points", "-3"], "--points"),
    (["simulate", "--steps", "0"], "--steps"),
    (["simulate", "--losses", "no_such_loss"], "--losses"),
    (["simulate", "--losses", "l1"], "--losses"),
    (["simulate", "--gradient", "sideways"], "--gradient"),
    (["simulate", "--dtype", "float8"], "--dtype"),
    (["simulate", "--chunk-points", "0"], "--chunk-points"),
    (["plot", "landscape", "--loss", "no_such_loss"], "--loss"),
    (["plot", "landscape", "--loss", "cross_entropy"], "--loss"),
    (["train", "--box-loss", "no_such_loss"], "--box-loss"),
    (["train", "--obj-loss", "no_such_loss"], "--obj-loss"),
    (["train", "--cls-loss", "no_such_loss"], "--cls-loss"),
    (["train", "--steps", "0"], "--steps"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--box-weight", "nan"], "--box-weight"),
    (["train", "--box-weight", "-1"], "--box-weight"),
    (["train", "--image-size", "0"], "--image-size"),
    (["train", "--image-size", "50"], "--image-size"),
    (["train", "--train-images", "0"], "--train-images"),
    (["train", "--width", "0"], "--width"),
    (["train", "--nms", "soft"], "--nms"),
    (["train", "--nms-threshold", "1.5"], "--nms-threshold"),
    (["train", "--nms-threshold", "-0.1"], "--nms-threshold"),
    (["train", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--box-option", "no-equals-sign"], "--box-option"),
    (["train", "--train-json", "/no/such/file.json", "--val-json", "/no/such/file.json"], "file.json"),
    (["compare", "--box-loss", "no_such_loss"], "--box-loss"),
    (["compare", "--obj-loss", "no_such_loss"], "--obj-loss"),
    (["compare", "--seeds", "0"], "--seeds"),
    (["compare", "--steps", "0"], "--steps"),
    (["compare", "--lr", "-1"], "--lr"),
    (["compare", "--nms-threshold", "2"], "--nms-threshold"),
    (["compare", "--device", "tpu"], "--device"),
    (["bench", "--losses", "no_such_loss"], "--losses"),
    (["bench", "--sizes", "0"], "--sizes"),
    (["bench", "--sizes", "abc"], "--sizes"),
    (["bench", "--repeat", "0"], "--repeat"),
    (["bench", "--backends", "nope"], "--backends"),
    (["bench", "--threads", "-1"], "--threads"),
    (["bench", "--device", "tpu"], "--device"),
    (["fuzz", "--jobs", "0"], "--jobs"),
    (["fuzz", "--backend", "nope"], "--backend"),
]


@pytest.mark.parametrize(("args", "needle"), SEMANTIC, ids=[" ".join(a) for a, _ in SEMANTIC])
def test_semantically_bad_values(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tuple(args[:2]) if args[0] == "plot" else (args[0],)
    if path not in PATHS:
        pytest.skip(f"no command {' '.join(path)} yet")
    if args[len(path)] not in option_types(path):
        pytest.skip(f"{' '.join(path)} has no option {args[len(path)]}")
    assert_usage_error(args, capsys, needle)


# ---------------------------------------------------------------- train on unreadable COCO files


def _coco(tmp: Path, image_name: str = "a.png") -> dict[str, Any]:
    return {
        "images": [{"id": 1, "file_name": image_name, "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }


@pytest.mark.parametrize(
    "problem", ["not json", "json but not coco", "missing image", "corrupt image", "empty file", "a folder"]
)
def test_train_names_the_unreadable_coco_file(problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if ("train",) not in PATHS or "--train-json" not in option_types(("train",)):
        pytest.skip("no train --train-json yet")
    images = tmp_path / "images"
    images.mkdir()
    ann = tmp_path / "train.json"
    bad_name = str(ann)
    if problem == "not json":
        ann.write_text("{ this is not json")
    elif problem == "json but not coco":
        ann.write_text(json.dumps({"images": "nope"}))
    elif problem == "empty file":
        ann.write_text("")
    elif problem == "a folder":
        ann = tmp_path / "folder.json"
        ann.mkdir()
        bad_name = str(ann)
    elif problem == "missing image":
        ann.write_text(json.dumps(_coco(tmp_path)))
        bad_name = "a.png"
    else:
        (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
        ann.write_text(json.dumps(_coco(tmp_path)))
        bad_name = "a.png"
    args = ["train", "--train-json", str(ann), "--train-image-dir", str(images)]
    args += ["--val-json", str(ann), "--val-image-dir", str(images), "--steps", "1", "--out", str(tmp_path / "run")]
    assert_usage_error(args, capsys, bad_name)


# ---------------------------------------------------------------- through the console script


def test_console_script_bad_option_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "detloss", "fuzz", "--cases", "zero"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--cases" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- options named as typed; --out a file; --device


@pytest.mark.parametrize(
    ("args", "flag", "parameter"),
    [
        (["train", "--batch-size", "0"], "--batch-size", "batch_size"),
        (["train", "--batch-size", "64", "--train-images", "32", "--val-images", "4"], "--batch-size", "batch_size"),
        (["train", "--steps", "0"], "--steps", "steps"),
        (["train", "--image-size", "40"], "--image-size", "image_size"),
        (["train", "--train-json", "a.json"], "--val-json", "val_json"),
        (["train", "--box-weight", "nan"], "--box-weight", "box_weight"),
        (["compare", "--batch-size", "64", "--train-images", "32", "--val-images", "4"], "--batch-size", "batch_size"),
        (["compare", "--steps", "0"], "--steps", "steps"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_errors_name_the_option_as_typed(
    args: list[str], flag: str, parameter: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = assert_usage_error([*args, "--out", str(tmp_path / "run")], capsys, flag)
    assert f"`{flag}`" in err and f"`{parameter}`" not in err
    assert not (tmp_path / "run").exists()  # refused before a folder was made


FOLDER_OUT = [path for path in WITH_OUT if path != ("boxes",)]  # boxes --out is a picture file


@pytest.mark.parametrize("path", FOLDER_OUT, ids=["-".join(p) for p in FOLDER_OUT])
def test_output_folder_that_is_a_file(
    path: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    extra = ["--cases", "1"] if path == ("fuzz",) else []
    err = assert_usage_error([*path, *extra, "--out", str(blocker)], capsys, "--out")
    assert "a-file" in err and "Errno" not in err
    assert blocker.read_text() == "not a folder"


DEVICE_COMMANDS = [("train",), ("compare",), ("bench",)]


@pytest.mark.parametrize("path", DEVICE_COMMANDS, ids=["-".join(p) for p in DEVICE_COMMANDS])
def test_cuda_on_a_torch_without_it_is_one_line(
    path: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = assert_usage_error([*path, "--device", "cuda", "--out", str(tmp_path / "run")], capsys, "--device")
    assert "CUDA" in err and not (tmp_path / "run").exists()

"""A short training run: the loss goes down, every output is written, --resume continues exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detloss import DetLossError
from detloss.cli import main
from detloss.detection import compare as compare_module
from detloss.detection.compare import compare
from detloss.detection.train import TrainConfig, load_checkpoint, train

OUTPUTS = (
    "checkpoint.pt", "metrics.json", "results.json", "results.csv", "loss_curves.png", "predictions.png", "report.md"
)
KEYS = ("command", "args", "detloss_version", "torch_version", "seconds", "metrics", "losses", "steps", "world_size")


def tiny(**kw: object) -> TrainConfig:
    settings: dict = dict(
        image_size=32, train_images=64, val_images=8, batch_size=8, width=8, steps=30, checkpoint_every=10,
        warmup_steps=5, lr=5e-3, num_drawn=2,
    )
    settings.update(kw)
    return TrainConfig(**settings)


class Stop(Exception):
    pass


def test_short_run_lowers_loss_writes_outputs_and_resumes_exactly(tmp_path: Path) -> None:
    full = train(tiny(), tmp_path / "full", progress=False)
    for name in OUTPUTS:
        assert (tmp_path / "full" / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    for key in KEYS:
        assert key in results
    assert results["steps"] == 30 and results["world_size"] == 1 and results["losses"]["box_loss"] == "ciou"
    assert set(results["metrics"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert set(results["metrics_by_nms"]) == {"nms", "diou_nms"}
    assert json.loads((tmp_path / "full" / "metrics.json").read_text()) == results["metrics"]
    rows = (tmp_path / "full" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,box,obj,cls") and len(rows) == 31
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5  # measured: 8.9 vs 11.0

    # interrupted after step 17: the last checkpoint is step 10, nothing else written
    def stop(step: int, record: dict) -> None:
        if step == 17:
            raise Stop

    with pytest.raises(Stop):
        train(tiny(), tmp_path / "cut", progress=False, on_step=stop)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 10
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed = train(None, tmp_path / "cut", resume=True, progress=False)
    assert resumed["steps"] == 30
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert [r["step"] for r in b["history"]] == list(range(1, 31))
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, msg=name)  # same trajectory as without the cut
    assert resumed["metrics"] == full["metrics"]

    # a finished run is not trained again; a different configuration is refused
    again = train(None, tmp_path / "cut", resume=True, progress=False)
    assert again["steps"] == 30
    with pytest.raises(DetLossError, match="settings differ"):
        train(tiny(box_loss="giou"), tmp_path / "cut", resume=True, progress=False)
    with pytest.raises(DetLossError, match="no checkpoint"):
        train(None, tmp_path / "nothing", resume=True, progress=False)


def test_cli_train_and_compare_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    common = ["--image-size", "32", "--train-images", "32", "--val-images", "4", "--batch-size", "8", "--width", "8"]
    with pytest.raises(SystemExit) as code:
        main(["train", "--steps", "3", "--box-loss", "giou", "--obj-loss", "focal", "--obj-option", "gamma=1.5",
              "--out", str(tmp_path / "t"), "--no-progress", *common])
    assert code.value.code == 0
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert results["losses"]["obj_loss"] == "sigmoid_focal" and results["losses"]["obj_options"] == {"gamma": 1.5}
    with pytest.raises(SystemExit) as code:
        main(["train", "--box-loss", "nope", "--out", str(tmp_path / "u"), *common])
    assert code.value.code == 2 and "`--box-loss`" in capsys.readouterr().err  # named as typed
    with pytest.raises(SystemExit) as code:
        main(["compare", "--box-loss", "iou,nope", "--out", str(tmp_path / "v"), *common])
    assert code.value.code == 2 and "nope" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()  # no run folder for a command that cannot run

    base = TrainConfig(image_size=32, train_images=32, val_images=4, batch_size=8, width=8, steps=3, warmup_steps=1)
    result = compare(["iou", "l2"], ["bce"], [3], base, tmp_path / "c", progress=False)
    assert len(result["rows"]) == 2 * 1 * 2  # 2 box losses x 1 seed x (NMS, DIoU-NMS)
    assert (tmp_path / "c" / "runs" / "l2-binary_cross_entropy-seed3" / "checkpoint.pt").exists()
    summary = result["summary"]
    assert [(s["box_loss"], s["nms"]) for s in summary] == [
        ("iou", "nms"), ("l2", "nms"), ("iou", "diou_nms"), ("l2", "diou_nms")
    ]
    for name in ("results.json", "results.csv", "table.md", "table.csv", "ap_bars.png", "report.md"):
        assert (tmp_path / "c" / name).stat().st_size > 0, name
    assert "DIoU-NMS" in (tmp_path / "c" / "table.md").read_text()

    def no_training(*args: object, **kw: object) -> None:
        raise AssertionError("a finished setting was trained again")

    monkeypatch.setattr(compare_module, "train", no_training)
    again = compare(["iou", "l2"], ["bce"], [3], base, tmp_path / "c", progress=False)
    assert again["rows"] == result["rows"]


def test_cli_defaults_are_the_config_defaults() -> None:
    import inspect
    from dataclasses import fields

    from detloss import cli
    from detloss.detection.yolo_loss import resolve_loss_name

    defaults = TrainConfig()
    # None in the dataclass: the head fills the setting in (TrainConfig().obj_loss is bce, the yolov3 head's)
    unset = {f.name for f in fields(TrainConfig) if f.default is None}
    for command in (cli.train, cli.compare):
        for name, param in inspect.signature(command).parameters.items():
            if not hasattr(defaults, name) or name in ("box_loss", "steps"):
                continue
            if param.default is None:  # the option left out: the configuration's own default, head's included
                assert name in unset, (command.__name__, name)
                continue
            expected = getattr(defaults, name)
            value = resolve_loss_name(param.default, name) if name.endswith("_loss") else param.default
            assert value == expected, (command.__name__, name)
    train_params = inspect.signature(cli.train).parameters
    assert train_params["obj_loss"].default is None and defaults.obj_loss == "binary_cross_entropy"
    assert TrainConfig(head="anchor-free").obj_loss is None  # no objectness
    assert train_params["box_loss"].default == defaults.box_loss
    assert train_params["steps"].default is None  # None: TrainConfig's steps


def tiny_args(out: Path) -> list[str]:
    tiny_model = ["--image-size", "32", "--batch-size", "8", "--width", "8", "--steps", "2"]
    return [*tiny_model, "--no-progress", "--out", str(out)]


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as code:
        main(args)
    out, err = capsys.readouterr()
    return int(code.value.code or 0), out, err


def test_train_and_compare_take_the_same_data_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from detloss.detection.data import SyntheticScenes

    for split, n in (("train", 16), ("val", 4)):
        SyntheticScenes(n, 32, seed=1, split=split).export(tmp_path / "yolo", "yolo")
        SyntheticScenes(n, 32, seed=1, split=split).export(tmp_path / "coco", "coco")
    yolo = ["--data", str(tmp_path / "yolo" / "data.yaml")]
    coco = []
    for split in ("train", "val"):
        coco += [f"--{split}-json", str(tmp_path / "coco" / "annotations" / f"instances_{split}.json")]
        coco += [f"--{split}-image-dir", str(tmp_path / "coco" / "images" / split)]
    for name, data in (("yolo", yolo), ("coco", coco)):
        code, _, err = cli(["train", *data, *tiny_args(tmp_path / f"train-{name}")], capsys)
        assert code == 0, err
        results = json.loads((tmp_path / f"train-{name}" / "results.json").read_text())
        assert results["validation"]["source"].startswith(f"{name}(") and results["validation"]["images"] == 4
        one_model = ["--box-loss", "iou", "--seeds", "1"]
        code, _, err = cli(["compare", *one_model, *data, *tiny_args(tmp_path / f"cmp-{name}")], capsys)
        assert code == 0, err
        model = tmp_path / f"cmp-{name}" / "runs" / "iou-binary_cross_entropy-seed0"
        run = json.loads((model / "results.json").read_text())
        assert run["validation"]["source"].startswith(f"{name}(")
        assert "synthetic" not in (tmp_path / f"cmp-{name}" / "report.md").read_text()


@pytest.mark.parametrize("command", ["train", "compare"])
def test_image_folders_without_annotations_are_an_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    args = [command, "--train-image-dir", str(images), "--val-image-dir", str(images), *tiny_args(tmp_path / "run")]
    code, _, err = cli(args, capsys)  # it trained on synthetic scenes and exited 0
    assert code == 2 and "`--train-image-dir`" in err and "`--train-json`" in err and "`--data`" in err
    code, _, err = cli([command, "--data", str(images), *tiny_args(tmp_path / "run")], capsys)
    assert code == 2 and "no data.yaml" in err and str(images) in err
    assert not (tmp_path / "run").exists()


def test_out_over_a_run_needs_resume_or_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--train-images", "16", "--val-images", "4", *tiny_args(tmp_path / "run")]
    assert cli(["train", *common], capsys)[0] == 0
    checkpoint = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    code, _, err = cli(["train", "--seed", "1", *common], capsys)
    assert code == 2 and "`--out`" in err and "`--resume`" in err and "`--overwrite`" in err
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == checkpoint  # untouched
    code, _, err = cli(["train", "--seed", "1", "--overwrite", "--resume", *common], capsys)
    assert code == 2 and "`--overwrite`" in err
    assert cli(["train", "--seed", "1", "--overwrite", *common], capsys)[0] == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]["seed"] == 1
    # an interrupted run (a checkpoint, no results) is protected the same way
    (tmp_path / "run" / "results.json").unlink()
    assert cli(["train", *common], capsys)[0] == 2


def test_a_run_refused_by_its_checks_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for command in ("train", "compare"):  # the data pass their checks only once built: 12 images < a batch of 16
        code, _, err = cli([command, "--train-images", "12", "--val-images", "4", "--batch-size", "16"], capsys)
        assert code == 2 and "`--batch-size`" in err and "at most 12" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(DetLossError, match="`batch_size`"):  # from Python: the parameter's name
        train(tiny(train_images=12, batch_size=16), tmp_path / "api", progress=False)
    assert not (tmp_path / "api").exists()


def test_progress_in_a_log_is_plain_lines_and_ap_has_one_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from detloss.experiments import progress

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)  # a line per step; the default is every 30 s
    args = ["--train-images", "16", "--val-images", "4", "--image-size", "32", "--batch-size", "8", "--width", "8"]
    code, out, err = cli(["train", *args, "--steps", "3", "--out", str(tmp_path / "t")], capsys)  # not a terminal
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("train ciou/binary_cross_entropy: ")]
    assert [line.split(": ")[1].split(",")[0] for line in lines] == ["1/3 (33%)", "2/3 (67%)", "3/3 (100%)"]
    assert "loss " in lines[-1] and "━" not in out and "…" not in out
    metrics = json.loads((tmp_path / "t" / "results.json").read_text())["metrics"]  # 0-1, as before
    printed = next(line for line in out.splitlines() if line.startswith("AP "))
    ap, ap50, ap75 = (100 * metrics[k] for k in ("AP", "AP50", "AP75"))
    assert printed == f"AP {ap:.2f}  AP50 {ap50:.2f}  AP75 {ap75:.2f}  (%)"
    assert "AP (%)" in (tmp_path / "t" / "report.md").read_text()

    code, out, err = cli(["compare", "--box-loss", "iou", "--seeds", "1", *args, "--steps", "2", "--out",
                          str(tmp_path / "c")], capsys)
    assert code == 0, err
    ap = json.loads((tmp_path / "c" / "results.json").read_text())["rows"][0]["AP"]
    assert f"AP {100 * ap:.2f} (%)" in out
    table = (tmp_path / "c" / "table.md").read_text()
    assert "±" not in table and f"| {100 * ap:.2f} |" in table  # one seed: the value, no "± 0.00"
    assert "One seed" in (tmp_path / "c" / "report.md").read_text()

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
    assert code.value.code == 2 and "box_loss" in capsys.readouterr().err
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

    from detloss import cli
    from detloss.detection.yolo_loss import resolve_loss_name

    defaults = TrainConfig()
    for command in (cli.train, cli.compare):
        for name, param in inspect.signature(command).parameters.items():
            if not hasattr(defaults, name) or param.default is None or name in ("box_loss", "obj_loss", "steps"):
                continue
            expected = getattr(defaults, name)
            value = resolve_loss_name(param.default, name) if name.endswith("_loss") else param.default
            assert value == expected, (command.__name__, name)
    train_params = inspect.signature(cli.train).parameters
    assert resolve_loss_name(train_params["obj_loss"].default, "obj_loss") == defaults.obj_loss
    assert train_params["box_loss"].default == defaults.box_loss
    assert train_params["steps"].default is None  # None: TrainConfig's steps

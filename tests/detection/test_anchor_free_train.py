"""The anchor-free head end to end: a short run learns, is saved, evaluated again and resumed; compare
varies assigners, class losses and DFL; configurations of the YOLOv3 head read as before."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from detloss import DetLossError
from detloss.cli import main
from detloss.detection import compare as compare_module
from detloss.detection.compare import compare
from detloss.detection.options import TrainConfig, build_datasets
from detloss.detection.train import build_model, evaluate_model, load_checkpoint, train
from tests.detection.test_train import Stop
from tests.detection.test_train import tiny as yolov3_tiny


def tiny(**kw: object) -> TrainConfig:
    """The tiny run of the YOLOv3 head's tests, with the anchor-free head."""
    return yolov3_tiny(head="anchor-free", **kw)


def test_short_run_lowers_the_loss_and_the_saved_run_evaluates_and_resumes(tmp_path: Path) -> None:
    result = train(tiny(), tmp_path / "full", progress=False)
    assert (result["head"], result["assigner"], result["dfl"]) == ("anchor-free", "tal", True)
    assert result["losses"]["cls_loss"] == "binary_cross_entropy" and "obj_loss" not in result["losses"]
    assert result["anchors"] is None and result["steps"] == 30
    rows = (tmp_path / "full" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,box,cls,dfl")
    history = [dict(zip(rows[0].split(","), map(float, r.split(",")))) for r in rows[1:]]
    for record in history:
        assert all(torch.isfinite(torch.tensor(v)) for v in record.values())
    losses = [r["loss"] for r in history]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5  # measured: 8.6 vs 10.8
    assert history[-1]["dfl"] > 0

    # the saved run: its checkpoint evaluates to the metrics it reported
    state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    config = TrainConfig.from_dict(state["config"])
    train_set, val_set = build_datasets(config)
    model = build_model(config, train_set)
    model.load_state_dict(state["model"])
    metrics, detections, _ = evaluate_model(model, val_set, config)
    assert metrics == result["metrics_by_nms"] and len(detections) == len(val_set)

    # cut after step 17, resumed from step 10: the weights of the uninterrupted run
    def stop(step: int, record: dict) -> None:
        if step == 17:
            raise Stop

    with pytest.raises(Stop):
        train(tiny(), tmp_path / "cut", progress=False, on_step=stop)
    resumed = train(None, tmp_path / "cut", resume=True, progress=False)
    cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for name, value in state["model"].items():
        torch.testing.assert_close(cut["model"][name], value, msg=name)
    assert resumed["metrics"] == result["metrics"]
    with pytest.raises(DetLossError, match="settings differ"):
        train(tiny(assigner="atss"), tmp_path / "cut", resume=True, progress=False)


def test_cli_train_with_another_assigner_and_no_dfl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--image-size", "32", "--train-images", "16", "--val-images", "4", "--batch-size", "8", "--width", "8",
            "--steps", "3", "--no-progress"]
    with pytest.raises(SystemExit) as code:
        main(["train", "--head", "anchor-free", "--assigner", "simota", "--no-dfl", "--cls-loss", "vfl",
              "--out", str(tmp_path / "t"), *args])
    assert code.value.code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert (results["head"], results["assigner"], results["dfl"]) == ("anchor-free", "simota", False)
    assert results["losses"]["cls_loss"] == "varifocal" and results["losses"]["cls_weight"] == 0.5
    assert "assigner `simota`" in (tmp_path / "t" / "report.md").read_text()
    # a setting of the other head is refused before a folder is made, naming the option as typed
    for bad, flag in ((["--head", "anchor-free", "--obj-loss", "focal"], "`--obj-loss`"),
                      (["--assigner", "tal"], "`--assigner`"), (["--no-dfl"], "`--dfl`"),
                      (["--head", "anchor-free", "--box-loss", "l2"], "`--box-loss`"), (["--head", "ssd"], "`--head`")):
        with pytest.raises(SystemExit) as code:
            main(["train", *bad, "--out", str(tmp_path / "u"), *args])
        assert code.value.code == 2 and flag in capsys.readouterr().err, bad
    assert not (tmp_path / "u").exists()


def test_compare_varies_class_losses_dfl_and_assigners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tiny(train_images=16, val_images=4, steps=2, warmup_steps=1)
    result = compare(["ciou"], None, [1], base, tmp_path / "c", cls_losses=["vfl"], dfl=[True, False],
                     assigners=["tal", "atss"], progress=False)
    assert len(result["rows"]) == 2 * 1 * 2 * 2  # assigners x class losses x DFL x (NMS, DIoU-NMS)
    first = result["rows"][0]
    assert {k: first[k] for k in ("head", "assigner", "box_loss", "obj_loss", "cls_loss", "dfl", "seed")} == {
        "head": "anchor-free", "assigner": "tal", "box_loss": "ciou", "obj_loss": None, "cls_loss": "varifocal",
        "dfl": True, "seed": 1,
    }
    settings = [(s["assigner"], s["cls_loss"], s["dfl"]) for s in result["summary"] if s["nms"] == "nms"]
    assert settings == [("tal", "varifocal", True), ("tal", "varifocal", False),
                        ("atss", "varifocal", True), ("atss", "varifocal", False)]
    run = tmp_path / "c" / "runs" / "anchor-free-atss-ciou-varifocal-nodfl-seed1"
    saved = json.loads((run / "results.json").read_text())
    assert (saved["head"], saved["assigner"], saved["dfl"]) == ("anchor-free", "atss", False)
    table = (tmp_path / "c" / "table.md").read_text()
    assert table.startswith("| assigner | box loss | cls loss | DFL | NMS |")
    assert "| atss | ciou | vfl | off | DIoU-NMS |" in table

    def no_training(*args: object, **kw: object) -> None:
        raise AssertionError("a finished setting was trained again")

    monkeypatch.setattr(compare_module, "train", no_training)
    again = compare(["ciou"], None, [1], base, tmp_path / "c", cls_losses=["vfl"], dfl=[True, False],
                    assigners=["tal", "atss"], progress=False)
    assert again["rows"] == result["rows"]
    with pytest.raises(DetLossError, match="obj_loss"):
        compare(["ciou"], ["bce"], [1], base, tmp_path / "d", progress=False)
    with pytest.raises(DetLossError, match="cls_loss"):  # the YOLOv3 head: one class loss for every model
        compare(["ciou"], ["bce"], [1], TrainConfig(), tmp_path / "e", cls_losses=["bce", "focal"], progress=False)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_cli_compare_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--image-size", "32", "--train-images", "16", "--val-images", "4", "--batch-size", "8", "--width", "8",
            "--steps", "1", "--seeds", "1", "--no-progress", "--out", str(tmp_path / "c")]
    with pytest.raises(SystemExit) as code:
        main(["compare", "--head", "anchor-free", "--cls-loss", "focal,qfl", "--dfl", "off", "--cls-weight", "1.0",
              "--box-weight", "2", *args])
    assert code.value.code == 0, capsys.readouterr().err
    payload = json.loads((tmp_path / "c" / "results.json").read_text())
    assert (payload["config"]["cls_weight"], payload["config"]["box_weight"]) == (1.0, 2.0)
    rows = payload["rows"]
    assert [(r["cls_loss"], r["dfl"], r["assigner"]) for r in rows if r["nms"] == "nms"] == [
        ("sigmoid_focal", False, "tal"), ("quality_focal", False, "tal")]
    for bad, flag in ((["--dfl", "maybe"], "`--dfl`"), (["--assigner", "tal,nope"], "`--assigner`")):
        with pytest.raises(SystemExit) as code:
            main(["compare", "--head", "anchor-free", *bad, *args[:-1], str(tmp_path / "x")])
        assert code.value.code == 2 and flag in capsys.readouterr().err, bad
    assert not (tmp_path / "x").exists()


def test_a_configuration_saved_before_the_anchor_free_head_reads_as_the_same_yolov3_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = asdict(TrainConfig())
    old = {k: v for k, v in new.items() if k not in ("head", "assigner", "dfl", "dfl_weight", "reg_max")}
    assert asdict(TrainConfig.from_dict(old)) == new
    assert (new["obj_loss"], new["box_weight"], new["obj_weight"], new["cls_weight"]) == (
        "binary_cross_entropy", 5.0, 1.0, 1.0)  # the values these settings always had
    # a compare folder written then is continued, not refused as "other settings"
    base = TrainConfig(image_size=32, train_images=16, val_images=4, batch_size=8, width=8, steps=1, warmup_steps=1)
    first = compare(["iou"], ["bce"], [0], base, tmp_path / "c", progress=False)
    results = tmp_path / "c" / "runs" / "iou-binary_cross_entropy-seed0" / "results.json"
    saved = json.loads(results.read_text())
    for key in ("head", "assigner", "dfl", "dfl_weight", "reg_max"):
        del saved["config"][key]
    results.write_text(json.dumps(saved))

    def no_training(*args: object, **kw: object) -> None:
        raise AssertionError("a finished setting was trained again")

    monkeypatch.setattr(compare_module, "train", no_training)
    again = compare(["iou"], ["bce"], [0], base, tmp_path / "c", progress=False)
    assert again["rows"] == first["rows"]
    saved["config"]["box_weight"] = 2.0  # but a setting that differs still is
    results.write_text(json.dumps(saved))
    with pytest.raises(DetLossError, match="other settings"):
        compare(["iou"], ["bce"], [0], base, tmp_path / "c", progress=False)


def test_head_settings_are_checked_when_the_configuration_is_made() -> None:
    assert TrainConfig(head="anchor-free").weights() == {"box_weight": 7.5, "cls_weight": 0.5, "dfl_weight": 1.5}
    assert TrainConfig().weights() == {"box_weight": 5.0, "obj_weight": 1.0, "cls_weight": 1.0}
    for kw, name in (({"head": "anchor-free", "obj_loss": "bce"}, "obj_loss"),
                     ({"head": "anchor-free", "obj_weight": 1.0}, "obj_weight"),
                     ({"head": "anchor-free", "obj_options": {"gamma": 1.0}}, "obj_options"),
                     ({"head": "anchor-free", "assigner": "yolov3"}, "assigner"),
                     ({"head": "anchor-free", "reg_max": 0}, "reg_max"),
                     ({"head": "anchor-free", "dfl": "yes"}, "dfl"),
                     ({"head": "anchor-free", "box_loss": "smooth_l1"}, "box_loss"),
                     ({"head": "anchor-free", "dfl_weight": -1.0}, "dfl_weight"),
                     ({"dfl": True}, "dfl"), ({"reg_max": 8}, "reg_max"), ({"assigner": "tal"}, "assigner"),
                     ({"head": "fcos"}, "head")):
        with pytest.raises(DetLossError, match=f"`{name}`"):
            TrainConfig(**kw)

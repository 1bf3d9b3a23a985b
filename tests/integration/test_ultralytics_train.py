"""One real ultralytics training epoch with detloss's Wise-IoU, offline, on exported synthetic scenes."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import INSTALL_HINT

pytest.importorskip("ultralytics", reason=f"ultralytics {INSTALL_HINT}")

import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import load_checkpoint

import detloss.nn
from detloss.detection.data import SyntheticScenes
from detloss.integrations.ultralytics import STATE_PREFIX, DetlossTrainer, Losses

STATE = f"{STATE_PREFIX}box_running_iou_mean"
TRAIN_IMAGES, VAL_IMAGES, BATCH = 32, 8, 8
#: Offline and quiet: no plots (no font download), no AMP check (it would fetch yolo26n.pt), CPU.
SETTINGS = dict(epochs=1, imgsz=64, batch=BATCH, device="cpu", amp=False, plots=False, workers=0, verbose=False)


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic-yolo")
    SyntheticScenes(TRAIN_IMAGES, image_size=64, split="train").export(folder, "yolo")
    return SyntheticScenes(VAL_IMAGES, image_size=64, split="val").export(folder, "yolo").path


@pytest.fixture(scope="module")
def trained(data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train once; count every call of detloss's Wise-IoU, in training and in eval mode."""
    calls: Counter[str] = Counter()
    original = detloss.nn.WiseIoUState.compute

    def counted(self: detloss.nn.WiseIoUState, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls["train" if self.training else "eval"] += 1
        return original(self, *args, **kwargs)

    project = tmp_path_factory.mktemp("runs")
    model = YOLO("yolo11n.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detloss.nn.WiseIoUState, "compute", counted)
        model.train(trainer=DetlossTrainer, data=str(data_yaml), project=str(project), name="wiou", **SETTINGS)
    return {"model": model, "trainer": model.trainer, "calls": calls, "save_dir": Path(model.trainer.save_dir)}


def test_default_trainer_is_wise_iou_v3() -> None:
    assert DetlossTrainer.losses == Losses("wiou")
    assert DetlossTrainer.losses.box_module().options["version"] == "v3"


def test_one_epoch_finishes_with_finite_losses(trained: dict[str, Any]) -> None:
    with open(trained["save_dir"] / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    losses = {k.strip(): float(v) for k, v in rows[0].items() if "loss" in k}
    assert set(losses) >= {"train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss"}
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses


def test_detloss_computed_every_box_term(trained: dict[str, Any]) -> None:
    """One training call per batch (the running mean moves), one eval call per validation batch."""
    train_batches = math.ceil(TRAIN_IMAGES / BATCH)
    val_batches = math.ceil(VAL_IMAGES / (2 * BATCH))  # ultralytics validates with twice the batch
    assert trained["calls"] == Counter(train=train_batches, eval=val_batches)


def test_running_mean_is_saved_in_the_checkpoint(trained: dict[str, Any]) -> None:
    trainer = trained["trainer"]
    live = getattr(trainer.model, STATE)
    assert 0.0 < float(live) <= 1.0
    assert torch.equal(getattr(trainer.ema.ema, STATE).float(), live)  # the EMA copy holds the live value
    for name in ("last.pt", "best.pt"):
        saved, _ = load_checkpoint(trained["save_dir"] / "weights" / name)
        assert math.isclose(float(getattr(saved, STATE)), float(live), rel_tol=1e-3)  # checkpoints are half


def test_a_model_from_the_checkpoint_starts_from_its_running_mean(trained: dict[str, Any]) -> None:
    """resume and fine-tuning build the model with get_model(weights=...): the state comes along."""
    saved, _ = load_checkpoint(trained["save_dir"] / "weights" / "last.pt")
    model = trained["trainer"].get_model(cfg="yolo11n.yaml", weights=saved, verbose=False)
    assert torch.equal(getattr(model, STATE), getattr(saved, STATE).float())
    fresh = trained["trainer"].get_model(cfg="yolo11n.yaml", weights=None, verbose=False)
    assert not hasattr(fresh, STATE)  # registered when the criterion is built


def test_the_saved_model_needs_no_detloss(trained: dict[str, Any]) -> None:
    """The checkpoint holds plain ultralytics modules and tensors: it loads where detloss is absent."""
    script = (
        "import sys; sys.modules['detloss'] = None\n"  # importing detloss now fails
        "from ultralytics import YOLO\n"
        f"model = YOLO({str(trained['save_dir'] / 'weights' / 'best.pt')!r})\n"
        f"print(float(getattr(model.model, {STATE!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0.0 < float(done.stdout.split()[-1]) <= 1.0


def _env() -> dict[str, str]:
    src = str(Path(detloss.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_a_ddp_worker_rebuilds_the_configured_trainer(data_yaml: Path, tmp_path: Path) -> None:
    """ultralytics starts DDP workers from a generated script that unpickles the trainer's class and
    trains: run that script (one CPU process) and check the worker trained with detloss's losses."""
    from ultralytics.utils.dist import generate_ddp_file

    trainer_class = DetlossTrainer.configure("wiou", momentum=0.5)
    overrides = dict(SETTINGS, model="yolo11n.yaml", data=str(data_yaml), project=str(tmp_path), name="ddp")
    trainer = trainer_class(overrides=overrides)
    script = generate_ddp_file(trainer)
    try:
        done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600, env=_env())
    finally:
        os.remove(script)
        Path(script).with_suffix(".pt").unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr[-3000:]
    saved, _ = load_checkpoint(Path(trainer.save_dir) / "weights" / "last.pt")
    assert 0.0 < float(getattr(saved, STATE)) <= 1.0  # only detloss's Wise-IoU writes this buffer


def test_configured_trainer_pickles_with_its_losses() -> None:
    cloudpickle = pytest.importorskip("cloudpickle", reason=f"cloudpickle (ultralytics' DDP) {INSTALL_HINT}")
    trainer_class = DetlossTrainer.configure("siou", cls_loss="varifocal", theta=3.0, cls_options={"gamma": 1.5})
    check = (
        "import pickle, sys; cls = pickle.loads(sys.stdin.buffer.read()); "
        "print(cls.losses.box_loss, cls.losses.box_options, cls.losses.cls_loss, cls.losses.cls_options)"
    )
    pickled = cloudpickle.dumps(trainer_class)
    done = subprocess.run([sys.executable, "-c", check], input=pickled, capture_output=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["siou", "{'theta':", "3.0}", "varifocal", "{'gamma':", "1.5}"]

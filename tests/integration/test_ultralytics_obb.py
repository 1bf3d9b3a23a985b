"""detloss's rotated losses in ultralytics' OBB criterion and against its ``probiou`` (no weights).

ultralytics' ``probiou(obb1, obb2, eps=e)`` is ``1 - sqrt(1 - exp(-clamp(B_e, e, 100)) + e)``,
``B_e`` the Bhattacharyya distance of the boxes as Gaussians (``Sigma = R diag(w^2, h^2) R^T / 12``)
with ``e`` added to its denominators: detloss's ``probiou_loss(mode="l1")`` is
``sqrt(1 - exp(-B))`` with the sides as ``w + eps`` and neither clamp nor ``+ e``. The tests hold
the two to that relation, and to equality where the ``e``-terms vanish.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import INSTALL_HINT

pytest.importorskip("ultralytics", reason=f"ultralytics {INSTALL_HINT}")

import numpy as np
import torch
import ultralytics.data.utils
import ultralytics.nn.tasks
from PIL import Image
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel, OBBModel
from ultralytics.utils.loss import BboxLoss, RotatedBboxLoss
from ultralytics.utils.metrics import probiou

from detloss import DetLossError
from detloss import functional as F
from detloss.integrations import ultralytics as dlu
from detloss.testing import random_rotated_boxes
from tests.integration.test_ultralytics_patch import _spy

IMGSZ = (96, 128)  # height, width


def _model(cfg: str = "yolo11n-obb.yaml", cls: type = OBBModel) -> Any:
    torch.manual_seed(0)
    model = cls(cfg, nc=4, verbose=False)
    model.args = get_cfg()  # ultralytics' default gains: box 7.5, cls 0.5, dfl 1.5, angle 1.0
    return model.train()


def _batch(oriented: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    n = 8
    centre = 0.25 + 0.5 * torch.rand(n, 2, generator=g)
    size = 0.15 + 0.3 * torch.rand(n, 2, generator=g)
    boxes = torch.cat([centre, size], 1)  # normalised by the image's width and height, as ultralytics' batch
    if oriented:
        boxes = torch.cat([boxes, (torch.rand(n, 1, generator=g) - 0.5) * 3.0], 1)
    return {
        "img": torch.rand(2, 3, *IMGSZ, generator=g),
        "batch_idx": torch.arange(2).repeat_interleave(n // 2).float(),
        "cls": torch.randint(0, 4, (n, 1), generator=g).float(),
        "bboxes": boxes,
    }


@pytest.fixture(scope="module")
def model() -> OBBModel:
    return _model()


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    return _batch()


def _loss(model: Any, batch: dict[str, torch.Tensor], floor: float | None = None, **patch_args: Any) -> tuple:
    """(loss items, gradient of the total w.r.t. the head's outputs), on a fresh criterion."""
    model.criterion = model.init_criterion()
    if floor is not None:
        model.criterion.bbox_loss.floor = floor
    preds = model(batch["img"])
    outputs = (preds["boxes"], preds["scores"], preds["angle"])
    with dlu.patch(**patch_args) if patch_args else contextlib.nullcontext():
        total, items = model.loss(batch, preds)
    grads = torch.autograd.grad(total.sum(), outputs)
    return items, torch.cat([g.flatten() for g in grads])


def _pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotated pairs, most of them overlapping: targets, then predictions near them."""
    g = torch.Generator().manual_seed(seed)
    target = random_rotated_boxes(n, generator=g)
    noise = torch.rand(n, 5, generator=g, dtype=torch.float64) * 2 - 1
    pred = target.clone()
    pred[:, :2] += noise[:, :2] * target[:, 2:4] * 0.5
    pred[:, 2:4] *= torch.exp(0.5 * noise[:, 2:4])
    pred[:, 4] += noise[:, 4]
    return target, pred


def test_probiou_equals_one_minus_ultralytics_probiou_without_its_eps() -> None:
    target, pred = _pairs(5000, 0)
    theirs = 1 - probiou(target, pred, eps=1e-15).squeeze(-1)
    ours = F.probiou_loss(pred, target, eps=1e-15, reduction="none")
    assert bool(torch.isfinite(theirs).all())
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probiou_relation_to_ultralytics_at_its_default_eps(dtype: torch.dtype) -> None:
    """``1 - probiou = sqrt(1 - exp(-clamp(B, eps, 100)) + eps)``, B from detloss's ``"l2"``."""
    target, pred = (b.to(dtype) for b in _pairs(5000, 1))
    eps = 1e-7
    theirs = 1 - probiou(target, pred, eps=eps).squeeze(-1)
    distance = F.probiou_loss(pred, target, mode="l2", reduction="none").double()
    relation = torch.sqrt(1 - torch.exp(-distance.clamp(eps, 100.0)) + eps)
    tolerance = 1e-5 if dtype == torch.float64 else 1e-4  # ultralytics' eps in denominators, w + eps
    torch.testing.assert_close(theirs.double(), relation, rtol=tolerance, atol=tolerance)
    # without the clamp and the eps, identical boxes: detloss 0 (to rounding); ultralytics
    # sqrt(1 - exp(-eps) + eps) = sqrt(2 eps), a floor of 4.5e-4 under its loss
    same = F.probiou_loss(target, target.clone(), reduction="none")
    assert float(same.abs().max()) <= 1e-6
    assert math.isclose(float(1 - probiou(target[:1], target[:1]).squeeze()), math.sqrt(2 * eps), rel_tol=0.05)


def test_where_ultralytics_probiou_is_not_finite_detloss_is() -> None:
    """Pairs of zero-width boxes (both covariances singular: the square root of the product of
    their determinants at 0) give ultralytics NaN or infinite gradients in float32, boxes
    with sides of 1e15 a NaN value (the determinants overflow)."""
    g = torch.Generator().manual_seed(4)
    target, pred = (b.float() for b in _pairs(4000, 2))
    pred[:, 2], target[:, 2] = 0.0, 0.0
    pred.requires_grad_(True)
    theirs = 1 - probiou(target, pred).squeeze(-1)
    (their_grad,) = torch.autograd.grad(theirs.sum(), pred)
    assert not bool(torch.isfinite(their_grad).all())  # ultralytics: NaN / inf gradient rows
    ours = F.probiou_loss(pred, target, reduction="none")
    (our_grad,) = torch.autograd.grad(ours.sum(), pred)
    assert bool(torch.isfinite(ours).all()) and bool(torch.isfinite(our_grad).all())

    huge = target.clone()
    huge[:, :4] *= 1e15
    moved = huge + torch.rand(huge.shape, generator=g) * torch.tensor([1e15, 1e15, 0, 0, 0.1])
    assert bool(torch.isnan(probiou(huge, moved)).all())  # (w^2 / 12)^2 overflows float32
    assert bool(torch.isfinite(F.probiou_loss(moved, huge, reduction="none")).all())


def test_patched_probiou_equals_ultralytics_term_without_its_floor(
    model: OBBModel, batch: dict[str, torch.Tensor]
) -> None:
    expected, expected_grad = _loss(model, batch, floor=0.0)
    items, grad = _loss(model, batch, box_loss="probiou", eps=1e-9)
    assert set(items) == {"box_loss", "cls_loss", "dfl_loss", "angle_loss"}
    assert float(items["box_loss"]) > 0
    for key in items:
        assert abs(float(items[key] - expected[key])) <= 1e-5 * float(expected[key]), (key, items, expected)
    for key in ("cls_loss", "dfl_loss", "angle_loss"):
        assert torch.equal(items[key], expected[key])
    assert float((grad - expected_grad).abs().max() / expected_grad.abs().max()) < 1e-4
    # ultralytics' default adds floor = 0.01 to the variances (grid units): a different term
    with_floor, _ = _loss(model, batch)
    assert float(abs(with_floor["box_loss"] - expected["box_loss"])) > 1e-6


@pytest.mark.parametrize("box_loss", dlu.ROTATED_BOX_LOSSES)
def test_rotated_box_term_is_detloss_loss_on_pixel_boxes(
    model: OBBModel, batch: dict[str, torch.Tensor], box_loss: str
) -> None:
    expected_items, _ = _loss(model, batch)
    with _spy(dlu.RotatedBoxTerm) as seen:
        items, grad = _loss(model, batch, box_loss=box_loss)
    _, pred, _, target, scores, scores_sum, fg, _, stride = seen["args"]
    scale = torch.cat([stride.expand(-1, 4), torch.ones_like(stride)], -1)  # angle in radians, unscaled
    pixels_pred, pixels_target = (pred * scale)[fg].double(), (target * scale)[fg].double()
    weight = scores[fg].sum(-1).double()
    expected = getattr(F, f"{box_loss}_loss")(pixels_pred, pixels_target, weight=weight, reduction="sum")
    expected = expected / scores_sum * model.args.box
    assert abs(float(items["box_loss"]) - float(expected)) <= 1e-5 * float(expected)
    assert bool(torch.isfinite(grad).all())
    assert all(torch.equal(items[k], expected_items[k]) for k in ("cls_loss", "dfl_loss", "angle_loss"))


def test_an_axis_aligned_loss_for_an_obb_model_names_box_loss(model: OBBModel, batch: dict[str, torch.Tensor]) -> None:
    model.criterion = None
    with dlu.patch("ciou"), pytest.raises(DetLossError, match=r"`box_loss` expected a loss of the boxes of v8OBBLoss"):
        model.loss(batch)
    assert type(model.criterion.bbox_loss) is RotatedBboxLoss


def test_a_rotated_loss_for_a_detection_model_names_box_loss() -> None:
    model = _model("yolo11n.yaml", DetectionModel)
    with dlu.patch("kld"), pytest.raises(DetLossError, match=r"`box_loss` expected a loss of the boxes of v8Det"):
        model.loss(_batch(oriented=False))
    assert type(model.criterion.bbox_loss) is BboxLoss


@pytest.mark.parametrize(
    ("options", "name"), [({"angle_unit": "deg"}, "angle_unit"), ({"box_format": "xyxyxyxy"}, "box_format")]
)
def test_options_the_adapter_sets_are_refused(options: dict[str, str], name: str) -> None:
    with pytest.raises(DetLossError, match=f"`{name}`"):
        dlu.patch("probiou", **options)


def test_rotated_options_are_checked_when_patching() -> None:
    with pytest.raises(DetLossError, match="`tau`"):
        dlu.patch("gwd", tau=-1.0)
    assert dlu.Losses("kfiou", {"mode": "linear"}).box_module().options["mode"] == "linear"


# ---- one tiny OBB training on a synthetic DOTA-format dataset (YOLO OBB labels)
SIZE, TRAIN_IMAGES, VAL_IMAGES, BATCH = 64, 8, 4, 4
SETTINGS = dict(epochs=1, imgsz=SIZE, batch=BATCH, device="cpu", amp=False, plots=False, workers=0, verbose=False)


def _write_obb_dataset(folder: Path) -> Path:
    """Bright rotated rectangles on dark noise; labels ``class x1 y1 x2 y2 x3 y3 x4 y4``, normalised."""
    import cv2

    g = np.random.default_rng(5)
    for split, count in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for i in range(count):
            image = (g.random((SIZE, SIZE, 3)) * 60).astype(np.uint8)
            lines = []
            for _ in range(2):
                centre, sides = g.uniform(20, 44, 2), g.uniform(10, 24, 2)
                corners = cv2.boxPoints((tuple(centre), tuple(sides), float(g.uniform(0, 90))))
                cv2.fillPoly(image, [corners.round().astype(np.int32)], (230, 230, 230))
                cls = int(g.integers(0, 2))
                lines.append(" ".join([str(cls), *(f"{v / SIZE:.6f}" for v in corners.flatten())]))
            Image.fromarray(image).save(folder / "images" / split / f"{i}.png")
            (folder / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = folder / "data.yaml"
    data.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n  0: a\n  1: b\n")
    return data


def test_tiny_obb_training_with_probiou_is_finite(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()
    original = dlu.RotatedBoxTerm.forward

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[type(self.loss).__name__] += 1
        return original(self, *args, **kwargs)

    model = YOLO("yolo11n-obb.yaml")
    with pytest.MonkeyPatch.context() as mp, dlu.patch("probiou"):
        mp.setattr(dlu.RotatedBoxTerm, "forward", counted)
        # ultralytics looks for its plotting font whenever it reads a dataset and downloads it if
        # missing; with plots=False nothing draws with it
        mp.setattr(ultralytics.data.utils, "check_font", lambda *args, **kwargs: None)
        model.train(data=str(_write_obb_dataset(tmp_path / "obb")), project=str(tmp_path), name="run", **SETTINGS)
    metrics = model.trainer.metrics
    losses = {k: float(v) for k, v in model.trainer.label_loss_items(model.trainer.tloss, prefix="train").items()}
    assert set(losses) == {"train/box_loss", "train/cls_loss", "train/dfl_loss", "train/angle_loss"}
    assert all(math.isfinite(v) for v in losses.values()) and losses["train/box_loss"] > 0, losses
    assert all(math.isfinite(float(v)) for k, v in metrics.items() if "loss" in k), metrics
    train_batches = TRAIN_IMAGES // BATCH
    assert calls["ProbIoULoss"] >= train_batches and set(calls) == {"ProbIoULoss"}, calls  # (and in val)


def test_bench_times_ultralytics_probiou_as_the_peer_of_probiou() -> None:
    from detloss.experiments.bench import bench_inputs, peers

    pred, target = bench_inputs("probiou", 2000, torch.device("cpu"))
    peer = peers("probiou")["ultralytics"]
    # the same loss: 1 - probiou is detloss's ProbIoU up to ultralytics' eps terms (sqrt(2 eps) at most)
    assert abs(float(peer(pred, target)) - float(F.probiou_loss(pred, target))) < 5e-4
    assert set(peers("kld")) == set()


def test_detloss_obb_trainer_trains_with_the_configured_rotated_loss(tmp_path: Path) -> None:
    """``model.train(trainer=DetlossOBBTrainer.configure("kld"))``: ultralytics' OBB trainer
    with detloss's KLD as the box term (no explicit patch around ``train``), undone after."""
    calls: Counter[str] = Counter()
    original = dlu.RotatedBoxTerm.forward

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[type(self.loss).__name__] += 1
        return original(self, *args, **kwargs)

    assert dlu.DetlossOBBTrainer.losses == dlu.Losses("probiou")
    trainer = dlu.DetlossOBBTrainer.configure("kld", fun="sqrt", tau=2.0)
    assert trainer.losses == dlu.Losses("kld", {"fun": "sqrt", "tau": 2.0})
    model = YOLO("yolo11n-obb.yaml")
    original_loss = ultralytics.nn.tasks.BaseModel.loss
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dlu.RotatedBoxTerm, "forward", counted)
        mp.setattr(ultralytics.data.utils, "check_font", lambda *args, **kwargs: None)
        model.train(
            trainer=trainer,
            data=str(_write_obb_dataset(tmp_path / "obb")),
            project=str(tmp_path),
            name="kld",
            **SETTINGS,
        )
    assert isinstance(model.trainer, dlu.DetlossOBBTrainer)
    losses = {k: float(v) for k, v in model.trainer.label_loss_items(model.trainer.tloss, prefix="train").items()}
    assert all(math.isfinite(v) for v in losses.values()) and losses["train/box_loss"] > 0, losses
    assert calls["KLDLoss"] >= TRAIN_IMAGES // BATCH and set(calls) == {"KLDLoss"}, calls
    assert ultralytics.nn.tasks.BaseModel.loss is original_loss  # the trainer's patch is undone after training

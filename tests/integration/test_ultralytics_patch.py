"""detloss.integrations.ultralytics.patch against the real ultralytics criterion (no weights, no data)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import pytest

from tests.integration.conftest import INSTALL_HINT

pytest.importorskip("ultralytics", reason=f"ultralytics {INSTALL_HINT}")

import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import BaseModel, DetectionModel, OBBModel, PoseModel, SegmentationModel
from ultralytics.utils.loss import BboxLoss, RotatedBboxLoss

from detloss import DetLossError
from detloss import functional as F
from detloss.boxes import aligned_iou
from detloss.integrations import ultralytics as dlu

IMGSZ = (128, 96)  # height, width: not square, so that mpdiou's (width, height) is checked


def _model(cfg: str = "yolo11n.yaml", cls: type = DetectionModel, nc: int = 4) -> DetectionModel:
    torch.manual_seed(0)
    model = cls(cfg, nc=nc, verbose=False)
    model.args = get_cfg()  # ultralytics' default gains: box 7.5, cls 0.5, dfl 1.5
    return model.train()


def _batch(boxes_per_image: int = 3, images: int = 2, oriented: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = boxes_per_image * images
    centre = 0.2 + 0.6 * torch.rand(n, 2, generator=g)
    size = 0.1 + 0.3 * torch.rand(n, 2, generator=g)
    boxes = torch.cat([centre, size], 1)  # normalised cx, cy, w, h (ultralytics' batch layout)
    if oriented:
        boxes = torch.cat([boxes, torch.rand(n, 1, generator=g) - 0.5], 1)
    return {
        "img": torch.rand(images, 3, *IMGSZ, generator=g),
        "batch_idx": torch.arange(images).repeat_interleave(boxes_per_image).float(),
        "cls": torch.randint(0, 4, (n, 1), generator=g).float(),
        "bboxes": boxes,
    }


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return _model()


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    return _batch()


def _loss(model: DetectionModel, batch: dict[str, torch.Tensor], **patch_args: object) -> tuple[dict, torch.Tensor]:
    """(loss items, gradient of the total loss w.r.t. the head's outputs) with a fresh criterion."""
    model.criterion = None
    preds = model(batch["img"])
    outputs = (preds["boxes"], preds["scores"])
    if patch_args:
        with dlu.patch(**patch_args):
            total, items = model.loss(batch, preds)
    else:
        total, items = model.loss(batch, preds)
    grads = torch.autograd.grad(total.sum(), outputs)
    return items, torch.cat([g.flatten() for g in grads])


@contextlib.contextmanager
def _spy(term: type[dlu.BoxTerm] = dlu.BoxTerm) -> Iterator[dict[str, tuple]]:
    """Record the arguments ultralytics passes to the box term (of class ``term``)."""
    seen: dict[str, tuple] = {}
    original = term.forward

    def spy(self: dlu.BoxTerm, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen["args"] = tuple(a.detach().clone() for a in args)
        return original(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(term, "forward", spy)
        yield seen


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_the_batch_has_positives(model: DetectionModel, batch: dict[str, torch.Tensor]) -> None:
    items, _ = _loss(model, batch)
    assert all(float(v) > 0 for v in items.values()), items


def test_ciou_patch_equals_ultralytics_term_by_term(model: DetectionModel, batch: dict[str, torch.Tensor]) -> None:
    expected, expected_grad = _loss(model, batch)
    items, grad = _loss(model, batch, box_loss="ciou")
    assert set(items) == {"box_loss", "cls_loss", "dfl_loss"}
    for key in items:
        assert _rel(items[key], expected[key]) < 1e-5, (key, items[key], expected[key])
    assert torch.equal(items["cls_loss"], expected["cls_loss"]) and torch.equal(items["dfl_loss"], expected["dfl_loss"])
    assert _rel(grad, expected_grad) < 1e-4  # CIoU's gradient too: same alpha held constant, same eps up to 1e-7


def test_giou_changes_the_box_term_only(model: DetectionModel, batch: dict[str, torch.Tensor]) -> None:
    expected, _ = _loss(model, batch)
    items, _ = _loss(model, batch, box_loss="giou")
    assert _rel(items["box_loss"], expected["box_loss"]) > 1e-3
    assert torch.equal(items["cls_loss"], expected["cls_loss"])
    assert torch.equal(items["dfl_loss"], expected["dfl_loss"])


def test_bce_class_term_equals_ultralytics_with_its_class_weights(batch: dict[str, torch.Tensor]) -> None:
    model = _model()
    model.class_weights = torch.tensor([0.5, 1.0, 1.5, 2.0])  # ultralytics multiplies the elementwise class loss
    expected, expected_grad = _loss(model, batch)
    items, grad = _loss(model, batch, box_loss=None, cls_loss="binary_cross_entropy")
    assert torch.equal(items["box_loss"], expected["box_loss"]) and torch.equal(items["dfl_loss"], expected["dfl_loss"])
    assert _rel(items["cls_loss"], expected["cls_loss"]) < 1e-6
    assert _rel(grad, expected_grad) < 1e-5


@pytest.mark.parametrize("cls_loss", ["varifocal", "sigmoid_focal", "quality_focal"])
def test_class_losses_change_the_class_term_only(
    model: DetectionModel, batch: dict[str, torch.Tensor], cls_loss: str
) -> None:
    expected, _ = _loss(model, batch)
    items, grad = _loss(model, batch, box_loss=None, cls_loss=cls_loss)
    assert torch.equal(items["box_loss"], expected["box_loss"]) and torch.equal(items["dfl_loss"], expected["dfl_loss"])
    assert _rel(items["cls_loss"], expected["cls_loss"]) > 1e-3
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("box_loss", dlu.BOX_LOSSES)
def test_box_term_is_detloss_loss_on_pixel_boxes(
    model: DetectionModel, batch: dict[str, torch.Tensor], box_loss: str
) -> None:
    """The box term, rebuilt from the inputs ultralytics gave it: pixels, weights, image size, gain."""
    for name in [n for n, _ in model.named_buffers() if n.startswith(dlu.STATE_PREFIX)]:
        delattr(model, name)  # wiou: no running mean yet, so it normalises by this batch's mean
    with _spy() as seen:
        items, grad = _loss(model, batch, box_loss=box_loss)
    _, pred, _, target, scores, scores_sum, fg, _, stride = seen["args"]
    pixels_pred, pixels_target = (pred * stride)[fg].double(), (target * stride)[fg].double()
    options: dict[str, object] = {"reduction": "sum", "weight": scores[fg].sum(-1).double()}
    if box_loss == "mpdiou":
        height, width = batch["img"].shape[2:]
        options["image_size"] = (width, height)
    expected = getattr(F, f"{box_loss}_loss")(pixels_pred, pixels_target, **options) / scores_sum * model.args.box
    assert abs(float(items["box_loss"]) - float(expected)) <= 1e-5 * float(expected)
    assert bool(torch.isfinite(grad).all())


def test_wiou_state_lives_on_the_model_and_moves_in_training_only(batch: dict[str, torch.Tensor]) -> None:
    model = _model()
    name = f"{dlu.STATE_PREFIX}box_running_iou_mean"
    with _spy() as seen, dlu.patch("wiou", momentum=0.5):
        preds = model(batch["img"])
        model.loss(batch, preds)
        _, pred, _, target, _, _, fg, _, stride = seen["args"]
        first = float((1 - aligned_iou((pred * stride)[fg].double(), (target * stride)[fg].double())).mean())
        state = getattr(model, name)
        assert math.isclose(float(state), first, rel_tol=1e-5)  # the first batch's mean of 1 - IoU
        assert name in model.state_dict()

        model.criterion = None  # ultralytics rebuilds its criterion (resume, EMA copies): the state stays
        model.loss(batch, preds)
        assert math.isclose(float(getattr(model, name)), first, rel_tol=1e-5)  # same batch: 0.5 m + 0.5 m

        copied = copy.deepcopy(model)  # ultralytics' EMA is a deepcopy of the model
        with torch.no_grad():
            getattr(copied, name).fill_(0.25)
        copied.eval()
        copied.loss(batch, preds)  # eval: the copy's own state is used, and not moved
        assert float(getattr(copied, name)) == 0.25
        assert math.isclose(float(getattr(model, name)), first, rel_tol=1e-5)
        model.eval()
        model.loss(batch, preds)
        assert math.isclose(float(getattr(model, name)), first, rel_tol=1e-5)
        model.train()


def test_undo_restores_ultralytics(batch: dict[str, torch.Tensor]) -> None:
    model = _model()
    original = BaseModel.loss
    handle = dlu.patch("siou")
    assert handle.active and BaseModel.loss is not original
    model.loss(batch)
    assert isinstance(model.criterion.bbox_loss, dlu.BoxTerm)
    handle.undo()
    handle.undo()  # twice: nothing
    assert not handle.active and BaseModel.loss is original
    assert type(model.criterion.bbox_loss) is BboxLoss
    assert "undone" in repr(handle)


def test_nested_patches_adapt_with_the_innermost(batch: dict[str, torch.Tensor]) -> None:
    model = _model()
    with dlu.patch("giou") as outer:
        with dlu.patch("eiou"):
            model.loss(batch)
            assert model.criterion.bbox_loss.loss.function is F.eiou_loss
        assert type(model.criterion.bbox_loss) is BboxLoss  # the inner patch's adaptation is undone
        model.loss(batch)
        assert model.criterion.bbox_loss.loss.function is F.giou_loss
        assert outer.active
    assert type(model.criterion.bbox_loss) is BboxLoss


def test_end_to_end_head_keeps_one_state_per_criterion() -> None:
    """yolo26 trains two criteria (one-to-many, one-to-one): each gets its own running mean."""
    model = _model("yolo26n.yaml")
    with dlu.patch("wiou"):
        model.loss(_batch())
    names = sorted(n for n, _ in model.named_buffers() if n.startswith(dlu.STATE_PREFIX))
    assert names == ["detloss_one2many_box_running_iou_mean", "detloss_one2one_box_running_iou_mean"]
    assert all(math.isfinite(float(getattr(model, n))) for n in names)


def test_oriented_boxes_refuse_an_axis_aligned_box_loss_and_take_the_class_loss() -> None:
    """An axis-aligned box loss for an OBB model is an error naming box_loss (it was a warning
    while the OBB term had no adapter); the class term applies to oriented boxes as it is."""
    model = _model("yolo11n-obb.yaml", OBBModel)
    with dlu.patch("wiou", cls_loss="varifocal"), pytest.raises(DetLossError, match="`box_loss`"):
        model.loss(_batch(oriented=True))
    model.criterion = None
    with dlu.patch(None, cls_loss="varifocal"):
        _, items = model.loss(_batch(oriented=True))
        assert type(model.criterion.bbox_loss) is RotatedBboxLoss
        assert isinstance(model.criterion.bce, dlu.ClassTerm)
    assert all(math.isfinite(float(v)) for v in items.values())


@pytest.mark.parametrize(("cfg", "cls"), [("yolo11n-seg.yaml", SegmentationModel), ("yolo11n-pose.yaml", PoseModel)])
def test_segment_and_pose_criteria_get_the_box_term_too(cfg: str, cls: type) -> None:
    model = _model(cfg, cls)
    batch = _batch()
    if cls is SegmentationModel:  # ultralytics' overlapping masks: pixel value = instance number in its image
        batch["masks"] = torch.zeros(2, IMGSZ[0] // 4, IMGSZ[1] // 4)
        batch["masks"][0, 5:15, 5:10], batch["masks"][1, 10:20, 4:12] = 1.0, 2.0
    else:
        batch["keypoints"] = torch.rand(6, 17, 3, generator=torch.Generator().manual_seed(2))
    expected, _ = _loss(model, batch)
    same, _ = _loss(model, batch, box_loss="ciou")
    other, _ = _loss(model, batch, box_loss="giou")
    assert all(abs(float(same[k] - expected[k])) <= 1e-5 * abs(float(expected[k])) for k in expected), same
    assert _rel(other["box_loss"], expected["box_loss"]) > 1e-3
    assert all(torch.equal(other[key], expected[key]) for key in expected if key != "box_loss")

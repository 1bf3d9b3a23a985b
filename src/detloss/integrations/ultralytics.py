"""detloss's box and class losses inside ultralytics' YOLO training.

``patch(box_loss="wiou")`` makes every detection criterion of ultralytics (``v8DetectionLoss``,
the loss of the v8 and 11 detect heads, and of the segment and pose heads built on it) use a
detloss loss of the IoU family for its box term, and optionally a detloss classification loss
for its class term. Nothing else changes: the assigner, the distribution focal loss (DFL) and
ultralytics' normalisation by ``target_scores_sum`` (the sum of the task-aligned target
scores) are ultralytics' own, computed by its own code.

Where the box term lives, as ultralytics computes it: ``BboxLoss.forward`` receives the decoded
boxes ``pred_bboxes`` and the assigned ``target_bboxes`` of every anchor in grid units (pixels
divided by the anchor's stride), the target scores and the foreground mask, and returns
``sum_fg (1 - CIoU) * w / target_scores_sum`` with ``w`` the anchor's target score summed over
classes. The patched term returns ``sum_fg loss(pred, target) * w / target_scores_sum`` for the
chosen detloss loss, on the boxes in pixels (so that ``nwd``'s constant and ``mpdiou``'s image
size are in the units they are defined in; the other losses are scale-invariant). ``mpdiou``
gets the size of the batch's images, ``(width, height)``, on every call. The class term
replaces ``bce``, the elementwise ``BCEWithLogitsLoss`` that ultralytics applies to the logits
and the target scores and then sums and divides by ``target_scores_sum``: the chosen detloss
loss (``varifocal``, ``sigmoid_focal``, ``quality_focal``, ``binary_cross_entropy``) is applied
elementwise to the same logits and target scores, and ultralytics sums and divides as before.

State (Wise-IoU v3's running mean of ``1 - IoU``) lives on the model, as buffers named
``detloss_<role>box_<name>`` (``detloss_box_running_iou_mean``; ``<role>`` is ``one2many_`` or
``one2one_`` for the two criteria of an end-to-end head): ultralytics rebuilds its criterion
(on resume, for its EMA copy), but the model's buffers survive, are copied with the model and,
when :class:`DetlossTrainer` trains, are saved in ``last.pt`` / ``best.pt`` (in half precision,
like every tensor of an ultralytics checkpoint) and restored on resume. The running mean moves
only while the model is in training mode; the EMA copy that ultralytics validates with uses it
unchanged. Each DDP rank keeps its own running mean (as :class:`detloss.nn.WIoULoss` does); rank 0's
is the one saved.

``patch`` changes one method of ultralytics' ``BaseModel`` (``loss``) in this process, until
``undo()``. ``DetlossTrainer`` (``model.train(trainer=DetlossTrainer.configure(...))``) applies
the patch in every process that trains: ultralytics' DDP workers rebuild the trainer from its
class and train again, so they patch themselves; dataloader workers never compute the loss.
Oriented boxes: ``v8OBBLoss`` (the OBB heads) computes its box term in ``RotatedBboxLoss``,
``sum_fg (1 - probiou) * w / target_scores_sum`` on ``xywhr`` boxes (centre, sides, angle in
radians, corners ``c + R(r)(+-w/2, +-h/2)``: detloss's ``cxcywha``). ``patch(box_loss=...)``
with one of :data:`ROTATED_BOX_LOSSES` (``probiou``, ``kld``, ``gwd``, ``kfiou``,
``rotated_iou``) replaces that term the same way, on the boxes in pixels (the angle as it is),
keeping ultralytics' DFL, angle loss and ``target_scores_sum``. ultralytics adds
``RotatedBboxLoss.floor = 0.01`` (squared grid units) to both variances of every box before
its ProbIoU; detloss's ``probiou`` does not (its sides enter as ``w + eps``), so the patched
ProbIoU term equals ultralytics' with ``floor = 0``. A box loss for the other kind of boxes
(an axis-aligned loss for an OBB model, a rotated one for a detect, segment or pose model) is
a :class:`~detloss.DetLossError` naming ``box_loss`` when the criterion is first adapted.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from detloss.errors import DetLossError
from detloss.nn import LossModule
from detloss.registry import LOSSES, get_spec

__all__ = [
    "BOX_LOSSES",
    "BOX_TERMS",
    "CLASS_LOSSES",
    "PENDING_IMAGE_SIZE",
    "ROTATED_BOX_LOSSES",
    "STATE_PREFIX",
    "BoxTerm",
    "ClassTerm",
    "Losses",
    "Patch",
    "RotatedBoxTerm",
    "patch",
]

#: The box losses of axis-aligned boxes (detect, segment and pose criteria): every registry
#: entry that takes pairs of boxes.
BOX_LOSSES: tuple[str, ...] = tuple(sorted(key for key, spec in LOSSES.items() if spec.inputs == "boxes"))
#: The box losses of oriented boxes (the OBB criterion): every entry that takes rotated boxes.
ROTATED_BOX_LOSSES: tuple[str, ...] = tuple(
    sorted(key for key, spec in LOSSES.items() if spec.inputs == "rotated_boxes")
)
#: The class losses the patch can use: binary losses of logits whose target may be a soft score.
CLASS_LOSSES: tuple[str, ...] = ("binary_cross_entropy", "quality_focal", "sigmoid_focal", "varifocal")
#: The ``image_size`` a loss that needs one (``mpdiou``) is built with; :class:`BoxTerm` sets
#: the size of each batch's images, ``(width, height)``, before every call.
PENDING_IMAGE_SIZE = (1.0, 1.0)
#: Prefix of the model buffers that hold the losses' state.
STATE_PREFIX = "detloss_"
#: Options the adapter sets itself, with the reason given when a caller passes one.
_SET_BY_ADAPTER = {
    "reduction": "not given: the adapter sums and divides by ultralytics' target_scores_sum",
    "box_format": "not given: ultralytics' boxes are xyxy (oriented: xywhr, detloss's cxcywha)",
    "angle_unit": "not given: ultralytics' angles are in radians",
    "image_size": "not given: the adapter passes the size of each batch's images",
}


def _options(where: str, name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise DetLossError.bad_argument(where, name, "a mapping of option names to values", repr(options))
    for key, value in options.items():
        if key in _SET_BY_ADAPTER:
            raise DetLossError.bad_argument(where, key, _SET_BY_ADAPTER[key], repr(value))
    return dict(options)


@dataclass(frozen=True)
class Losses:
    """Which detloss losses replace ultralytics' box and class terms, checked when made.

    ``box_loss`` is one of :data:`BOX_LOSSES` (axis-aligned boxes),
    :data:`ROTATED_BOX_LOSSES` (oriented boxes) or ``None`` (keep ultralytics' CIoU / ProbIoU);
    ``cls_loss`` one of :data:`CLASS_LOSSES` or ``None`` (keep its BCE). The options are those
    of the detloss function (``detloss.functional.<name>_loss``) except ``reduction``,
    ``box_format`` and ``image_size``, which the adapter sets. Each loss is built and called
    once on a pair of boxes (or logits) here, so a bad name or value raises a
    :class:`~detloss.DetLossError` now, not in the middle of training.

    Args:
        box_loss: the box loss, a key of :data:`BOX_LOSSES` or :data:`ROTATED_BOX_LOSSES`, or ``None``.
        box_options: its options, e.g. ``{"momentum": 0.01}`` for ``wiou``.
        cls_loss: the class loss, a key of :data:`CLASS_LOSSES`, or ``None``.
        cls_options: its options, e.g. ``{"alpha": 0.75, "gamma": 2.0}`` for ``varifocal``.

    Example:
        >>> Losses("siou", {"theta": 4.0}, cls_loss="varifocal").box_module()
        SIoULoss(theta=4.0, box_format='xyxy', eps=1e-07, reduction='sum', loss_weight=1.0)
        >>> Losses("wiou", {"delta": -1.0})
        Traceback (most recent call last):
        ...
        detloss.errors.DetLossError: WIoULoss(): argument `delta` expected a number in (0.0, inf], got -1.0
    """

    box_loss: str | None = "wiou"
    box_options: Mapping[str, Any] = field(default_factory=dict)
    cls_loss: str | None = None
    cls_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = "patch"
        box_losses = BOX_LOSSES + ROTATED_BOX_LOSSES
        choices = (("box_loss", self.box_loss, box_losses), ("cls_loss", self.cls_loss, CLASS_LOSSES))
        for name, value, allowed in choices:
            if value is not None and value not in allowed:
                raise DetLossError.bad_argument(where, name, "None or one of " + ", ".join(allowed), repr(value))
        object.__setattr__(self, "box_options", _options(where, "box_options", self.box_options))
        object.__setattr__(self, "cls_options", _options(where, "cls_options", self.cls_options))
        self._try()

    def box_module(self) -> LossModule | None:
        """A new module of the box loss, summing (the adapter divides by ``target_scores_sum``)."""
        if self.box_loss is None:
            return None
        options = dict(self.box_options)
        if "image_size" in _call_options(self.box_loss):
            options["image_size"] = PENDING_IMAGE_SIZE  # replaced by each batch's size before its call
        return get_spec(self.box_loss).module(**options, reduction="sum")

    def cls_module(self) -> LossModule | None:
        """A new module of the class loss, elementwise (ultralytics sums it)."""
        if self.cls_loss is None:
            return None
        return get_spec(self.cls_loss).module(**self.cls_options, reduction="none")

    def _try(self) -> None:
        """Build each loss and call it once on a small valid input (in eval mode: no state moves)."""
        box = self.box_module()
        if box is not None:
            rotated = self.box_loss in ROTATED_BOX_LOSSES
            pred = torch.tensor([[5.0, 4.0, 8.0, 5.0, 0.3]]) if rotated else torch.tensor([[1.0, 2.0, 9.0, 7.0]])
            box.eval()(pred, pred + 0.5, weight=torch.ones(1))
        cls = self.cls_module()
        if cls is not None:
            cls(torch.zeros(1, 2), torch.tensor([[0.0, 0.7]]))


def _call_options(key: str) -> dict[str, Any]:
    return dict(get_spec(key).call_options)


class _Term(nn.Module):
    """A detloss module standing in for one term of an ultralytics criterion."""

    kind: ClassVar[str]

    def __init__(self, original: nn.Module, loss: LossModule) -> None:
        super().__init__()
        self.original = original
        self.loss = loss

    def bind(self, model: nn.Module, role: str) -> None:
        """Use ``model``'s buffers as the loss's state (registering them the first time) and its mode."""
        prefix = f"{STATE_PREFIX}{role}{self.kind}_"
        for name, buffer in list(self.loss.named_buffers(recurse=False)):
            holder = prefix + name
            state = getattr(model, holder, None)
            if not isinstance(state, torch.Tensor):
                device = next(model.parameters(), buffer).device
                model.register_buffer(holder, buffer.detach().clone().to(device))
                state = getattr(model, holder)
            if state is not buffer:
                setattr(self.loss, name, state)
        self.loss.train(model.training)


class BoxTerm(_Term):
    """Replaces a criterion's ``BboxLoss``: detloss's box loss, ultralytics' DFL as it is.

    ``forward`` takes ``BboxLoss.forward``'s arguments and returns ``(box, dfl)`` like it. The
    DFL (or, for ``reg_max = 1`` heads, L1) term is the one ultralytics' own ``BboxLoss``
    computes; the CIoU term it computes on the way is dropped (a few operations on the
    foreground boxes, never differentiated). The box term is
    ``loss(pred, target, weight=w) / target_scores_sum`` with ``loss`` summing, the boxes in
    pixels and ``w`` the foreground anchors' target scores summed over classes.
    """

    kind = "box"
    #: Kinds of :data:`detloss.LOSSES` inputs this term can use.
    accepts: ClassVar[tuple[str, ...]] = ("boxes",)

    def forward(
        self,
        pred_dist: torch.Tensor,
        pred_bboxes: torch.Tensor,
        anchor_points: torch.Tensor,
        target_bboxes: torch.Tensor,
        target_scores: torch.Tensor,
        target_scores_sum: torch.Tensor,
        fg_mask: torch.Tensor,
        imgsz: torch.Tensor,
        stride: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ultralytics_inputs = (pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores, target_scores_sum)
        _, loss_dfl = self.original(*ultralytics_inputs, fg_mask, imgsz, stride)
        weight = target_scores[fg_mask].sum(-1)
        pred = self.pixels(pred_bboxes, stride)[fg_mask]
        target = self.pixels(target_bboxes, stride)[fg_mask]
        if "image_size" in self.loss.options:
            height, width = imgsz.tolist()
            self.loss.options["image_size"] = (float(width), float(height))
        return self.loss(pred, target, weight=weight) / target_scores_sum, loss_dfl

    @staticmethod
    def pixels(boxes: torch.Tensor, stride: torch.Tensor) -> torch.Tensor:
        """Boxes in grid units (``xyxy``) times each anchor's stride ``(A, 1)``: pixels."""
        return boxes * stride


class RotatedBoxTerm(BoxTerm):
    """Replaces ``v8OBBLoss``'s ``RotatedBboxLoss``: detloss's rotated box loss, ultralytics'
    DFL as it is.

    As :class:`BoxTerm`, on ``xywhr`` boxes (detloss's ``cxcywha``, radians): the centre and
    sides in pixels, the angle as ultralytics decodes it. ultralytics' own ProbIoU term,
    computed on the way, is dropped.
    """

    accepts: ClassVar[tuple[str, ...]] = ("rotated_boxes",)

    @staticmethod
    def pixels(boxes: torch.Tensor, stride: torch.Tensor) -> torch.Tensor:
        """``xywhr`` boxes in grid units: centre and sides times the stride, the angle kept."""
        return torch.cat((boxes[..., :4] * stride, boxes[..., 4:]), dim=-1)


class ClassTerm(_Term):
    """Replaces a criterion's ``bce``: detloss's class loss, elementwise, on the same logits and
    target scores (ultralytics then applies its class weights, sums and divides by
    ``target_scores_sum``, as for its BCE)."""

    kind = "cls"

    def forward(self, pred_scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
        return self.loss(pred_scores, target_scores)


#: ultralytics' box-loss classes (by module and name, exact type) and the term that replaces each.
BOX_TERMS: dict[str, type[BoxTerm]] = {
    "ultralytics.utils.loss.BboxLoss": BoxTerm,
    "ultralytics.utils.loss.RotatedBboxLoss": RotatedBoxTerm,
}
#: The class-loss modules that :class:`ClassTerm` replaces.
CLASS_TERMS: dict[str, type[ClassTerm]] = {"torch.nn.modules.loss.BCEWithLogitsLoss": ClassTerm}


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


@dataclass
class _Adaptation:
    """What the patch changed in one criterion, to put back on ``undo``."""

    patch: Patch
    bbox_loss: nn.Module | None
    bce: nn.Module | None


_ACTIVE: list[Patch] = []  # innermost last: criteria are adapted with the last one's losses
_ADAPTED: weakref.WeakKeyDictionary[Any, _Adaptation] = weakref.WeakKeyDictionary()
_ORIGINAL_LOSS: list[Callable[..., Any]] = []  # BaseModel.loss while a patch is active


def _members(criterion: Any) -> list[tuple[str, Any]]:
    """The ``v8DetectionLoss`` criteria in ``criterion`` with their roles: itself (role ``""``),
    or the members of a wrapper such as the end-to-end loss (``one2many_``, ``one2one_``)."""
    from ultralytics.utils.loss import v8DetectionLoss

    if isinstance(criterion, v8DetectionLoss):
        return [("", criterion)]
    members = sorted(vars(criterion).items())
    return [(f"{name}_", value) for name, value in members if isinstance(value, v8DetectionLoss)]


def _adapt(member: Any, patch: Patch) -> _Adaptation:
    """Replace ``member``'s terms with detloss's; a term that already is one (the member is a copy
    of an adapted criterion, e.g. in ultralytics' EMA model) is kept as it is."""
    losses = patch.losses
    record = _Adaptation(patch, None, None)
    box = member.bbox_loss
    if isinstance(box, BoxTerm):
        record.bbox_loss = box.original
    elif losses.box_loss is not None:
        term = BOX_TERMS.get(_type_name(box))
        if term is not None and get_spec(losses.box_loss).inputs not in term.accepts:
            allowed = ROTATED_BOX_LOSSES if term.accepts == ("rotated_boxes",) else BOX_LOSSES
            expected = f"a loss of the boxes of {type(member).__name__} ({', '.join(allowed)}) or None"
            raise DetLossError.bad_argument("patch", "box_loss", expected, repr(losses.box_loss))
        module = losses.box_module()
        if term is not None and module is not None:
            record.bbox_loss = box
            member.bbox_loss = term(box, module)
        else:
            warnings.warn(
                f"{type(member).__name__} keeps its {type(box).__name__}: "
                f"{losses.box_loss!r} is not a loss for its boxes",
                stacklevel=4,
            )
    cls = member.bce
    if isinstance(cls, ClassTerm):
        record.bce = cls.original
    elif losses.cls_loss is not None and _type_name(cls) in CLASS_TERMS:
        module = losses.cls_module()
        if module is not None:
            record.bce = cls
            member.bce = CLASS_TERMS[_type_name(cls)](cls, module)
    return record


def _prepare(criterion: Any, model: nn.Module) -> None:
    """Adapt ``criterion`` to the innermost active patch (once) and bind its terms to ``model``."""
    for role, member in _members(criterion):
        if member not in _ADAPTED:
            _ADAPTED[member] = _adapt(member, _ACTIVE[-1])
        for term in (member.bbox_loss, member.bce):
            if isinstance(term, _Term):
                term.bind(model, role)


def _install() -> None:
    from ultralytics.nn.tasks import BaseModel

    original = BaseModel.loss

    @functools.wraps(original)
    def loss(self: Any, batch: dict[str, Any], preds: Any = None) -> Any:
        if getattr(self, "criterion", None) is None:
            self.criterion = self.init_criterion()
        _prepare(self.criterion, self)
        return original(self, batch, preds)

    _ORIGINAL_LOSS.append(original)
    BaseModel.loss = loss


def _uninstall() -> None:
    from ultralytics.nn.tasks import BaseModel

    BaseModel.loss = _ORIGINAL_LOSS.pop()


class Patch:
    """The handle :func:`patch` returns: ``undo()`` puts ultralytics back; also a context manager.

    ``undo`` also restores the terms of every criterion that this patch adapted (a criterion
    built under it goes back to ultralytics' CIoU and BCE); the state buffers stay on the
    models. Patches nest: criteria are adapted with the innermost active one's losses.
    """

    def __init__(self, losses: Losses) -> None:
        self.losses = losses

    @property
    def active(self) -> bool:
        return self in _ACTIVE

    def _apply(self) -> Patch:
        if not _ACTIVE:
            _install()
        _ACTIVE.append(self)
        return self

    def undo(self) -> None:
        """Undo this patch (a second call does nothing)."""
        if self not in _ACTIVE:
            return
        _ACTIVE.remove(self)
        for member, record in list(_ADAPTED.items()):
            if record.patch is self:
                if record.bbox_loss is not None:
                    member.bbox_loss = record.bbox_loss
                if record.bce is not None:
                    member.bce = record.bce
                del _ADAPTED[member]
        if not _ACTIVE:
            _uninstall()

    def __enter__(self) -> Patch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def __repr__(self) -> str:
        state = "active" if self.active else "undone"
        return f"Patch(box_loss={self.losses.box_loss!r}, cls_loss={self.losses.cls_loss!r}, {state})"


def _import_ultralytics() -> None:
    try:
        import ultralytics.nn.tasks
        import ultralytics.utils.loss  # noqa: F401
    except ImportError as error:
        raise ImportError("detloss.integrations.ultralytics needs ultralytics (pip install ultralytics)") from error


def patch(
    box_loss: str | None = "wiou",
    cls_loss: str | None = None,
    *,
    cls_options: Mapping[str, Any] | None = None,
    **box_options: Any,
) -> Patch:
    """Make ultralytics' detection criteria use detloss losses, in this process, until ``undo()``.

    Args:
        box_loss: one of :data:`BOX_LOSSES` (``"wiou"``, ``"siou"``, ``"eiou"``, ``"mpdiou"``,
            ``"inner_iou"``, ``"nwd"``, ``"alpha_iou"``, ...) or ``None`` to keep the CIoU term;
            for OBB models one of :data:`ROTATED_BOX_LOSSES` (``"probiou"``, ``"kld"``,
            ``"gwd"``, ``"kfiou"``, ``"rotated_iou"``) or ``None`` to keep ProbIoU.
        cls_loss: one of :data:`CLASS_LOSSES` or ``None`` (default) to keep the BCE term.
        cls_options: options of the class loss, e.g. ``{"alpha": 0.75, "gamma": 2.0}``.
        **box_options: options of the box loss, e.g. ``momentum=0.01`` for ``wiou``.

    Returns:
        A :class:`Patch`: call ``undo()``, or use it as a context manager. The losses are checked
        before ultralytics is imported: a bad name or option raises a
        :class:`~detloss.DetLossError` naming it.

    Example:
        >>> patch(box_loss="ciou", alpha_gate=1)
        Traceback (most recent call last):
        ...
        detloss.errors.DetLossError: CIoULoss(): argument `alpha_gate` expected True or False, got 1
    """
    losses = Losses(box_loss, box_options, cls_loss, _options("patch", "cls_options", cls_options))
    _import_ultralytics()
    return Patch(losses)._apply()


def _copy_state(source: nn.Module, destination: nn.Module) -> None:
    """Copy ``source``'s detloss state buffers into ``destination``'s (those it has)."""
    with torch.no_grad():
        for name, buffer in source.named_buffers(recurse=False):
            target = getattr(destination, name, None) if name.startswith(STATE_PREFIX) else None
            if isinstance(target, torch.Tensor) and target is not buffer:
                target.copy_(buffer)


def _build_trainer_class(base: type, name: str, default: Losses, doc: str) -> type:
    from ultralytics.utils.torch_utils import unwrap_model

    class Trainer(base):  # type: ignore[misc, valid-type]
        losses: ClassVar[Losses] = default

        @classmethod
        def configure(
            cls,
            box_loss: str | None = default.box_loss,
            cls_loss: str | None = None,
            *,
            cls_options: Mapping[str, Any] | None = None,
            **box_options: Any,
        ) -> type[Trainer]:
            """A subclass that trains with these losses (arguments as :func:`patch`)."""
            losses = Losses(box_loss, box_options, cls_loss, _options("patch", "cls_options", cls_options))
            name = f"{cls.__name__}_{box_loss}_{cls_loss}"
            return type(name, (cls,), {"losses": losses, "__module__": __name__, "__doc__": cls.__doc__})

        def train(self) -> None:
            with Patch(self.losses)._apply():
                super().train()

        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> Any:
            model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
            if isinstance(weights, nn.Module):
                for key, buffer in weights.named_buffers(recurse=False):
                    if key.startswith(STATE_PREFIX):
                        model.register_buffer(key, buffer.detach().float().clone())
            return model

        def set_class_weights(self) -> None:
            super().set_class_weights()
            model = unwrap_model(self.model)
            if getattr(model, "criterion", None) is None:
                model.criterion = model.init_criterion()
            _prepare(model.criterion, model)  # registers the state before ultralytics copies the model

        def optimizer_step(self) -> None:
            super().optimizer_step()
            if self.ema is not None:
                _copy_state(unwrap_model(self.model), self.ema.ema)

    Trainer.__name__ = Trainer.__qualname__ = name  # so that pickle finds it as module.<name>
    Trainer.__module__ = __name__
    Trainer.__doc__ = doc
    return Trainer


_TRAINER_DOC = """ultralytics' ``{base}`` with detloss's losses, in every process that trains.

``model.train(trainer={name}.configure(box_loss="{loss}"), ...)``: the configured class
carries its :class:`Losses` (``{name}`` itself: {default}). ``train()`` applies the patch
around ultralytics' training, in this process and in each DDP worker (which rebuilds the
trainer from its class). Before ultralytics copies the model into its EMA, the criterion is
built and the losses' state registered on the model, so that checkpoints hold it; after each
optimizer step the EMA copy takes the live state (not an average of it); a model loaded from a
checkpoint (``resume``, or weights to fine-tune) starts from the state saved in it.
"""


@functools.cache
def _trainer_class(name: str) -> type:
    _import_ultralytics()
    if name == "DetlossOBBTrainer":
        from ultralytics.models.yolo.obb import OBBTrainer

        doc = _TRAINER_DOC.format(
            base="OBBTrainer",
            name=name,
            loss="probiou",
            default="ProbIoU, the Hellinger distance of :func:`patch`'s defaults",
        )
        return _build_trainer_class(OBBTrainer, name, Losses("probiou"), doc)
    from ultralytics.models.yolo.detect import DetectionTrainer

    doc = _TRAINER_DOC.format(
        base="DetectionTrainer", name=name, loss="wiou", default="Wise-IoU v3, the defaults of :func:`patch`"
    )
    return _build_trainer_class(DetectionTrainer, name, Losses(), doc)


def __getattr__(name: str) -> Any:
    # built on first use: they subclass ultralytics' DetectionTrainer / OBBTrainer
    if name in ("DetlossTrainer", "DetlossOBBTrainer"):
        return _trainer_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

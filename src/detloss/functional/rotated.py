r"""Rotated-box losses: exact rotated IoU / GIoU, ProbIoU, KLD, GWD and KFIoU.

Every function takes ``pred`` and ``target`` rotated boxes of shape ``(..., 5)`` in
``box_format="cxcywha"`` (``angle_unit="rad"`` or ``"deg"``), or ``(..., 8)`` in
``"xyxyxyxy"``; shapes broadcast. The geometry is :mod:`detloss.boxes.rotated` (formats, the
exact overlap, the Gaussian distances); the loss is reduced by
:func:`detloss.reduction.reduce_loss`; half and bfloat16 inputs are computed and returned in
float32, under ``torch.autocast`` too (no operation here is one that autocast lowers).
"""

from __future__ import annotations

from typing import Literal

import torch

from detloss._checks import check_choice, check_range
from detloss._typing import AngleUnit, AvgFactor, Reduction, RotatedBoxFormat, RotatedIoUKind
from detloss.boxes.rotated import (
    ROTATED_IOU_KINDS,
    Frames,
    centre_offset,
    check_rotated_pair,
    gaussian_core,
    kfiou_core,
    native_rotated_pair,
    pair_frames,
    rotated_similarity,
)
from detloss.functional._math import finite_pow
from detloss.functional.regression import smooth_l1_loss
from detloss.reduction import reduce_loss

__all__ = ["gwd_loss", "kfiou_loss", "kld_loss", "probiou_loss", "rotated_iou_loss"]

GAUSSIAN_FUNS = ("log1p", "sqrt")
GaussianFun = Literal["log1p", "sqrt"]


def rotated_iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: RotatedIoUKind = "iou",
    mode: str = "linear",
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""Rotated IoU loss on the exact polygon overlap: :math:`1 - \mathrm{IoU}` or :math:`1 - \mathrm{GIoU}`.

    ``kind="iou"``: :math:`1 - \mathrm{IoU}` (``mode="linear"``) or :math:`-\ln \mathrm{IoU}`
    (``"log"``, UnitBox: Yu et al., ACM MM 2016; the IoU floored at ``eps``, so a disjoint
    pair gives ``-ln(eps)``). ``kind="giou"``: :math:`1 - \mathrm{IoU} + (C - U)/C` with ``C``
    the convex hull of the eight corners (Rezatofighi et al., CVPR 2019, for convex shapes);
    with ``mode="log"`` its IoU part is :math:`-\ln \mathrm{IoU}` and the hull penalty is added
    unchanged (our combination; the papers define the log form for IoU only). IoU and GIoU are
    :func:`detloss.boxes.rotated_iou`: exact areas, a finite gradient for identical, nested,
    touching, collinear, zero-area and nearly parallel boxes. The IoU loss has no gradient for
    disjoint boxes; the GIoU loss does.

    Args:
        pred: predicted boxes ``(..., 5)`` (``cxcywha``) or ``(..., 8)`` (``xyxyxyxy``).
        target: ground-truth boxes, same layout; shapes broadcast.
        kind: ``"iou"`` or ``"giou"``.
        mode: ``"linear"`` or ``"log"``.
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"`` (``cxcywha``).
        eps: added to the union and the hull area, in ``(0, 1]``.
        weight: elementwise weight, broadcast against the loss ``(...)``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: ``"mean"`` divides the sum by it instead of the number of elements.

    Shape:
        - pred, target: ``(*, 5)`` (``cxcywha``) or ``(*, 8)`` (``xyxyxyxy``), broadcasting.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example (the same 2 x 2 square turned by 45 degrees: an octagon of area 8 (sqrt 2 - 1)):
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]])
        >>> b = torch.tensor([[0.0, 0.0, 2.0, 2.0, 45.0]])
        >>> rotated_iou_loss(a, b, angle_unit="deg")  # IoU 3.3137 / (8 - 3.3137) = 0.7071
        tensor(0.2929)
        >>> far = torch.tensor([[3.0, 0.0, 2.0, 2.0, 0.0]])
        >>> rotated_iou_loss(a, far, kind="giou")  # disjoint: hull 5 x 2 = 10, union 8: 1 + 2/10
        tensor(1.2000)
    """
    where = "rotated_iou_loss"
    check_choice(where, "kind", kind, ROTATED_IOU_KINDS)
    check_choice(where, "mode", mode, ("linear", "log"))
    similarity, iou = rotated_similarity(where, pred, target, kind, box_format, angle_unit, eps)
    if mode == "log":
        loss = -torch.log(iou.clamp(min=eps)) + (iou - similarity)
    else:
        loss = 1.0 - similarity
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def probiou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str = "l1",
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""ProbIoU loss: the Hellinger distance of the boxes as Gaussians (``"l1"``) or their
    Bhattacharyya distance (``"l2"``).

    .. math::
        B = \frac18 \Delta^T \Sigma^{-1} \Delta + \frac12 \ln \frac{\det \Sigma}{\sqrt{\det\Sigma_p \det\Sigma_t}},
        \quad \Sigma = \frac{\Sigma_p + \Sigma_t}{2}, \qquad
        L_1 = \sqrt{1 - e^{-B}}, \quad L_2 = B

    with :math:`\Sigma = R\,\mathrm{diag}(w^2, h^2) R^T / 12`, the covariance of the uniform
    distribution over the box (:func:`detloss.boxes.gaussian_distance`, ``"bhattacharyya"``).
    Reference: Llerena et al., "Gaussian Bounding Boxes and Probabilistic Intersection-over-Union
    for Object Detection", arXiv 2106.06072 (``L_2 = -ln(1 - L_1^2) = B``). ``1 - L_1`` is
    ultralytics' ``probiou`` similarity. Deviations, each of size ``eps``: the sides enter as
    ``w + eps`` (a zero-area box stays a proper Gaussian); the square root keeps its value but
    has no gradient below ``1 - e^{-B} = eps`` (its slope is infinite at 0, where the boxes are
    identical); ``B`` is not clamped (the authors clamp it to ``[eps, 100]``), so ``"l2"``
    keeps growing with the distance. Loss and gradient are finite for every finite input.

    Args:
        pred: predicted boxes ``(..., 5)`` (``cxcywha``) or ``(..., 8)`` (``xyxyxyxy``).
        target: ground-truth boxes, same layout; shapes broadcast.
        mode: ``"l1"`` (Hellinger, in ``[0, 1)``) or ``"l2"`` (Bhattacharyya, ``>= 0``).
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"`` (``cxcywha``).
        eps: side floor and square-root threshold, in ``(0, 1]``.
        weight: elementwise weight, broadcast against the loss ``(...)``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: ``"mean"`` divides the sum by it instead of the number of elements.

    Shape:
        - pred, target: ``(*, 5)`` (``cxcywha``) or ``(*, 8)`` (``xyxyxyxy``), broadcasting.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example (a 4 x 2 box moved by 1 along its long side):
        >>> a = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
        >>> b = torch.tensor([[1.0, 0.0, 4.0, 2.0, 0.0]])
        >>> # Sigma = diag(16, 4) / 12: B = 1/8 * 1^2 / (16/12) = 0.09375
        >>> probiou_loss(b, a, mode="l2")
        tensor(0.0938)
        >>> probiou_loss(b, a)  # sqrt(1 - exp(-0.09375)) = sqrt(0.089490)
        tensor(0.2991)
    """
    where = "probiou_loss"
    check_choice(where, "mode", mode, ("l1", "l2"))
    fun = "none" if mode == "l2" else "hellinger"
    loss = _gaussian_elementwise(where, pred, target, "bhattacharyya", fun, 0.0, box_format, angle_unit, eps)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def gaussian_transform(distance: torch.Tensor, fun: str, tau: float, eps: float) -> torch.Tensor:
    """The losses of a Gaussian distance ``d``: ``"hellinger"`` ``sqrt(1 - e^-d)`` (ProbIoU's
    ``"l1"``), ``"none"`` ``d``, ``"log1p"`` and ``"sqrt"`` ``1 - 1 / (tau + f(d))`` (KLD's and
    GWD's); the square roots have no gradient below ``eps``."""
    if fun == "none":
        return distance
    if fun == "hellinger":
        return finite_pow(-torch.expm1(-distance), 0.5, eps)
    transformed = torch.log1p(distance) if fun == "log1p" else finite_pow(distance, 0.5, eps)
    return 1.0 - 1.0 / (tau + transformed)


def _gaussian_elementwise(
    where: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    fun: str,
    tau: float,
    box_format: str,
    angle_unit: str,
    eps: float,
) -> torch.Tensor:
    """The elementwise loss ``gaussian_transform(gaussian_distance(pred, target, kind), fun)``: on
    CPU with the native backend by the operator ``torch.ops.detloss.rotated_gaussian_loss``
    (``cxcywha`` boxes), else by the reference composition."""
    dtype = check_rotated_pair(where, pred, target, box_format, angle_unit, eps)
    fast = _native_gaussian(pred, target, dtype, kind, fun, tau, box_format, angle_unit, eps)
    if fast is not None:
        return fast
    p, t = pair_frames(pred, target, dtype, box_format, angle_unit)
    return gaussian_transform(gaussian_core(p, t, kind, eps), fun, tau, eps)


def _native_gaussian(
    pred: torch.Tensor,
    target: torch.Tensor,
    dtype: torch.dtype,
    kind: str,
    fun: str,
    tau: float,
    box_format: str,
    angle_unit: str,
    eps: float,
) -> torch.Tensor | None:
    """The elementwise loss by ``torch.ops.detloss.rotated_gaussian_loss`` (``kind`` one of
    :data:`detloss.boxes.rotated.GAUSSIAN_KINDS` or ``"kfiou"``, whose ``fun`` is its mode and
    ``tau`` its ``beta``) where the native backend runs ``cxcywha`` boxes on CPU; else ``None``.
    The boxes are checked (:func:`~detloss.boxes.rotated.check_rotated_pair`: ``dtype``)."""
    native = native_rotated_pair(pred, target, dtype, box_format, angle_unit)
    if native is None:
        return None
    p, t, shape = native
    loss = torch.ops.detloss.rotated_gaussian_loss(p, t, kind, fun, float(tau), float(eps))
    return loss if len(shape) == 2 else loss.reshape(shape[:-1])


def kld_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    fun: GaussianFun = "log1p",
    tau: float = 1.0,
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""KLD loss: :math:`1 - 1 / (\tau + f(D_{kl}))` of the boxes as Gaussians.

    .. math::
        D_{kl} = KL(\mathcal{N}_t \| \mathcal{N}_p) = \frac12\Big(\mathrm{tr}(\Sigma_p^{-1}\Sigma_t)
        + \Delta^T \Sigma_p^{-1} \Delta - 2 + \ln\frac{\det\Sigma_p}{\det\Sigma_t}\Big),
        \quad \Sigma = R\,\mathrm{diag}(w^2, h^2) R^T / 4

    (:func:`detloss.boxes.gaussian_distance`, ``"kld"``), ``f`` = ``log1p`` or ``sqrt``.
    Reference: Yang et al., "Learning High-Precision Bounding Box for Rotated Object Detection
    via Kullback-Leibler Divergence", NeurIPS 2021. Direction: the authors' code and
    mmrotate's ``GDLoss`` compute :math:`KL(\mathcal{N}_t \| \mathcal{N}_p)` (the predicted
    covariance inverted), as here; the paper writes :math:`D_{kl}(\mathcal{N}_p \| \mathcal{N}_t)`.
    Defaults ``fun="log1p"``, ``tau=1`` are those of the authors' configurations and of
    mmrotate's KLD configurations. ``tau >= 1`` keeps the loss in ``[1 - 1/tau, 1)``; with
    ``fun="sqrt"`` the root has no gradient below ``D_{kl} = eps``. mmrotate's default
    ``tau=0`` (which returns ``f`` itself) is not this loss.

    Args:
        pred: predicted boxes ``(..., 5)`` (``cxcywha``) or ``(..., 8)`` (``xyxyxyxy``).
        target: ground-truth boxes, same layout; shapes broadcast.
        fun: ``"log1p"`` or ``"sqrt"``, applied to the divergence.
        tau: ``>= 1``.
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"`` (``cxcywha``).
        eps: side floor (``w + eps``) and square-root threshold, in ``(0, 1]``.
        weight: elementwise weight, broadcast against the loss ``(...)``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: ``"mean"`` divides the sum by it instead of the number of elements.

    Shape:
        - pred, target: ``(*, 5)`` (``cxcywha``) or ``(*, 8)`` (``xyxyxyxy``), broadcasting.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example (a 4 x 2 box moved by 1 along its long side):
        >>> a = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
        >>> b = torch.tensor([[1.0, 0.0, 4.0, 2.0, 0.0]])
        >>> # D_kl = 1/2 * 1^2 / (16/4) = 0.125: 1 - 1 / (1 + ln 1.125)
        >>> kld_loss(b, a)
        tensor(0.1054)
    """
    where = "kld_loss"
    check_choice(where, "fun", fun, GAUSSIAN_FUNS)
    check_range(where, "tau", tau, 1.0)
    loss = _gaussian_elementwise(where, pred, target, "kld", fun, tau, box_format, angle_unit, eps)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


def gwd_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    fun: GaussianFun = "sqrt",
    tau: float = 2.0,
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""GWD loss: :math:`1 - 1 / (\tau + f(d^2))` of the squared 2-Wasserstein distance.

    .. math::
        d^2 = \|\Delta\|^2 + \mathrm{Tr}\,\Sigma_p + \mathrm{Tr}\,\Sigma_t
        - 2\,\mathrm{Tr}\big(\Sigma_p^{1/2}\Sigma_t\Sigma_p^{1/2}\big)^{1/2},
        \quad \Sigma = R\,\mathrm{diag}(w^2, h^2) R^T / 4

    (:func:`detloss.boxes.gaussian_distance`, ``"gwd"``), ``f`` = ``sqrt`` (so ``f(d^2) = d``)
    or ``log1p``. Reference: Yang et al., "Rethinking Rotated Object Detection with Gaussian
    Wasserstein Distance Loss", ICML 2021. Defaults ``fun="sqrt"``, ``tau=2``: the authors'
    code and most of their configurations (``1 - 1 / (2 + d)``). mmrotate's ``GDLoss`` differs:
    its default ``tau=0`` returns ``f(d)`` itself, and ``normalize=True`` divides ``d`` by
    ``(w_p h_p w_t h_t)^{1/4}``; neither is done here. ``tau >= 1``; the root has no gradient
    below ``d^2 = eps`` (identical boxes).

    Args:
        pred: predicted boxes ``(..., 5)`` (``cxcywha``) or ``(..., 8)`` (``xyxyxyxy``).
        target: ground-truth boxes, same layout; shapes broadcast.
        fun: ``"sqrt"`` or ``"log1p"``, applied to ``d^2``.
        tau: ``>= 1``.
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"`` (``cxcywha``).
        eps: side floor (``w + eps``) and square-root threshold, in ``(0, 1]``.
        weight: elementwise weight, broadcast against the loss ``(...)``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: ``"mean"`` divides the sum by it instead of the number of elements.

    Shape:
        - pred, target: ``(*, 5)`` (``cxcywha``) or ``(*, 8)`` (``xyxyxyxy``), broadcasting.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
        >>> b = torch.tensor([[3.0, 0.0, 4.0, 2.0, 0.0]])  # moved by 3: d = 3
        >>> gwd_loss(b, a)  # 1 - 1 / (2 + 3)
        tensor(0.8000)
        >>> c = torch.tensor([[0.0, 0.0, 2.0, 4.0, 0.0]])  # sides swapped: d^2 = ((4-2)^2 + (2-4)^2) / 4 = 2
        >>> gwd_loss(c, a, fun="log1p", tau=1.0)  # 1 - 1 / (1 + ln 3)
        tensor(0.5235)
    """
    where = "gwd_loss"
    check_choice(where, "fun", fun, GAUSSIAN_FUNS)
    check_range(where, "tau", tau, 1.0)
    loss = _gaussian_elementwise(where, pred, target, "gwd", fun, tau, box_format, angle_unit, eps)
    return reduce_loss(loss, reduction, weight=weight, avg_factor=avg_factor, where=where)


KFIOU_MODES = ("ln", "linear", "exp")
KFIoUMode = Literal["ln", "linear", "exp"]


def _centre_offset(p: Frames, t: Frames, eps: float) -> torch.Tensor:
    """The predicted centre in the target's frame, over the target's sides: ``(..., 2)``."""
    dx, dy = centre_offset(p, t).unbind(-1)
    cos, sin = t.u.unbind(-1)
    along = (dx * cos + dy * sin) / (t.sides[..., 0] + eps)
    across = (dy * cos - dx * sin) / (t.sides[..., 1] + eps)
    return torch.stack((along, across), dim=-1)


def kfiou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: KFIoUMode = "ln",
    beta: float = 1.0 / 9.0,
    box_format: RotatedBoxFormat = "cxcywha",
    angle_unit: AngleUnit = "rad",
    eps: float = 1e-7,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor | None = None,
) -> torch.Tensor:
    r"""KFIoU loss: a centre term plus :math:`f(\mathrm{KFIoU})`.

    .. math::
        L = \mathrm{smooth}_{\ell_1, \beta}(\delta_x) + \mathrm{smooth}_{\ell_1, \beta}(\delta_y)
        + f(\mathrm{KFIoU}), \qquad
        \mathrm{KFIoU} = \frac{V_\cap}{V_p + V_t - V_\cap}

    :math:`\mathrm{KFIoU}` (:func:`detloss.boxes.kfiou`) compares the shapes only, through the
    overlap Gaussian of a Kalman update, :math:`\Sigma_\cap = \Sigma_p - K\Sigma_p`,
    :math:`K = \Sigma_p(\Sigma_p + \Sigma_t)^{-1}`, with volumes :math:`V = 4\sqrt{\det\Sigma}`
    (``k = 4``: the box area); it is 1/3 for identical boxes, so the loss's minimum is
    :math:`f(1/3)`. The centre term pulls the centres together: ``(delta_x, delta_y)`` is the
    predicted centre in the target's frame divided by the target's ``w`` and ``h`` (the
    encoded offset of a box coder whose anchor is the target; with anchors, encode the
    centres yourself). Reference: Yang et al., "The KFIoU Loss for Rotated Object Detection",
    ICLR 2023. ``f``: ``"ln"`` :math:`-\ln \mathrm{KFIoU}` (default, the authors' code; floored
    at ``eps``), ``"linear"`` :math:`1 - \mathrm{KFIoU}` (mmrotate's ``KFLoss`` default),
    ``"exp"`` :math:`e^{1 - \mathrm{KFIoU}} - 1`. ``beta = 1/9`` is mmrotate's smooth-L1 width
    (``beta = 0``: L1).

    Args:
        pred: predicted boxes ``(..., 5)`` (``cxcywha``) or ``(..., 8)`` (``xyxyxyxy``).
        target: ground-truth boxes, same layout; shapes broadcast.
        mode: ``"ln"``, ``"linear"`` or ``"exp"``.
        beta: width of the smooth-L1 centre term, ``>= 0``.
        box_format: ``"cxcywha"`` or ``"xyxyxyxy"``.
        angle_unit: ``"rad"`` or ``"deg"`` (``cxcywha``).
        eps: side floor (``w + eps``) and the ``ln`` floor, in ``(0, 1]``.
        weight: elementwise weight, broadcast against the loss ``(...)``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: ``"mean"`` divides the sum by it instead of the number of elements.

    Shape:
        - pred, target: ``(*, 5)`` (``cxcywha``) or ``(*, 8)`` (``xyxyxyxy``), broadcasting.
        - output: ``(*)`` for ``reduction="none"``, else ``()``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
        >>> kfiou_loss(a, a.clone(), mode="linear")  # identical: 0 + (1 - 1/3)
        tensor(0.6667)
        >>> b = torch.tensor([[2.0, 0.0, 4.0, 2.0, 0.0]])  # moved by w/2: delta_x = 0.5, smooth L1 0.5 - 1/18
        >>> kfiou_loss(b, a, mode="linear")
        tensor(1.1111)
    """
    where = "kfiou_loss"
    check_choice(where, "mode", mode, KFIOU_MODES)
    check_range(where, "beta", beta, 0.0)
    dtype = check_rotated_pair(where, pred, target, box_format, angle_unit, eps)
    fast = _native_gaussian(pred, target, dtype, "kfiou", mode, beta, box_format, angle_unit, eps)
    if fast is not None:
        return reduce_loss(fast, reduction, weight=weight, avg_factor=avg_factor, where=where)
    p, t = pair_frames(pred, target, dtype, box_format, angle_unit)
    offset = _centre_offset(p, t, eps)
    centre = smooth_l1_loss(offset, torch.zeros_like(offset), beta=beta, reduction="none").sum(-1)
    overlap = kfiou_core(p, t, eps)
    if mode == "ln":
        shape = -torch.log(overlap.clamp(min=eps))
    elif mode == "linear":
        shape = 1.0 - overlap
    else:
        shape = torch.expm1(1.0 - overlap)
    return reduce_loss(centre + shape, reduction, weight=weight, avg_factor=avg_factor, where=where)

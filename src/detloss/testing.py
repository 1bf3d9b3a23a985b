"""Valid sample inputs for any registered loss: used by the contract tests and ``detloss fuzz``.

Example:
    >>> pred, target = sample_inputs("ciou", 3)
    >>> tuple(pred.shape), pred.requires_grad, target.requires_grad
    ((3, 4), True, False)
"""

from __future__ import annotations

import torch

__all__ = ["NUM_CLASSES", "REG_MAX", "random_boxes", "random_rotated_boxes", "sample_inputs"]

#: Classes in the sampled logits.
NUM_CLASSES = 5
#: The largest bin of the sampled distributions (17 bins, ``0 .. REG_MAX``).
REG_MAX = 16


def random_boxes(n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` valid ``xyxy`` boxes: centres in [0, 100]^2, sides log-uniform in [1, 50]."""
    centre = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 100
    size = torch.exp(torch.rand(n, 2, generator=generator, dtype=torch.float64) * torch.log(torch.tensor(50.0)))
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1).to(dtype)


def random_rotated_boxes(n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` rotated ``cxcywha`` boxes: centres in [0, 100]^2, sides log-uniform in [1, 50],
    angles uniform in [-pi, pi) (radians)."""
    centre = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 100
    size = torch.exp(torch.rand(n, 2, generator=generator, dtype=torch.float64) * torch.log(torch.tensor(50.0)))
    angle = (torch.rand(n, 1, generator=generator, dtype=torch.float64) * 2 - 1) * torch.pi
    return torch.cat((centre, size, angle), dim=-1).to(dtype)


def _jitter_rotated(boxes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotated boxes near ``boxes`` (most pairs overlap): the centre moved by up to 30% of the
    sides, the sides scaled by up to e^(+-0.3), the angle turned by up to 0.3 rad."""
    noise = torch.rand(boxes.shape, generator=generator, dtype=boxes.dtype) * 2 - 1
    centre = boxes[:, :2] + 0.3 * noise[:, :2] * boxes[:, 2:4]
    size = boxes[:, 2:4] * torch.exp(0.3 * noise[:, 2:4])
    return torch.cat((centre, size, boxes[:, 4:] + 0.3 * noise[:, 4:]), dim=-1)


def _jitter(boxes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Boxes near ``boxes`` (most pairs overlap): corners moved by up to 30% of the side."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = x2 - x1, y2 - y1
    noise = (torch.rand(boxes.shape, generator=generator, dtype=boxes.dtype) - 0.5) * 0.6
    out = boxes + noise * torch.stack((w, h, w, h), dim=-1)
    lo = torch.minimum(out[..., :2], out[..., 2:])
    hi = torch.maximum(out[..., :2], out[..., 2:])
    return torch.cat((lo, hi), dim=-1)


def sample_inputs(
    loss: str,
    n: int = 8,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    requires_grad: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Positional inputs for registry key ``loss`` with batch size ``n`` (may be 0).

    The inputs that a loss differentiates (the prediction, logits, and for ``iou_aware``
    the predicted boxes too) require grad when ``requires_grad``; targets never do.
    """
    from detloss.registry import get_spec

    kind = get_spec(loss).inputs
    g = torch.Generator().manual_seed(seed)

    def grad(t: torch.Tensor) -> torch.Tensor:
        t = t.to(dtype)
        return t.requires_grad_(True) if requires_grad else t

    def normal(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    if kind == "boxes":
        target = random_boxes(n, generator=g)
        return grad(_jitter(target, g)), target.to(dtype)
    if kind == "values":
        return grad(normal(n, 4)), normal(n, 4).to(dtype)
    if kind == "binary_logits":
        target = torch.rand(n, NUM_CLASSES, generator=g, dtype=torch.float64)
        target[: n // 2] = (target[: n // 2] > 0.7).double()  # exact 0s and 1s too
        return grad(normal(n, NUM_CLASSES, scale=3.0)), target.to(dtype)
    if kind == "class_logits":
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        return grad(normal(n, NUM_CLASSES, scale=3.0)), labels
    if kind == "distribution":
        target = torch.rand(n, 4, generator=g, dtype=torch.float64) * (REG_MAX - 0.1)
        return grad(normal(n, 4, REG_MAX + 1, scale=2.0)), target.to(dtype)
    if kind == "distill":
        return grad(normal(n, NUM_CLASSES, scale=3.0)), normal(n, NUM_CLASSES, scale=3.0).to(dtype)
    if kind == "iou_aware":
        target = random_boxes(n, generator=g)
        return grad(normal(n, scale=2.0)), grad(_jitter(target, g)), target.to(dtype)
    if kind == "rotated_boxes":
        target = random_rotated_boxes(n, generator=g)
        return grad(_jitter_rotated(target, g)), target.to(dtype)
    if kind == "signed_scores":
        labels = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
        return grad(normal(n, scale=2.0)), labels.to(dtype)
    raise AssertionError(f"no sampler for input kind {kind!r}")

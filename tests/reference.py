"""Independent float64 references, written from the papers' formulas with plain Python math.

Nothing here imports detloss: each function is a scalar formula for one pair/element, so
that a bug in the library's vectorised code cannot hide in the reference too.
"""

from __future__ import annotations

import math

# ---------------------------------------------------------------- box geometry (foundation)


def _sides(b: tuple[float, float, float, float]) -> tuple[float, float]:
    return max(b[2] - b[0], 0.0), max(b[3] - b[1], 0.0)


def ref_similarity(p: tuple[float, ...], t: tuple[float, ...], kind: str, eps: float = 1e-7) -> float:
    """IoU-family similarity of one pair of xyxy boxes, straight from the papers."""
    pw, ph = _sides(p)  # type: ignore[arg-type]
    tw, th = _sides(t)  # type: ignore[arg-type]
    iw = max(min(p[2], t[2]) - max(p[0], t[0]), 0.0)
    ih = max(min(p[3], t[3]) - max(p[1], t[1]), 0.0)
    inter = iw * ih
    union = pw * ph + tw * th - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    cw = max(max(p[2], t[2]) - min(p[0], t[0]), 0.0)
    ch = max(max(p[3], t[3]) - min(p[1], t[1]), 0.0)
    if kind == "giou":
        c = cw * ch + eps
        return iou - (c - union) / c
    pcx, pcy = (p[0] + p[2]) / 2, (p[1] + p[3]) / 2
    tcx, tcy = (t[0] + t[2]) / 2, (t[1] + t[3]) / 2
    dx, dy = tcx - pcx, tcy - pcy
    rho2 = dx**2 + dy**2
    diag2 = cw**2 + ch**2 + eps
    if kind == "diou":
        return iou - rho2 / diag2
    if kind == "ciou":
        v = 4 / math.pi**2 * (math.atan((tw + eps) / (th + eps)) - math.atan((pw + eps) / (ph + eps))) ** 2
        alpha = v / (1 - iou + v + eps)
        return iou - rho2 / diag2 - alpha * v
    if kind == "eiou":
        return iou - rho2 / diag2 - (pw - tw) ** 2 / (cw**2 + eps) - (ph - th) ** 2 / (ch**2 + eps)
    if kind == "siou":
        # angle cost: Lambda = 1 - 2 sin^2(arcsin(x) - pi/4), x = sin of the smaller angle to an axis
        sigma = math.sqrt(rho2)
        x = min(abs(dx), abs(dy)) / sigma if sigma > 0 else 0.0
        lam = 1 - 2 * math.sin(math.asin(x) - math.pi / 4) ** 2 if sigma > 0 else 0.0
        gamma = 2 - lam
        dist = sum(1 - math.exp(-gamma * r) for r in ((dx / (cw + eps)) ** 2, (dy / (ch + eps)) ** 2))
        ow = abs(pw - tw) / (max(pw, tw) + eps)
        oh = abs(ph - th) / (max(ph, th) + eps)
        shape = (1 - math.exp(-ow)) ** 4 + (1 - math.exp(-oh)) ** 4
        return iou - (dist + shape) / 2
    raise ValueError(kind)

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
    # enclosing box over all corners (an inverted box's extent too; same as above if valid)
    cw = max(p[0], p[2], t[0], t[2]) - min(p[0], p[2], t[0], t[2])
    ch = max(p[1], p[3], t[1], t[3]) - min(p[1], p[3], t[1], t[3])
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


# ---- classification losses
# One element (or one row of logits) at a time, from the papers' formulas. Probabilities are
# formed as 1 / (1 + e^-x) and 1 - p_t as a plain subtraction: a different route from the
# library's logsigmoid / sigmoid(+-x) forms, fine in float64 for moderate logits.


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _log_softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    lse = m + math.log(sum(math.exp(v - m) for v in xs))
    return [v - lse for v in xs]


def ref_bce(x: float, t: float, pos_weight: float = 1.0) -> float:
    """-(w t ln p + (1 - t) ln(1 - p)), p = sigmoid(x)."""
    p = _sigmoid(x)
    return -(pos_weight * t * math.log(p) + (1 - t) * math.log(1 - p))


def ref_sigmoid_focal(x: float, t: float, alpha: float | None, gamma: float) -> float:
    """Lin et al. Eq. 5 with p_t = p t + (1 - p)(1 - t), alpha_t = alpha t + (1 - alpha)(1 - t)."""
    p = _sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return alpha_t * (1 - p_t) ** gamma * ref_bce(x, t)


def ref_cross_entropy(
    logits: list[float], target: int | list[float], class_weight: list[float] | None = None, smoothing: float = 0.0
) -> float:
    """-sum_c w_c q_c ln softmax_c, q = (1 - eps) one-hot (or the given probabilities) + eps / C."""
    c = len(logits)
    q = [1.0 if k == target else 0.0 for k in range(c)] if isinstance(target, int) else list(target)
    q = [(1 - smoothing) * v + smoothing / c for v in q]
    w = class_weight or [1.0] * c
    return -sum(w[k] * q[k] * lp for k, lp in enumerate(_log_softmax(logits)))


def ref_softmax_focal(
    logits: list[float], target: int | list[float], alpha: list[float] | None, gamma: float
) -> float:
    """-sum_c alpha_c q_c (1 - p_c)^gamma ln p_c."""
    c = len(logits)
    q = [1.0 if k == target else 0.0 for k in range(c)] if isinstance(target, int) else list(target)
    a = alpha or [1.0] * c
    log_p = _log_softmax(logits)
    return -sum(a[k] * q[k] * (1 - math.exp(log_p[k])) ** gamma * log_p[k] for k in range(c))


def ref_quality_focal(x: float, y: float, beta: float) -> float:
    """GFL's QFL: |y - p|^beta BCE(p, y)."""
    return abs(y - _sigmoid(x)) ** beta * ref_bce(x, y)


def ref_varifocal(x: float, q: float, alpha: float, gamma: float) -> float:
    """VarifocalNet: -q (q ln p + (1 - q) ln(1 - p)) if q > 0, else -alpha p^gamma ln(1 - p)."""
    p = _sigmoid(x)
    if q > 0:
        return -q * (q * math.log(p) + (1 - q) * math.log(1 - p))
    return -alpha * p**gamma * math.log(1 - p)


def ref_distribution_focal(logits: list[float], y: float) -> float:
    """GFL's DFL over bins 0..R: -((y_r - y) ln S_l + (y - y_l) ln S_r), y_l = floor(y) (R - 1 at y = R)."""
    r = len(logits) - 1
    y = min(max(y, 0.0), float(r))
    left = min(math.floor(y), r - 1)
    log_s = _log_softmax(logits)
    return -((left + 1 - y) * log_s[left] + (y - left) * log_s[left + 1])


def ref_distribution_expectation(logits: list[float]) -> float:
    return sum(i * math.exp(lp) for i, lp in enumerate(_log_softmax(logits)))


def ref_kl_distill(student: list[float], teacher: list[float], temperature: float) -> float:
    """T^2 sum_c q_c (ln q_c - ln p_c), q = softmax(teacher / T), p = softmax(student / T)."""
    log_p = _log_softmax([v / temperature for v in student])
    log_q = _log_softmax([v / temperature for v in teacher])
    return temperature**2 * sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p))


def ref_hinge(f: float, y: float, margin: float = 1.0) -> float:
    sign = 1.0 if y > 0 else -1.0
    return max(0.0, margin - sign * f)


def ref_exponential(f: float, y: float) -> float:
    sign = 1.0 if y > 0 else -1.0
    return math.exp(-sign * f)


def ref_iou_aware(x: float, iou: float) -> float:
    """BCE of the IoU logit against the IoU (clamped to [0, 1])."""
    return ref_bce(x, min(max(iou, 0.0), 1.0))


def ref_ghm_c(
    xs: list[float],
    ts: list[float],
    bins: int,
    weights: list[float] | None = None,
    momentum: float = 0.0,
    running: list[float] | None = None,
) -> tuple[list[float], list[float]]:
    """GHM-C as the authors' code loops over bins: ``(elementwise beta * BCE, new running counts)``.

    Region k is ``edges[k] <= g < edges[k + 1]`` with ``edges = k / bins`` and the last edge
    raised by 1e-6; beta = N / (count or running count) / number of non-empty regions.
    """
    edges = [k / bins for k in range(bins + 1)]
    edges[-1] += 1e-6
    g = [abs(_sigmoid(x) - t) for x, t in zip(xs, ts)]
    valid = [True] * len(xs) if weights is None else [w > 0 for w in weights]
    total = max(sum(valid), 1)
    running = list(running) if running is not None else [0.0] * bins
    beta = [0.0] * len(xs)
    occupied = 0
    for k in range(bins):
        members = [i for i in range(len(xs)) if valid[i] and edges[k] <= g[i] < edges[k + 1]]
        if not members:
            continue
        occupied += 1
        if momentum > 0:
            running[k] = momentum * running[k] + (1 - momentum) * len(members)
            density = running[k]
        else:
            density = len(members)
        for i in members:
            beta[i] = total / density
    if occupied:
        beta = [b / occupied for b in beta]
    return [b * ref_bce(x, t) for b, x, t in zip(beta, xs, ts)], running


# ---- regression losses
# Scalar formulas for one element or one pair of xyxy boxes, written from the papers, each
# branch as the paper states it (no shared tricks with detloss's vectorised code).

_EPS = 1e-7


def ref_l1(x: float) -> float:
    return abs(x)


def ref_l2(x: float) -> float:
    return x * x


def ref_smooth_l1(x: float, beta: float = 1.0) -> float:
    """Fast R-CNN, Eq. 3, with the threshold beta."""
    if abs(x) < beta:
        return 0.5 * x * x / beta
    return abs(x) - 0.5 * beta


def ref_huber(x: float, delta: float = 1.0) -> float:
    """Huber 1964."""
    if abs(x) <= delta:
        return 0.5 * x * x
    return delta * (abs(x) - 0.5 * delta)


def ref_balanced_l1(x: float, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0) -> float:
    """Libra R-CNN, Eqs. 8-10, scaled as beta * L(|x| / beta) (the paper has beta = 1)."""
    b = math.exp(gamma / alpha) - 1.0
    a = abs(x)
    if a < beta:
        return alpha / b * (b * a + beta) * math.log(b * a / beta + 1.0) - alpha * a
    return gamma * a + gamma * beta / b - alpha * beta


def ref_box_terms(p: tuple[float, ...], t: tuple[float, ...], eps: float = _EPS) -> dict[str, float]:
    """Every geometric quantity of one pair, from scratch: sides, IoU, enclosing box, centres."""
    pw, ph = max(p[2] - p[0], 0.0), max(p[3] - p[1], 0.0)
    tw, th = max(t[2] - t[0], 0.0), max(t[3] - t[1], 0.0)
    iw = max(min(p[2], t[2]) - max(p[0], t[0]), 0.0)
    ih = max(min(p[3], t[3]) - max(p[1], t[1]), 0.0)
    inter = iw * ih
    union = pw * ph + tw * th - inter + eps
    cw = max(p[0], p[2], t[0], t[2]) - min(p[0], p[2], t[0], t[2])  # inverted boxes too
    ch = max(p[1], p[3], t[1], t[3]) - min(p[1], p[3], t[1], t[3])
    dx = (t[0] + t[2]) / 2 - (p[0] + p[2]) / 2
    dy = (t[1] + t[3]) / 2 - (p[1] + p[3]) / 2
    v = 4 / math.pi**2 * (math.atan((tw + eps) / (th + eps)) - math.atan((pw + eps) / (ph + eps))) ** 2
    return {
        "pw": pw, "ph": ph, "tw": tw, "th": th, "inter": inter, "union": union, "iou": inter / union,
        "cw": cw, "ch": ch, "enclosing": cw * ch + eps, "dx": dx, "dy": dy, "rho2": dx * dx + dy * dy,
        "c2": cw * cw + ch * ch + eps, "v": v,
    }  # fmt: skip


def ref_box_loss(p: tuple[float, ...], t: tuple[float, ...], kind: str, eps: float = _EPS, theta: float = 4.0) -> float:
    """1 - similarity for kind in iou, giou, diou, ciou (AAAI form), eiou, siou."""
    g = ref_box_terms(p, t, eps)
    iou = g["iou"]
    if kind == "iou":
        return 1 - iou
    if kind == "giou":
        return 1 - iou + (g["enclosing"] - g["union"]) / g["enclosing"]
    distance = g["rho2"] / g["c2"]
    if kind == "diou":
        return 1 - iou + distance
    if kind == "ciou":
        return 1 - iou + distance + g["v"] / (1 - iou + g["v"] + eps) * g["v"]
    if kind == "eiou":
        shape_w = (g["pw"] - g["tw"]) ** 2 / (g["cw"] ** 2 + eps)
        shape_h = (g["ph"] - g["th"]) ** 2 / (g["ch"] ** 2 + eps)
        return 1 - iou + distance + shape_w + shape_h
    if kind == "siou":
        # Gevorgyan 2022: Lambda = 1 - 2 sin^2(arcsin(c_h / sigma) - pi/4), c_h the y offset
        sigma = math.sqrt(g["rho2"])
        lam = 1 - 2 * math.sin(math.asin(abs(g["dy"]) / sigma) - math.pi / 4) ** 2 if sigma > 0 else 0.0
        gam = 2 - lam
        delta = (1 - math.exp(-gam * (g["dx"] / (g["cw"] + eps)) ** 2)) + (
            1 - math.exp(-gam * (g["dy"] / (g["ch"] + eps)) ** 2)
        )
        ow = abs(g["pw"] - g["tw"]) / (max(g["pw"], g["tw"]) + eps)
        oh = abs(g["ph"] - g["th"]) / (max(g["ph"], g["th"]) + eps)
        omega = (1 - math.exp(-ow)) ** theta + (1 - math.exp(-oh)) ** theta
        return 1 - iou + (delta + omega) / 2
    raise ValueError(kind)


def ref_focal_eiou(p: tuple[float, ...], t: tuple[float, ...], gamma: float = 0.5) -> float:
    """Zhang et al. 2022: IoU^gamma * L_EIoU."""
    return ref_box_terms(p, t)["iou"] ** gamma * ref_box_loss(p, t, "eiou")


def ref_alpha_iou(p: tuple[float, ...], t: tuple[float, ...], alpha: float = 3.0, kind: str = "iou") -> float:
    """He et al. 2021: 1 - IoU^a (+ ((C - U) / C)^a | + rho^2a / c^2a (+ (beta v)^a))."""
    g = ref_box_terms(p, t)
    iou = g["iou"]
    loss = 1 - iou**alpha
    if kind == "giou":
        loss += max((g["enclosing"] - g["union"]) / g["enclosing"], 0.0) ** alpha  # >= 0 up to rounding
    if kind in ("diou", "ciou"):
        loss += math.sqrt(g["rho2"]) ** (2 * alpha) / math.sqrt(g["c2"]) ** (2 * alpha)
    if kind == "ciou":
        beta = g["v"] / (1 - iou + g["v"] + _EPS)
        loss += (beta * g["v"]) ** alpha
    return loss


def ref_wiou(
    p: tuple[float, ...],
    t: tuple[float, ...],
    version: str = "v3",
    mean: float = 1.0,
    alpha: float = 1.9,
    delta: float = 3.0,
) -> float:
    """Tong et al. 2023: v1 = exp(rho^2 / (W_g^2 + H_g^2)) (1 - IoU); v3 = r * v1, r = b / (delta alpha^(b - delta))."""
    g = ref_box_terms(p, t)
    l_iou = 1 - g["iou"]
    v1 = math.exp(g["rho2"] / (g["cw"] ** 2 + g["ch"] ** 2)) * l_iou
    if version == "v1":
        return v1
    outlier = l_iou / mean
    return outlier / (delta * alpha ** (outlier - delta)) * v1


def ref_mpdiou(p: tuple[float, ...], t: tuple[float, ...], width: float, height: float) -> float:
    """Ma & Xu 2023: 1 - IoU + d1^2 / (w^2 + h^2) + d2^2 / (w^2 + h^2), w, h of the image."""
    d1 = (p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2
    d2 = (p[2] - t[2]) ** 2 + (p[3] - t[3]) ** 2
    return 1 - ref_box_terms(p, t)["iou"] + d1 / (width**2 + height**2) + d2 / (width**2 + height**2)


def _scaled(b: tuple[float, ...], ratio: float) -> tuple[float, float, float, float]:
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    hw, hh = (b[2] - b[0]) * ratio / 2, (b[3] - b[1]) * ratio / 2
    return cx - hw, cy - hh, cx + hw, cy + hh


def ref_inner_iou(p: tuple[float, ...], t: tuple[float, ...], ratio: float = 0.7, kind: str = "iou") -> float:
    """Zhang et al. 2023: L_kind + IoU - IoU(inner boxes scaled by ratio about their centres)."""
    inner = ref_box_terms(_scaled(p, ratio), _scaled(t, ratio))["iou"]
    return ref_box_loss(p, t, kind) + ref_box_terms(p, t)["iou"] - inner


def ref_nwd(p: tuple[float, ...], t: tuple[float, ...], constant: float = 12.8) -> float:
    """Wang et al. 2021: 1 - exp(-W2 / C), W2 = ||(cx, cy, w/2, h/2) - (cx', cy', w'/2, h'/2)||."""
    a = ((p[0] + p[2]) / 2, (p[1] + p[3]) / 2, (p[2] - p[0]) / 2, (p[3] - p[1]) / 2)
    b = ((t[0] + t[2]) / 2, (t[1] + t[3]) / 2, (t[2] - t[0]) / 2, (t[3] - t[1]) / 2)
    return 1 - math.exp(-math.dist(a, b) / constant)

"""Independent references of the assigners: plain Python loops over images, objects and anchors.

Each follows its paper's rules (and the authors' code where the papers are silent) one pair
at a time, with the scalar IoU of :mod:`tests.reference`; nothing here imports detloss. They
return, per image, ``{anchor: (object, soft score)}`` for the positive anchors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tests.reference import ref_similarity

Box = tuple[float, float, float, float]
Assignment = dict[int, tuple[int, float]]


def _inside(x: float, y: float, box: Sequence[float], margin: float) -> bool:
    return min(x - box[0], y - box[1], box[2] - x, box[3] - y) > margin


def _top(values: Sequence[float], k: int, largest: bool = True) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: (-values[i] if largest else values[i], i))
    return order[:k]


def ref_task_aligned(
    scores: list[list[float]],
    preds: list[Box],
    points: list[tuple[float, float]],
    labels: list[int],
    gts: list[Box],
    *,
    topk: int,
    alpha: float,
    beta: float,
    kind: str,
    rule: str,
    min_box_size: float = 0.0,
) -> Assignment:
    """TOOD's assignment for one image (``rule`` "tood" or "ultralytics", see the assigner)."""
    anchors = range(len(points))
    margin, eps = (0.01, 1e-7) if rule == "tood" else (1e-9, 1e-9)

    def region(g: Box) -> Box:
        cx, cy, w, h = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2, g[2] - g[0], g[3] - g[1]
        w, h = max(w, min_box_size), max(h, min_box_size)
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    inside = [[_inside(*points[a], region(g), margin) for a in anchors] for g in gts]
    u = [[max(ref_similarity(preds[a], g, kind), 0.0) for a in anchors] for g in gts]
    t = [[scores[a][labels[j]] ** alpha * u[j][a] ** beta for a in anchors] for j in range(len(gts))]
    positives: dict[int, list[int]] = {}
    for j in range(len(gts)):
        if rule == "ultralytics":
            masked = [t[j][a] if inside[j][a] else 0.0 for a in anchors]
            chosen = [a for a in _top(masked, topk) if inside[j][a]]
        else:
            chosen = [a for a in _top(t[j], topk) if inside[j][a] and t[j][a] > 0]
        for a in chosen:
            positives.setdefault(a, []).append(j)
    owner: dict[int, int] = {}
    for a, objs in positives.items():
        if len(objs) == 1:
            owner[a] = objs[0]
        elif rule == "ultralytics":  # the highest overlap among all objects containing the centre
            overlaps = [u[j][a] if inside[j][a] else 0.0 for j in range(len(gts))]
            owner[a] = max(range(len(gts)), key=lambda j: (overlaps[j], -j))
        else:
            owner[a] = max(objs, key=lambda j: (u[j][a], -j))
    result: Assignment = {}
    for j in set(owner.values()):
        mine = [a for a, o in owner.items() if o == j]
        max_t, max_u = max(t[j][a] for a in mine), max(u[j][a] for a in mine)
        for a in mine:
            result[a] = (j, t[j][a] * max_u / (max_t + eps))
    return result


def ref_atss(
    preds: list[Box],
    anchor_boxes: list[Box],
    level_sizes: Sequence[int],
    gts: list[Box],
    *,
    topk: int,
) -> Assignment:
    """ATSS (Zhang et al., CVPR 2020, Algorithm 1) for one image; soft score IoU(pred, object)."""
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in anchor_boxes]
    best: dict[int, tuple[float, int]] = {}
    for j, g in enumerate(gts):
        gx, gy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
        candidates: list[int] = []
        start = 0
        for size in level_sizes:
            level = range(start, start + size)
            dist = [math.hypot(centres[a][0] - gx, centres[a][1] - gy) for a in level]
            candidates += [start + i for i in _top(dist, min(topk, size), largest=False)]
            start += size
        ious = [ref_similarity(anchor_boxes[a], g, "iou") for a in candidates]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1)) if len(ious) > 1 else 0.0
        for a, v in zip(candidates, ious):
            if v >= mean + std and _inside(*centres[a], g, 0.01) and (a not in best or v > best[a][0]):
                best[a] = (v, j)
    return {a: (j, ref_similarity(preds[a], gts[j], "iou")) for a, (_, j) in best.items()}


def ref_simota(
    scores: list[list[float]],
    preds: list[Box],
    points: list[tuple[float, float]],
    strides: list[float],
    labels: list[int],
    gts: list[Box],
    *,
    radius: float,
    box_prior: bool,
) -> Assignment:
    """SimOTA for one image, the structure of YOLOX's code: compact to the candidates, then
    one object at a time."""
    near = [
        [
            abs(x - (g[0] + g[2]) / 2) < radius * s and abs(y - (g[1] + g[3]) / 2) < radius * s
            for (x, y), s in zip(points, strides)
        ]
        for g in gts
    ]
    in_box = [[_inside(x, y, g, 0.0) for x, y in points] for g in gts]
    if box_prior:
        candidates = [a for a in range(len(points)) if any(near[j][a] or in_box[j][a] for j in range(len(gts)))]
        prior = [[near[j][a] and in_box[j][a] for a in candidates] for j in range(len(gts))]
    else:
        candidates = [a for a in range(len(points)) if any(near[j][a] for j in range(len(gts)))]
        prior = [[near[j][a] for a in candidates] for j in range(len(gts))]
    if not candidates:
        return {}
    iou = [[ref_similarity(preds[a], g, "iou", eps=0.0) for a in candidates] for g in gts]  # YOLOX: no eps

    def bce(q: float, y: float) -> float:
        return -(
            y * max(math.log(q) if q > 0 else -math.inf, -100.0)
            + (1 - y) * max(math.log(1 - q) if q < 1 else -math.inf, -100.0)
        )

    cost = []
    for j in range(len(gts)):
        row = []
        for i, a in enumerate(candidates):
            cls = sum(bce(math.sqrt(p), 1.0 if c == labels[j] else 0.0) for c, p in enumerate(scores[a]))
            row.append(cls + 3.0 * -math.log(iou[j][i] + 1e-8) + 1e6 * (not prior[j][i]))
        cost.append(row)
    matched = [[0] * len(candidates) for _ in gts]
    for j in range(len(gts)):
        k = max(1, int(sum(sorted(iou[j], reverse=True)[:10])))
        for i in _top(cost[j], k, largest=False):
            matched[j][i] = 1
    result: Assignment = {}
    for i, a in enumerate(candidates):
        objs = [j for j in range(len(gts)) if matched[j][i]]
        if not objs:
            continue
        j = objs[0] if len(objs) == 1 else min(range(len(gts)), key=lambda g: (cost[g][i], g))
        result[a] = (j, iou[j][i])
    return result

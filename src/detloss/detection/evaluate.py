"""COCO box mAP with pycocotools: AP, AP50, AP75, APs, APm, APl (0-1 scale).

Files (``results.json``, ``metrics.json``, csv) keep the 0-1 scale; what is printed for a
reader (the command line, ``report.md``, tables, figures) is in percent
(:func:`as_percent`), as detection papers report COCO AP.

Definitions of COCO (Lin et al., ECCV 2014, and ``cocoapi``): AP is the mean over the IoU
thresholds 0.50:0.05:0.95 and over the categories of the 101-point interpolated precision;
AP50 and AP75 use one threshold; APs, APm, APl restrict to ground-truth areas below 32^2,
between 32^2 and 96^2, above 96^2 pixels (of the original image). At most 100 detections per
image. A metric with no ground truth to measure (e.g. APl when no object is that large) is
``None`` (pycocotools' -1). Boxes are converted here: detections arrive as ``xyxy`` tensors in
the model's input pixels and leave as COCO ``[left, top, width, height]`` in original pixels.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from detloss import DetLossError
from detloss.boxes import convert

__all__ = ["METRIC_NAMES", "as_percent", "coco_map", "to_coco_detections"]

#: Keys of the metrics dict, in pycocotools' order of ``stats[:6]``.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def as_percent(value: float | None) -> str:
    """A 0-1 metric in percent with two decimals (``n/a`` for None: nothing to measure).

    Example:
        >>> as_percent(0.18604), as_percent(None)
        ('18.60', 'n/a')
    """
    return "n/a" if value is None else f"{100 * value:.2f}"


def to_coco_detections(
    predictions: Sequence[Mapping[str, torch.Tensor]],
    targets: Sequence[Mapping[str, Any]],
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO result records from per-image predictions ``{"boxes" xyxy, "scores", "labels"}``.

    ``targets[i]`` gives ``image_id`` and ``scale`` (input pixels per original pixel, see
    :mod:`detloss.detection.data`); labels map to ``category_ids``.

    Example:
        >>> pred = [{"boxes": torch.tensor([[2.0, 4.0, 6.0, 12.0]]), "scores": torch.tensor([0.5]),
        ...          "labels": torch.tensor([1])}]
        >>> to_coco_detections(pred, [{"image_id": 7, "scale": torch.tensor([2.0, 2.0, 2.0, 2.0])}], [3, 5])
        [{'image_id': 7, 'category_id': 5, 'bbox': [1.0, 2.0, 2.0, 4.0], 'score': 0.5}]
    """
    records = []
    for pred, target in zip(predictions, targets):
        scale = torch.as_tensor(target.get("scale", torch.ones(4)), dtype=torch.float64)
        boxes = convert(pred["boxes"].detach().double().cpu() / scale, "xyxy", "xywh")
        for box, score, label in zip(boxes.tolist(), pred["scores"].tolist(), pred["labels"].tolist()):
            records.append(
                {
                    "image_id": int(target["image_id"]),
                    "category_id": int(category_ids[int(label)]),
                    "bbox": [round(v, 4) for v in box],
                    "score": round(float(score), 6),
                }
            )
    return records


def _coco(dataset: Mapping[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(dict(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_map(ground_truth: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """COCO box metrics of ``detections`` (COCO result records) against ``ground_truth``
    (a COCO-format dict with ``images``, ``annotations``, ``categories``).

    No detections at all give 0 for every metric that has ground truth (pycocotools'
    ``loadRes`` cannot take an empty list, so an empty result set is built here).

    Example (one object, found exactly: every threshold matches):
        >>> gt = {"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1, "name": "a"}],
        ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4],
        ...                        "area": 16, "iscrowd": 0}]}
        >>> metrics = coco_map(gt, [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "score": 0.9}])
        >>> round(metrics["AP"], 6), round(metrics["APs"], 6), metrics["APl"]  # area 16 < 32^2: small; none large
        (1.0, 1.0, None)
    """
    try:
        from pycocotools.cocoeval import COCOeval
    except ImportError:  # pragma: no cover - depends on the environment
        raise DetLossError(
            "coco_map(): pycocotools is needed for evaluation: pip install 'detloss[eval]'"
        ) from None
    for key in ("images", "annotations", "categories"):
        if key not in ground_truth:
            raise DetLossError.bad_argument(
                "coco_map", "ground_truth", f"a COCO dict with key {key!r}", sorted(ground_truth)
            )
    gt = _coco(ground_truth)
    dets = [dict(d) for d in detections]
    for i, d in enumerate(dets):
        w, h = d["bbox"][2], d["bbox"][3]
        d.update(id=i + 1, area=w * h, iscrowd=0)
    result = _coco({"images": ground_truth["images"], "categories": ground_truth["categories"], "annotations": dets})
    evaluator = COCOeval(gt, result, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats[:6]]
    return {name: (None if value < 0 else value) for name, value in zip(METRIC_NAMES, stats)}

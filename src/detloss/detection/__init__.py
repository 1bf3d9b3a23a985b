"""Detection end to end, on the public API of detloss only: synthetic scenes, COCO and YOLO
datasets (read and written), a tiny YOLO-style detector with two heads (YOLOv3's anchors with
objectness, :class:`TinyYOLO` + :class:`YOLOLoss`; YOLOv8-style anchor-free points with DFL,
:class:`AnchorFreeYOLO` + :class:`AnchorFreeLoss` under the assigners of :mod:`detloss.assign`),
NMS and DIoU-NMS, COCO mAP, a (distributed) trainer and the loss-comparison table.

The library never imports this package; ``detloss train`` and ``detloss compare`` do
(:func:`detloss.detection.train.train`, :func:`detloss.detection.compare.compare`).
"""

from detloss.detection.anchor_free import AnchorFreeYOLO, PointPriors, decode_points, make_point_priors
from detloss.detection.anchor_free_loss import AnchorFreeLoss
from detloss.detection.assign import ASSIGNERS, Assignment, assign_targets, build_assigner, ignore_mask, pad_targets
from detloss.detection.data import CocoDetection, SyntheticScenes, YoloDetection, collate, make_scene
from detloss.detection.evaluate import coco_map, to_coco_detections
from detloss.detection.model import Priors, TinyYOLO, decode, kmeans_anchors, make_priors
from detloss.detection.options import TrainConfig
from detloss.detection.postprocess import batched_nms, postprocess
from detloss.detection.yolo_loss import YOLOLoss

__all__ = [
    "ASSIGNERS",
    "AnchorFreeLoss",
    "AnchorFreeYOLO",
    "Assignment",
    "CocoDetection",
    "PointPriors",
    "Priors",
    "SyntheticScenes",
    "TinyYOLO",
    "TrainConfig",
    "YOLOLoss",
    "YoloDetection",
    "assign_targets",
    "batched_nms",
    "build_assigner",
    "coco_map",
    "collate",
    "decode",
    "decode_points",
    "ignore_mask",
    "kmeans_anchors",
    "make_point_priors",
    "make_priors",
    "make_scene",
    "pad_targets",
    "postprocess",
    "to_coco_detections",
]

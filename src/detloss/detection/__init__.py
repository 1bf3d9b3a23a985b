"""Detection end to end, on the public API of detloss only: synthetic scenes, COCO and YOLO
datasets (read and written), a tiny YOLO-style detector, the YOLOv3 assignment, the composite
:class:`YOLOLoss`, NMS and DIoU-NMS, COCO mAP, a (distributed) trainer and the
loss-comparison table.

The library never imports this package; ``detloss train`` and ``detloss compare`` do
(:func:`detloss.detection.train.train`, :func:`detloss.detection.compare.compare`).
"""

from detloss.detection.assign import Assignment, assign_targets, ignore_mask
from detloss.detection.data import CocoDetection, SyntheticScenes, YoloDetection, collate, make_scene
from detloss.detection.evaluate import coco_map, to_coco_detections
from detloss.detection.model import Priors, TinyYOLO, decode, kmeans_anchors, make_priors
from detloss.detection.options import TrainConfig
from detloss.detection.postprocess import batched_nms, postprocess
from detloss.detection.yolo_loss import YOLOLoss

__all__ = [
    "Assignment",
    "CocoDetection",
    "Priors",
    "SyntheticScenes",
    "TinyYOLO",
    "TrainConfig",
    "YOLOLoss",
    "YoloDetection",
    "assign_targets",
    "batched_nms",
    "coco_map",
    "collate",
    "decode",
    "ignore_mask",
    "kmeans_anchors",
    "make_priors",
    "make_scene",
    "postprocess",
    "to_coco_detections",
]

"""detloss inside the frameworks where detectors are trained.

Each submodule adapts the public API of detloss to one framework and imports that framework
only when it is used, so ``import detloss.integrations`` imports nothing beyond detloss:

- :mod:`detloss.integrations.ultralytics`: ``patch(box_loss="wiou")`` and ``DetlossTrainer`` put
  detloss's box and class losses into ultralytics' YOLO training (``v8DetectionLoss``);
- :mod:`detloss.integrations.mmdet`: every loss of :data:`detloss.LOSSES` in the OpenMMLab
  registries as ``type="detloss.<ModuleName>"``, with mmdetection's forward convention;
- :mod:`detloss.integrations.torchvision`: drop-ins for the box and focal losses of
  ``torchvision.ops`` (the same names, arguments and defaults).

The library itself never imports this package.
"""

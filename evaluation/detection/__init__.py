"""ViTDet with a feature upsampler: Mask R-CNN on a plain ViT's simple feature pyramid (LiFT section 3.5).

- ``model``: the simple feature pyramid (p3/p2 from transposed convs or from any upsampler), the torchvision
  Mask R-CNN around it with ViTDet's heads;
- ``coco``: the COCO layout (train2017/val2017 + annotations/instances_*.json), LSJ augmentation, pycocotools
  evaluation;
- ``train``: ``python -m evaluation.detection.train``, ViTDet's recipe, resumable like train_wrc.py.

The ``detection`` protocol (evaluation/protocols/detection.py) scores an extractor through a detector.
"""

"""TokenCut's metrics: box IoU and CorLoc (object discovery), maxF, IoU and accuracy (salient-object masks).

- Box IoU: boxes [x1, y1, x2, y2] in pixels (x2, y2 exclusive), yolov5's formula that TokenCut uses: the
  heights get + eps and the union + eps (eps = 1e-7), so empty boxes give 0 instead of a division by zero.
- CorLoc: the share of images whose predicted box has IoU >= 0.5 with any ground-truth box (a fraction; tables
  show percent); an image without ground-truth boxes counts as a miss.
- maxF (beta^2 = 0.3): for the thresholds t = 0, 1/255, ..., 254/255, per image precision = TP / |P > t|
  (1 when nothing is predicted) and recall = TP / |G| (1 when G is empty), F = 1.3 P R / (0.3 P + R) (0 when
  P = R = 0); F is averaged over images per threshold and maxF is the maximum of that curve.
- IoU and accuracy per image after binarising both maps (``binarise``): a prediction (bool, or values in [0, 1])
  at > 0.5, the ground truth by the stored-mask rule (any non-zero pixel is the object, as a 0/255 PNG stores it;
  also for maxF); |P n G| / |P u G| (1 when both are empty) and mean(P == G); averaged over images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IOU_EPS = 1e-7
CORLOC_IOU = 0.5
BETA2 = 0.3
THRESHOLDS = np.arange(255) / 255.0  # 0, 1/255, ..., 254/255


def box_iou(box: Sequence[float], boxes: np.ndarray | Sequence[Sequence[float]], eps: float = IOU_EPS) -> np.ndarray:
    """IoU of one box with each of K boxes (K, 4) -> (K,)."""
    b = np.asarray(box, dtype=np.float64)
    others = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    inter_w = (np.minimum(b[2], others[:, 2]) - np.maximum(b[0], others[:, 0])).clip(min=0)
    inter_h = (np.minimum(b[3], others[:, 3]) - np.maximum(b[1], others[:, 1])).clip(min=0)
    inter = inter_w * inter_h
    area = (b[2] - b[0]) * (b[3] - b[1] + eps)
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1] + eps)
    return inter / (area + areas - inter + eps)


def is_correct(box: Sequence[float], ground_truth: np.ndarray | Sequence[Sequence[float]]) -> bool:
    """Whether ``box`` localises any ground-truth box (IoU >= 0.5)."""
    gt = np.asarray(ground_truth, dtype=np.float64).reshape(-1, 4)
    return bool(gt.shape[0]) and bool((box_iou(box, gt) >= CORLOC_IOU).any())


def corloc(correct: Sequence[bool]) -> float:
    """The share of correctly localised images."""
    if not len(correct):
        raise ValueError("CorLoc of no images")
    return float(np.mean(np.asarray(correct, dtype=bool)))


def binarise(mask: np.ndarray, stored: bool = False) -> np.ndarray:
    """A boolean mask as it is; ``stored=True`` (a ground truth as stored, e.g. 0/255): any non-zero pixel; else a
    prediction, whose values must lie in [0, 1] whatever its dtype: > 0.5."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if stored:
        return mask != 0
    check_unit_range(mask)
    return mask > 0.5


def check_unit_range(prediction: np.ndarray) -> None:
    """A prediction map must hold values in [0, 1] (a 0..255 map would be thresholded on the wrong scale)."""
    if prediction.size and not (np.all(np.isfinite(prediction)) and prediction.min() >= 0 and prediction.max() <= 1):
        raise ValueError(f"a prediction map must hold values in [0, 1] (dtype {prediction.dtype}); got range "
                         f"[{prediction.min()}, {prediction.max()}]: divide a 0..255 map by 255")


def f_curve(prediction: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """F_beta (beta^2 = 0.3) of ``prediction`` (H, W) in [0, 1] at each of the 255 thresholds -> (255,)."""
    prediction = np.asarray(prediction, dtype=np.float64)
    check_unit_range(prediction)
    gt = binarise(ground_truth, stored=True)
    if prediction.shape != gt.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {gt.shape} differ in shape")
    # |P > t| and TP per threshold from sorted values: a pixel is above t for every threshold below its value
    at_or_below = np.searchsorted(np.sort(prediction.ravel()), THRESHOLDS, side="right")
    predicted = prediction.size - at_or_below
    hits = np.sort(prediction[gt])
    true_positive = hits.size - np.searchsorted(hits, THRESHOLDS, side="right")
    precision = np.where(predicted > 0, true_positive / np.maximum(predicted, 1), 1.0)
    recall = true_positive / hits.size if hits.size else np.ones_like(precision)
    denominator = BETA2 * precision + recall
    return np.where(denominator > 0, (1 + BETA2) * precision * recall / np.where(denominator > 0, denominator, 1),
                    0.0)


def max_f(curves: Sequence[np.ndarray]) -> float:
    """maxF over images: the maximum over thresholds of the per-threshold mean F."""
    if not len(curves):
        raise ValueError("maxF of no images")
    return float(np.mean(np.stack(curves), axis=0).max())


def mask_iou(prediction: np.ndarray, ground_truth: np.ndarray) -> float:
    p, g = binarise(prediction), binarise(ground_truth, stored=True)
    union = np.logical_or(p, g).sum()
    return float(np.logical_and(p, g).sum() / union) if union else 1.0


def accuracy(prediction: np.ndarray, ground_truth: np.ndarray) -> float:
    return float((binarise(prediction) == binarise(ground_truth, stored=True)).mean())

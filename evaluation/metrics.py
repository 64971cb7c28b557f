"""Dense-prediction metrics: segmentation from a confusion matrix accumulated over a whole split, depth
from per-image errors averaged over images.

Segmentation. IoU_c = TP_c / (TP_c + FP_c + FN_c). A class with an empty union (absent from both the
labels and the predictions of the whole split) has no IoU: it is reported as None and left out of
the mean (mmseg's "nanmean"); a class present in the labels but never predicted counts with IoU 0.
Pixel accuracy is TP / valid pixels (torchmetrics' micro average). Pixels labelled ``ignore_index``
are skipped; any other label outside [0, K) is an error, never silently clipped.

Depth (the probe3d / DINOv2 definitions), on pixels with min_depth < gt <= max_depth:
d_k = share with max(pred/gt, gt/pred) < 1.25^k; AbsRel = mean |pred - gt| / gt; SqRel = mean
(pred - gt)^2 / gt; RMSE; RMSE-log = sqrt mean (log pred - log gt)^2; log10 = mean |log10 pred -
log10 gt|; SILog = 100 sqrt(mean e^2 - (mean e)^2), e = log pred - log gt. Per image, then averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class ConfusionMatrix:
    """K x K counts (rows: label, columns: prediction) over every update."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """prediction and label: integer maps of the same shape."""
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
        label, prediction = label.long().flatten().cpu(), prediction.long().flatten().cpu()
        valid = label != self.ignore_index
        label, prediction = label[valid], prediction[valid]
        k = self.num_classes
        if label.numel() and (label.min() < 0 or label.max() >= k):
            bad = label[(label < 0) | (label >= k)].unique()[:5].tolist()
            raise ValueError(f"labels out of range: {bad} (expected 0..{k - 1} or ignore_index={self.ignore_index})")
        if prediction.numel() and (prediction.min() < 0 or prediction.max() >= k):
            raise ValueError(f"predictions out of range 0..{k - 1}")
        self.counts += torch.bincount(label * k + prediction, minlength=k * k).view(k, k)

    def compute(self) -> dict:
        tp = self.counts.diag().double()
        labelled, predicted = self.counts.sum(dim=1).double(), self.counts.sum(dim=0).double()
        union = labelled + predicted - tp
        iou = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
        present = [v for v in iou if v is not None]
        accuracy = [float(t / n) if n > 0 else None for t, n in zip(tp, labelled, strict=True)]
        total = float(labelled.sum())
        return {
            "miou": sum(present) / len(present) if present else float("nan"),
            "pixel_accuracy": float(tp.sum()) / total if total else float("nan"),
            "mean_class_accuracy": (sum(a for a in accuracy if a is not None)
                                    / max(1, sum(a is not None for a in accuracy))),
            "per_class_iou": iou,
            "valid_pixels": int(total),
        }


DEPTH_METRICS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")


def depth_errors(pred: torch.Tensor, gt: torch.Tensor, min_depth: float = 1e-3,
                 max_depth: float = 10.0) -> dict[str, float] | None:
    """The metrics of one image (H, W); None when it has no valid pixel."""
    valid = (gt > min_depth) & (gt <= max_depth)
    if not valid.any():
        return None
    p, g = pred[valid].double().clamp_min(min_depth), gt[valid].double()
    ratio = torch.maximum(p / g, g / p)
    e = p.log() - g.log()
    return {
        "d1": float((ratio < 1.25).double().mean()),
        "d2": float((ratio < 1.25**2).double().mean()),
        "d3": float((ratio < 1.25**3).double().mean()),
        "abs_rel": float(((p - g).abs() / g).mean()),
        "sq_rel": float(((p - g).square() / g).mean()),
        "rmse": float((p - g).square().mean().sqrt()),
        "rmse_log": float(e.square().mean().sqrt()),
        "log10": float((p.log10() - g.log10()).abs().mean()),
        "silog": 100 * math.sqrt(max(float(e.square().mean() - e.mean().square()), 0.0)),
    }


class DepthMetrics:
    """Per-image depth metrics averaged over every image with valid pixels."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0) -> None:
        self.min_depth, self.max_depth = min_depth, max_depth
        self.sums = dict.fromkeys(DEPTH_METRICS, 0.0)
        self.images = 0

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """pred and gt: (B, H, W) or (H, W) depth maps in metres."""
        if pred.shape != gt.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
        for p, g in zip(pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:]), strict=True):
            errors = depth_errors(p, g, self.min_depth, self.max_depth)
            if errors is not None:
                self.images += 1
                for key, value in errors.items():
                    self.sums[key] += value

    def compute(self) -> dict[str, float]:
        if not self.images:
            raise ValueError("no image had a valid depth pixel")
        return {key: value / self.images for key, value in self.sums.items()} | {"images": self.images}


def class_boundaries(labels: torch.Tensor) -> torch.Tensor:
    """(..., H, W) integer map -> boolean map of pixels whose right or lower neighbour has another class."""
    edges = torch.zeros_like(labels, dtype=torch.bool)
    edges[..., :, :-1] |= labels[..., :, 1:] != labels[..., :, :-1]
    edges[..., :-1, :] |= labels[..., 1:, :] != labels[..., :-1, :]
    return edges


class BoundaryFScore:
    """Boundary precision, recall and F-score over a whole split (counts summed over images).

    A predicted boundary pixel is correct when a label boundary lies within ``tolerance`` pixels
    (Chebyshev distance), and a label boundary pixel is found when a predicted one lies that close.
    An image without any boundary in either map adds nothing.
    """

    def __init__(self, tolerance: int = 2) -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels; got {tolerance}")
        self.tolerance = tolerance
        self.matched_pred = self.pred_total = self.matched_label = self.label_total = 0

    def _near(self, edges: torch.Tensor) -> torch.Tensor:
        k = 2 * self.tolerance + 1
        return torch.nn.functional.max_pool2d(edges[:, None].float(), k, 1, self.tolerance)[:, 0] > 0

    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """prediction and label: integer maps (B, H, W) or (H, W)."""
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
        pred_edges = class_boundaries(prediction.reshape(-1, *prediction.shape[-2:]).cpu())
        label_edges = class_boundaries(label.reshape(-1, *label.shape[-2:]).cpu())
        self.matched_pred += int((pred_edges & self._near(label_edges)).sum())
        self.pred_total += int(pred_edges.sum())
        self.matched_label += int((label_edges & self._near(pred_edges)).sum())
        self.label_total += int(label_edges.sum())

    def compute(self) -> dict[str, float]:
        precision = self.matched_pred / self.pred_total if self.pred_total else 0.0
        recall = self.matched_label / self.label_total if self.label_total else 0.0
        total = precision + recall
        return {"boundary_precision": precision, "boundary_recall": recall,
                "boundary_f": 2 * precision * recall / total if total else 0.0}


def cosine_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean over positions of the cosine similarity along channels (1 is perfect)."""
    return F.cosine_similarity(pred, target, dim=1).mean(dim=(1, 2))


def relative_l2_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) ||pred - target|| / ||target|| over each whole map (0 is perfect)."""
    return (pred - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1).clamp_min(1e-12)

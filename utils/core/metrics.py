"""The reference's evaluation figures, computed from a confusion matrix accumulated on the device.

The reference kept every prediction in Python lists (tens of millions of pixels on NYU) and called
scikit-learn at the end; a ``[K, K]`` count matrix holds the same information. Semantics kept:
positions whose ground truth is the ignored label are dropped; accuracy, average
accuracy, kappa and mIoU use the matrix restricted to the valid labels (so on NYU a *predicted* 0 is dropped
from them), while weighted F1 counts a predicted ignored label as a miss of the true class. Every figure is
rounded half-up to 4 decimals, as fractions in [0, 1].
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates ``counts[gt, pred]`` over batches of logits ``[B, K, ...]`` and labels ``[B, ...]``."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, device="cpu"):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = logits.argmax(dim=1).reshape(-1)
        gt = target.reshape(-1).to(pred.device).long()
        if self.counts.device != pred.device:
            self.counts = self.counts.to(pred.device)
        self.counts += torch.bincount(gt * self.num_classes + pred, minlength=self.num_classes ** 2)

    def matrix(self) -> np.ndarray:
        return self.counts.view(self.num_classes, self.num_classes).cpu().numpy()

    def compute(self) -> dict:
        return metrics_from_confusion(self.matrix(), self.ignore_index)


def round4(value: float) -> float:
    if value != value:  # NaN stays NaN (a plain float, so checkpoints load with weights_only=True)
        return float("nan")
    return float(Decimal(repr(float(value))).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def metrics_from_confusion(full: np.ndarray, ignore_index: int | None = None) -> dict:
    """The reference's metric dict from a full ``[K, K]`` matrix (rows: ground truth, columns: prediction)."""
    full = np.asarray(full, dtype=np.float64)
    valid = np.array([c for c in range(full.shape[0]) if c != ignore_index])
    rows = full[valid]                    # ground truth ignored -> dropped
    restricted = rows[:, valid]           # predictions outside the valid labels -> dropped
    total = restricted.sum()
    diag = np.diag(restricted)

    accuracy = diag.sum() / total if total else float("nan")

    # weighted F1 over valid labels: predicted ignored label counts as a miss (false negative) only
    support = rows.sum(axis=1)
    predicted = restricted.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, diag / predicted, 0.0)
        recall = np.where(support > 0, diag / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1_weighted = float((f1 * support).sum() / support.sum()) if support.sum() else float("nan")

    restricted_support = restricted.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class_recall = diag / restricted_support
        per_class_precision = diag / predicted
        union = restricted_support + predicted - diag
        iou = diag / union
    has_support = restricted_support > 0
    average_accuracy = float(per_class_recall[has_support].mean()) if has_support.any() else float("nan")
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    expected = (restricted_support * predicted).sum() / total ** 2 if total else float("nan")
    kappa = (accuracy - expected) / (1 - expected) if total and expected != 1 else float("nan")

    return {
        "accuracy": round4(accuracy),
        "f1_weighted": round4(f1_weighted),
        "average_accuracy": round4(average_accuracy),
        "kappa": round4(kappa),
        "mIoU": round4(miou),
        "precision_per_class": [round4(p) for p in per_class_precision],
    }

"""Binary response metrics as torchmetrics objects (synchronised across DDP ranks)."""

from __future__ import annotations

import torch
from torchmetrics import MeanSquaredError, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryCalibrationError,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
)


class BalancedAccuracy(MulticlassAccuracy):
    """Mean of sensitivity and specificity at a probability threshold."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__(num_classes=2, average="macro")
        self.threshold = threshold

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update((preds >= self.threshold).long(), target.long())


class BrierScore(MeanSquaredError):
    """Mean squared error between probability and outcome."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(preds, target.to(preds.dtype))


def response_metrics(prefix: str, threshold: float = 0.5, ece_bins: int = 15) -> MetricCollection:
    """AUROC, AUPRC, balanced accuracy, sensitivity, specificity, Brier score and ECE."""
    return MetricCollection(
        {
            "auroc": BinaryAUROC(),
            "auprc": BinaryAveragePrecision(),
            "balanced_accuracy": BalancedAccuracy(threshold),
            "sensitivity": BinaryRecall(threshold=threshold),
            "specificity": BinarySpecificity(threshold=threshold),
            "brier": BrierScore(),
            "ece": BinaryCalibrationError(n_bins=ece_bins, norm="l1"),
        },
        prefix=prefix,
    )

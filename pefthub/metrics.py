"""Task metrics (torchmetrics), keyed the way they are logged: ``<stage>/<name>``."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassMatthewsCorrCoef

TASK_TYPES = ("sequence_classification",)


def build_metrics(task_type: str, num_labels: int) -> MetricCollection:
    """Metrics for ``task_type``: accuracy, macro-F1 and Matthews correlation for classification."""
    if task_type == "sequence_classification":
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro"),
                "f1_macro": MulticlassF1Score(num_classes=num_labels, average="macro"),
                "mcc": MulticlassMatthewsCorrCoef(num_classes=num_labels),
            }
        )
    raise ValueError(f"task_type {task_type!r} is not supported; expected one of {TASK_TYPES}")

"""Task metrics (torchmetrics), keyed the way they are logged: ``<stage>/<name>``.

- ``sequence_classification``: accuracy, macro-F1, Matthews correlation (``mcc``, CoLA's metric).
- ``token_classification``: token accuracy over labelled positions (label ``-100`` is
  ignored: special tokens, non-first subwords) and entity-level micro precision/recall/F1
  (:class:`EntityScore`, seqeval semantics).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
)
from torchmetrics.utilities import dim_zero_cat

TASK_TYPES = ("sequence_classification", "token_classification")
IGNORE_INDEX = -100
METRIC_NAMES = {
    "sequence_classification": ("accuracy", "f1_macro", "mcc"),
    "token_classification": ("accuracy", "entity_precision", "entity_recall", "entity_f1"),
}


def metric_names(task_type: str) -> tuple[str, ...]:
    """Names of the metrics :func:`build_metrics` makes for ``task_type`` (logged as ``<stage>/<name>``)."""
    if task_type not in METRIC_NAMES:
        raise ValueError(f"task_type {task_type!r} is not supported; expected one of {TASK_TYPES}")
    return METRIC_NAMES[task_type]


class EntityScore(Metric):
    """Entity-level micro precision, recall or F1 of BIO/IOB tag sequences (seqeval).

    ``update(preds, target)`` takes tag ids of shape (batch, seq); positions whose target
    is ``-100`` are dropped, so each row becomes the word-level tag sequence (first
    subword of each word). ``compute`` maps ids to ``label_names`` and calls
    ``seqeval.metrics`` in its default (conlleval) mode: an entity counts as correct only
    if its type and both boundaries match exactly, so a partially overlapping
    prediction is one false positive *and* one false negative.
    P = TP / predicted entities, R = TP / gold entities, F1 = 2PR / (P + R) (0 when undefined).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, label_names: Sequence[str], score: str = "f1", **kwargs) -> None:
        super().__init__(**kwargs)
        if score not in ("f1", "precision", "recall"):
            raise ValueError(f"score must be f1, precision or recall, got {score!r}")
        self.label_names = list(label_names)
        self.score = score
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("lengths", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != IGNORE_INDEX
        self.preds.append(preds[keep])
        self.target.append(target[keep])
        self.lengths.append(keep.sum(dim=-1).reshape(-1))

    def compute(self) -> torch.Tensor:
        from seqeval.metrics import f1_score, precision_score, recall_score

        if not self.lengths:
            return torch.tensor(0.0)
        y_true, y_pred = self._tag_sequences()
        scorer = {"f1": f1_score, "precision": precision_score, "recall": recall_score}[self.score]
        return torch.tensor(float(scorer(y_true, y_pred, average="micro", zero_division=0)))

    def _tag_sequences(self) -> tuple[list[list[str]], list[list[str]]]:
        """(gold, predicted) tag-name sequences, one per example."""
        lengths = dim_zero_cat(self.lengths).tolist()
        names = self.label_names
        y_pred = [[names[i] for i in row.tolist()] for row in dim_zero_cat(self.preds).split(lengths)]
        y_true = [[names[i] for i in row.tolist()] for row in dim_zero_cat(self.target).split(lengths)]
        return y_true, y_pred


class EntityTypeF1(EntityScore):
    """Entity-level F1 of each entity type (seqeval's per-type report, same matching rule as
    :class:`EntityScore`): ``compute`` returns ``{type: F1}`` for every type that occurs in the
    gold or predicted tags (0 where a type is never predicted correctly)."""

    def __init__(self, label_names: Sequence[str], **kwargs) -> None:
        super().__init__(label_names, "f1", **kwargs)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        from seqeval.metrics import classification_report

        if not self.lengths:
            return {}
        y_true, y_pred = self._tag_sequences()
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
        return {name: torch.tensor(float(row["f1-score"])) for name, row in report.items() if "avg" not in name}


def build_metrics(task_type: str, num_labels: int, label_names: Sequence[str] | None = None) -> MetricCollection:
    """Metrics for ``task_type`` (see the module docstring); token tasks need ``label_names``."""
    if task_type == "token_classification":
        names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro", ignore_index=IGNORE_INDEX),
                **{f"entity_{s}": EntityScore(names, s) for s in ("precision", "recall", "f1")},
            }
        )
    if task_type == "sequence_classification":
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro"),
                "f1_macro": MulticlassF1Score(num_classes=num_labels, average="macro"),
                "mcc": MulticlassMatthewsCorrCoef(num_classes=num_labels),
            }
        )
    raise ValueError(f"task_type {task_type!r} is not supported; expected one of {TASK_TYPES}")

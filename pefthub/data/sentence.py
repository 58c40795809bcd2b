"""Sentence classification: one text field, one class label per example."""

from __future__ import annotations

from typing import Any

from datasets import DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

from pefthub.data import builtin_tasks as builtin
from pefthub.data.base import TaskDataModule


class SentenceClassificationDataModule(TaskDataModule):
    """A builtin sentence-classification task (``sst2``).

    Args:
        task: builtin task name; ``sst2`` trains on the VADER Rotten Tomatoes snippets with
            every SST-2 dev sentence removed and tests on the real GLUE SST-2 dev set
            (see ``pefthub/data/builtin/sst2/manifest.json``).
        **kwargs: the shared arguments of :class:`~pefthub.data.base.TaskDataModule`.
    """

    def __init__(self, task: str = "sst2", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.manifest = builtin.manifest(task)
        self.text_field = self.manifest.get("text_field", "text")
        self.label_field = self.manifest.get("label_field", "label")

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def primary_metric(self) -> str:
        return self.manifest.get("primary_metric", "accuracy")

    def load_splits(self) -> DatasetDict:
        files = builtin.split_files(self.task)
        # one builder per split: splits may carry different extra columns (score, idx, ...)
        splits = DatasetDict({split: load_dataset("json", data_files=path, split="train") for split, path in files.items()})
        for split, dataset in splits.items():
            labels = set(dataset.unique(self.label_field))
            bad = sorted(labels - set(range(self.num_labels)))
            if bad:
                raise ValueError(
                    f"{files[split]}: labels {bad[:5]} outside 0..{self.num_labels - 1}"
                )
        return splits

    def tokenize_batch(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
        encoded = tokenizer(batch[self.text_field], truncation=True, max_length=self.max_length)
        encoded["labels"] = batch[self.label_field]
        return encoded

    def fingerprint_parts(self) -> tuple:
        return (*super().fingerprint_parts(), self.task)

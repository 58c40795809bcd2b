"""Sentence classification: one text field, one class label per example."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from pefthub.data.labelled import LabelledTaskDataModule


class SentenceClassificationDataModule(LabelledTaskDataModule):
    """One text per example, one label: a builtin task or your own files.

    Builtin tasks: ``sst2`` (default; trains on the VADER Rotten Tomatoes snippets with
    every SST-2 dev sentence removed, tests on the real GLUE SST-2 dev set) and ``amazon``
    (VADER Amazon review snippets, label = sign of the mean rating, a fixed seeded
    split); see ``pefthub/data/builtin/<task>/manifest.json``. Your own files: e.g.
    ``format: glue_tsv, glue_task: cola, train_file: CoLA/train.tsv, ...`` or
    ``format: csv, text_field: review, label_field: stars`` (``configs/data/``).

    Args:
        text_field: name of the text field (default: the manifest's/preset's, else ``text``).
        **kwargs: the source keys of :class:`~pefthub.data.labelled.LabelledTaskDataModule`
            (``task``, ``format``, ``train_file``, ``label_field``, ``label_names``, ...)
            and the shared arguments of :class:`~pefthub.data.base.TaskDataModule`.
    """

    default_task = "sst2"

    def __init__(self, text_field: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.preset is not None and len(self.preset.text_fields) != 1:
            raise ValueError(
                f"data.glue_task={self.glue_task!r} is a sentence-pair task; use pefthub.data.PairClassificationDataModule"
            )
        self.text_field = text_field or self._declared("text_field") or "text"

    def extract(self, row: dict[str, Any], location: str) -> dict[str, Any]:
        return {"text": self._text(row, self.text_field, location)}

    def tokenize_batch(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
        encoded = tokenizer(batch["text"], truncation=True, max_length=self.max_length)
        encoded["truncated"] = [bool(e.overflowing) for e in encoded.encodings] if encoded.encodings else [False] * len(batch["text"])
        if "label" in batch:
            encoded["labels"] = batch["label"]
        return encoded

    def fingerprint_parts(self) -> tuple:
        return (*super().fingerprint_parts(), self.text_field)

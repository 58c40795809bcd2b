"""Token classification (NER): one BIO tag per word, predicted at each word's first subword."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from pefthub.data.labelled import LabelledTaskDataModule
from pefthub.metrics import IGNORE_INDEX


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Per-subword labels from per-word labels: the first subword of each word carries the
    word's label; later subwords of the same word and special tokens get ``-100``
    (ignored by the loss and the metrics).

    >>> align_labels([None, 0, 0, 0, 1, 2, 2, None], [3, 0, 1])
    [-100, 3, -100, -100, 0, 1, -100, -100]
    """
    labels, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            labels.append(IGNORE_INDEX)
        else:
            labels.append(word_labels[word])
        if word is not None:
            previous = word
    return labels


class TokenClassificationDataModule(LabelledTaskDataModule):
    """Pre-split words with one tag each (BIO/IOB), e.g. NER.

    Words are tokenised with ``is_split_into_words=True``; only the first subword of each
    word is labelled (:func:`align_labels`), so metrics are word-level. Inputs longer than
    ``max_length`` subwords are truncated: their cut-off words get no prediction and are
    left out of the loss and of the entity scores, and a warning counts them. Words the
    tokenizer maps to no subword at all (e.g. a lone zero-width space) are likewise
    unlabelled; the warning counts those too.

    Builtin task: ``ner`` (default): WNUT-16 Twitter NER (2,394 tweets, 10 entity types,
    BIO), a fixed seeded train/validation/test split. Your own files: ``format: conll``
    (CoNLL-2003 column files; token first, tag last), or ``jsonl``/``disk``/``hub`` with a
    tokens list field and a tags list field (``configs/data/conll.yaml``).

    Args:
        tokens_field: name of the field holding the list of words (default ``tokens``).
        **kwargs: the source keys of :class:`~pefthub.data.labelled.LabelledTaskDataModule`
            (``label_field`` names the per-word tag list, default ``ner_tags``) and the
            shared arguments of :class:`~pefthub.data.base.TaskDataModule`.
    """

    task_type = "token_classification"
    default_task = "ner"
    default_primary_metric = "entity_f1"
    default_label_field = "ner_tags"
    is_token_task = True
    truncation_note = " (words past the cut are not scored)"

    def __init__(self, tokens_field: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.format in ("glue_tsv", "boolq_jsonl", "csv", "tsv"):
            raise ValueError(f"data.format={self.format!r} holds no per-word tags; use conll, jsonl, disk or hub")
        self.tokens_field = tokens_field or self._declared("tokens_field") or "tokens"
        self.unaligned_words = 0

    def extract(self, row: dict[str, Any], location: str) -> dict[str, Any]:
        tokens = self._field(row, self.tokens_field, location)
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError(f"{location}: field {self.tokens_field!r} must be a non-empty list of non-empty strings")
        return {"tokens": tokens}

    def tokenize_batch(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
        if not tokenizer.is_fast:
            raise ValueError("token classification needs a fast (Rust) tokenizer to align words and subwords")
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=self.max_length)
        truncated, unaligned, labels = [], [], []
        for i in range(len(batch["tokens"])):
            word_ids = encoded.word_ids(i)
            truncated.append(bool(encoded.encodings[i].overflowing))
            present = {w for w in word_ids if w is not None}
            last = max(present, default=-1)
            unaligned.append(sum(1 for w in range(last + 1) if w not in present))
            if "label" in batch:
                labels.append(align_labels(word_ids, batch["label"][i]))
        encoded = dict(encoded)
        encoded["truncated"] = truncated
        encoded["unaligned_words"] = unaligned
        if "label" in batch:
            encoded["labels"] = labels
        return encoded

    def collator(self):
        """Pads inputs, and labels with -100."""
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(
            self.tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )

    def setup(self, stage: str | None = None) -> None:
        fresh = self.datasets is None
        super().setup(stage)
        if fresh:
            from lightning.pytorch.utilities import rank_zero_warn

            for split, dataset in self.datasets.items():
                count = sum(dataset.with_format(None)["unaligned_words"])
                if count:
                    rank_zero_warn(
                        f"{self.source_name()} {split}: {count} word(s) became no subword token "
                        "(e.g. zero-width characters); they are not scored"
                    )

    def fingerprint_parts(self) -> tuple:
        return (*super().fingerprint_parts(), self.tokens_field)

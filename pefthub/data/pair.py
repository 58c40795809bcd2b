"""Sentence-pair / yes-no classification: two text fields, one label (NLI, fact checking, BoolQ)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from pefthub.data.labelled import LabelledTaskDataModule


class PairClassificationDataModule(LabelledTaskDataModule):
    """Two texts per example joined the tokenizer's way (``[CLS] a [SEP] b [SEP]`` for BERT).

    The *first* field is the long one (passage, evidence, premise): inputs longer than
    ``max_length`` are cut from its end only (``truncation="only_first"``), so the
    question/claim/hypothesis stays whole. A row whose second field alone does not fit
    falls back to ``longest_first`` and is counted in the truncation warning.

    Builtin tasks: ``boolq`` (default; passage + question -> no/yes, the real BoolQ dev
    set split into fixed train/validation/test), ``vitaminc`` (evidence + claim ->
    supports/refutes/not_enough_info, a seeded subset of BIG-bench's VitaminC task) and
    ``rte`` (test: the real GLUE RTE dev set; train/validation: vitaminc pairs relabelled
    entailment/not_entailment, as RTE has no training data here). Your own files:
    ``format: glue_tsv, glue_task: mnli``, ``format: boolq_jsonl``, ``format: csv,
    text_fields: [premise, hypothesis]``, ... (``configs/data/``).

    Args:
        text_fields: the two text field names, long side first (default: the manifest's /
            preset's, e.g. ``[passage, question]`` for BoolQ, ``[sentence1, sentence2]``
            for RTE/MNLI).
        **kwargs: the source keys of :class:`~pefthub.data.labelled.LabelledTaskDataModule`
            and the shared arguments of :class:`~pefthub.data.base.TaskDataModule`.
    """

    default_task = "boolq"
    truncation_note = " (from the end of the first text)"

    def __init__(self, text_fields: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.preset is not None and len(self.preset.text_fields) != 2:
            raise ValueError(
                f"data.glue_task={self.glue_task!r} is a single-sentence task; use pefthub.data.SentenceClassificationDataModule"
            )
        fields = list(text_fields or self._declared("text_fields") or [])
        if len(fields) != 2:
            raise ValueError(f"data.text_fields must name exactly two fields (long side first), got {fields or None}")
        self.text_fields = fields

    def extract(self, row: dict[str, Any], location: str) -> dict[str, Any]:
        first, second = self.text_fields
        return {"text": self._text(row, first, location), "text_pair": self._text(row, second, location)}

    def tokenize_batch(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
        first, second = batch["text"], batch["text_pair"]
        try:
            encoded = tokenizer(first, second, truncation="only_first", max_length=self.max_length)
            truncated = [bool(e.overflowing) for e in encoded.encodings]
        except Exception:  # the tokenizer raises when the second text alone is too long
            encoded, truncated = None, []
            for a, b in zip(first, second, strict=True):
                try:
                    one = tokenizer(a, b, truncation="only_first", max_length=self.max_length)
                    truncated.append(bool(one.encodings[0].overflowing))
                except Exception:
                    one = tokenizer(a, b, truncation="longest_first", max_length=self.max_length)
                    truncated.append(True)
                if encoded is None:
                    encoded = {key: [] for key in one}
                for key, value in one.items():
                    encoded[key].append(value)
        encoded = dict(encoded)
        encoded["truncated"] = truncated
        if "label" in batch:
            encoded["labels"] = batch["label"]
        return encoded

    def fingerprint_parts(self) -> tuple:
        return (*super().fingerprint_parts(), tuple(self.text_fields))

"""Predictions files: what ``pefthub predict`` writes (JSONL or CSV, chosen by the suffix).

One row per input, in input order:

- sentence tasks: ``text``, ``label`` (the predicted name), ``probability`` (of that label)
  and ``probabilities`` (``{label name: probability}``; in CSV one ``p_<name>`` column each);
- pair tasks: ``text`` and ``text_pair`` as well;
- token tasks: ``tokens`` (the words) and ``tags`` (one predicted tag per word; ``null`` for
  words cut off by ``max_length``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PREDICTION_FORMATS = (".jsonl", ".csv")


def check_predictions_path(path: str | Path) -> Path:
    """``path`` if its suffix names a supported format, else a one-line ValueError."""
    path = Path(path)
    if path.suffix.lower() not in PREDICTION_FORMATS:
        raise ValueError(f"predictions_file {str(path)!r}: expected a .jsonl or .csv file name")
    return path


def sequence_rows(
    inputs: Sequence[dict[str, Any]], labels: Sequence[str], probabilities: Sequence[Sequence[float]], label_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of a sentence / pair task: the input text(s), the label, its probability, all probabilities."""
    rows = []
    for row, label, probs in zip(inputs, labels, probabilities, strict=True):
        out = {key: row[key] for key in ("text", "text_pair") if key in row}
        out["label"] = label
        out["probability"] = max(probs)
        out["probabilities"] = dict(zip(label_names, probs, strict=True))
        rows.append(out)
    return rows


def token_rows(inputs: Sequence[dict[str, Any]], tags: Sequence[Sequence[str]], word_tags: Any = None) -> list[dict[str, Any]]:
    """Rows of a token task: the words and one tag per word (``word_tags(i, tags)`` maps
    subword-position tags to words when the counts differ)."""
    rows = []
    for i, (row, predicted) in enumerate(zip(inputs, tags, strict=True)):
        words = list(row["tokens"])
        per_word = list(predicted) if word_tags is None else word_tags(i, predicted)
        per_word = (per_word + [None] * len(words))[: len(words)]
        rows.append({"tokens": words, "tags": per_word})
    return rows


def write_predictions(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` (``.jsonl``: one JSON object a line; ``.csv``: a header,
    probabilities as ``p_<label>`` columns, token lists space-joined)."""
    path = check_predictions_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if path.suffix.lower() == ".jsonl":
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path
    flat = [_flatten(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
    return path


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "probabilities":
            out.update({f"p_{name}": prob for name, prob in value.items()})
        elif isinstance(value, list):
            out[key] = " ".join("" if v is None else str(v) for v in value)
        else:
            out[key] = value
    return out


def rows_from_outputs(outputs: list[dict[str, Any]], datamodule: Any, label_names: Sequence[str], task_type: str) -> list[dict[str, Any]]:
    """Predictions rows from the batches ``predict_step`` returned and the data module's inputs."""
    split = datamodule.predict_split()
    inputs = datamodule.inputs[split].with_format(None)
    if task_type == "token_classification":
        tags = [t for batch in outputs for t in batch["label"]]
        # labelled data: predict_step kept each word's first subword already (cut-off words last);
        # unlabelled: it kept every real position, mapped back to words here
        labelled = "labels" in datamodule.datasets[split].column_names
        return token_rows(inputs, tags, None if labelled else _word_mapper(datamodule, inputs))
    labels = [label for batch in outputs for label in batch["label"]]
    probabilities = [p for batch in outputs for p in batch["probabilities"]]
    return sequence_rows(inputs, labels, probabilities, label_names)


def _word_mapper(datamodule: Any, inputs: Any):
    """Map tags predicted at every real subword position (unlabelled data) to one tag per
    word: the tag at each word's first subword."""

    def mapper(index: int, position_tags: Sequence[str]) -> list[str | None]:
        words = inputs[index]["tokens"]
        encoded = datamodule.tokenizer(words, is_split_into_words=True, truncation=True, max_length=datamodule.max_length)
        per_word: list[str | None] = [None] * len(words)
        for position, word in enumerate(encoded.word_ids()):
            if word is not None and per_word[word] is None and position < len(position_tags):
                per_word[word] = position_tags[position]
        return per_word

    return mapper


def read_texts(
    path: str | Path, text_field: str | None = None, pair_field: str | None = None, default_field: str | None = None
) -> tuple[list[str], list[str] | None]:
    """The texts (and second texts) of a ``.csv``/``.tsv``/``.jsonl`` file (or ``.txt``: one a
    line). A missing column is a one-line error naming the file and the columns it has."""
    from pefthub.data.loaders import DataFormatError, read_delimited, read_jsonl

    path = Path(path)
    suffix = path.suffix.lower().removesuffix(".gz") if path.suffix != ".gz" else Path(path.stem).suffix.lower()
    if not path.is_file():
        raise DataFormatError(f"--input: file {str(path)!r} does not exist")
    if suffix == ".txt":
        lines = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
        return [line for line in lines if line.strip()], None
    if suffix in (".csv", ".tsv"):
        split = read_delimited(path, "," if suffix == ".csv" else "\t", quoting=suffix == ".csv", key="input")
    elif suffix in (".jsonl", ".json"):
        split = read_jsonl(path, key="input")
    else:
        raise DataFormatError(f"--input {path}: expected a .csv, .tsv, .jsonl or .txt file")
    if not split.rows:
        raise DataFormatError(f"{path}: no rows")
    columns = list(split.rows[0])
    field = text_field
    if field is None:
        preferred = [name for name in (default_field, "text") if name and name in columns]
        field = preferred[0] if preferred else columns[0] if len(columns) == 1 else None
    if field is None or field not in columns:
        raise DataFormatError(f"{path}: no text column {text_field or 'text'!r} (columns: {columns}); pass --text_field")
    texts = [str(row.get(field, "")) for row in split.rows]
    pairs = [str(row.get(pair_field, "")) for row in split.rows] if pair_field else None
    return texts, pairs


def predict_file(
    adapter: str | Path, input_path: str | Path, output: str | Path | None = None, *, text_field: str | None = None,
    backbone: str | None = None, batch_size: int = 64,
) -> tuple[Path, int]:
    """Predict every text of ``input_path`` with the adapter directory ``adapter``; write the
    predictions file (default ``<input>.predictions.jsonl`` beside it); return its path and row count."""
    from pefthub.adapter_card import read_usage
    from pefthub.api import load

    usage = read_usage(adapter)
    fields = usage.get("fields") or {}
    pair_fields = fields.get("text_fields") if usage.get("input_fields") == ["text", "text_pair"] else None
    if usage.get("task_type") == "token_classification":
        raise ValueError(f"{adapter}: a token-classification adapter; use pefthub predict -c CONFIG --ckpt_path/--model.init_adapter")
    default = pair_fields[0] if pair_fields else fields.get("text_field")
    texts, pairs = read_texts(input_path, text_field, pair_fields[1] if pair_fields else None, default_field=default)
    target = Path(output) if output else Path(input_path).with_name(Path(input_path).name + ".predictions.jsonl")
    check_predictions_path(target)
    predictor = load(adapter, backbone=backbone)
    results = predictor.predict(texts, pairs, batch_size=batch_size)
    rows = []
    for i, result in enumerate(results):
        row: dict[str, Any] = {"text": texts[i]}
        if pairs is not None:
            row["text_pair"] = pairs[i]
        rows.append({**row, **result})
    return write_predictions(rows, target), len(rows)

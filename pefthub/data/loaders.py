"""Generic readers for task data files, and the label map every task family shares.

A researcher with the real benchmark files points a data module at them with a few YAML
keys (``format``, ``train_file``, ...; see :class:`~pefthub.data.labelled.LabelledTaskDataModule`).
This module reads them into plain rows, each with a *location* (``path:line``) so that a
malformed row, a missing field or an unknown label is reported where it is:

=============  ====================================================================
``format``     what it reads
=============  ====================================================================
``jsonl``      one JSON object per line, named fields
``csv``        comma-separated with a header line (RFC 4180 quoting)
``tsv``        tab-separated with a header line, no quoting
``glue_tsv``   the GLUE benchmark TSV files (``glue_task`` picks the columns: SST-2,
               CoLA (header-less), MNLI, RTE, QNLI, WNLI); test files without labels
               become unlabelled splits
``conll``      CoNLL-2003-style column files (token first, NER tag last, blank line
               between sentences, ``-DOCSTART-`` lines skipped); WNUT files too
``boolq_jsonl`` the BoolQ JSONL files (``question``, ``passage``, boolean ``answer``)
``disk``       a ``datasets`` Dataset/DatasetDict written with ``save_to_disk``
``hub``        a hub dataset id (``datasets.load_dataset``); offline, a clear error
=============  ====================================================================

Nothing here imports Lightning; the readers are plain functions.
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("jsonl", "csv", "tsv", "glue_tsv", "conll", "boolq_jsonl", "disk", "hub")
SPLITS = ("train", "validation", "test")


class DataFormatError(ValueError):
    """A data file that cannot be read as its declared format; the message names file and line."""


@dataclass
class RawSplit:
    """One split as read from its source: rows of named fields, and where each row came from.

    ``label_names`` is set when the source itself declares the label set (a ``ClassLabel``
    feature in a saved/hub dataset); ``locations[i]`` is ``path:line`` (or
    ``source[row i]``) for error messages.
    """

    source: str
    rows: list[dict[str, Any]]
    locations: list[str]
    label_names: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class FormatPreset:
    """Field names (and label set) of a known benchmark file layout."""

    text_fields: tuple[str, ...]
    label_field: str
    label_names: tuple[str, ...] | None = None
    columns: tuple[str, ...] | None = None  # for header-less files
    primary_metric: str | None = None


# GLUE TSV layouts (https://gluebenchmark.com/tasks). Labels in the TSVs are "0"/"1" for
# SST-2/CoLA/QNLI-free tasks and strings for the NLI tasks; label_names fix the id order
# (the order the GLUE/HF releases use).
GLUE_PRESETS: dict[str, FormatPreset] = {
    "sst2": FormatPreset(("sentence",), "label", ("negative", "positive")),
    "cola": FormatPreset(
        ("sentence",),
        "label",
        ("unacceptable", "acceptable"),
        columns=("source", "label", "original_label", "sentence"),
        primary_metric="mcc",
    ),
    "mnli": FormatPreset(("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction")),
    "rte": FormatPreset(("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
    "qnli": FormatPreset(("question", "sentence"), "label", ("entailment", "not_entailment")),
    "wnli": FormatPreset(("sentence1", "sentence2"), "label", ("not_entailment", "entailment")),
}
BOOLQ_PRESET = FormatPreset(("passage", "question"), "answer", ("no", "yes"))
CONLL_PRESET = FormatPreset(("tokens",), "ner_tags")


# --------------------------------------------------------------------------- file readers


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


# Python's csv module refuses fields over 131,072 characters by default; long texts are
# legitimate (the tokenizer truncates them to data.max_length), so the limit is lifted.
CSV_FIELD_LIMIT = 2**31 - 1


def _not_utf8(path: Path) -> DataFormatError:
    """The error for a file that is not UTF-8, naming the first offending line and byte."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    for line_no, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            return DataFormatError(
                f"{path}:{line_no}: byte 0x{line[error.start]:02x} at column {error.start + 1} is not valid UTF-8; "
                "pefthub reads data files as UTF-8: re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            )
    return DataFormatError(f"{path}: not valid UTF-8; pefthub reads data files as UTF-8")


def _utf8_or_error(reader: Callable[..., RawSplit]) -> Callable[..., RawSplit]:
    """Turn a ``UnicodeDecodeError`` while reading ``path`` into one line naming file and line."""

    @functools.wraps(reader)
    def wrapped(path: str | Path, *args: Any, **kwargs: Any) -> RawSplit:
        try:
            return reader(path, *args, **kwargs)
        except UnicodeDecodeError:
            raise _not_utf8(Path(path).expanduser()) from None

    return wrapped


def _check_file(path: str | Path, key: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataFormatError(f"data.{key}: file {str(path)!r} does not exist")
    return path


@_utf8_or_error
def read_jsonl(path: str | Path, key: str = "train_file") -> RawSplit:
    """Rows of a JSON-lines file (blank lines skipped; ``.gz`` read transparently)."""
    path = _check_file(path, key)
    rows, locations = [], []
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{line_no}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            locations.append(f"{path}:{line_no}")
    return RawSplit(str(path), rows, locations)


@_utf8_or_error
def read_delimited(
    path: str | Path,
    delimiter: str,
    *,
    columns: Sequence[str] | None = None,
    quoting: bool = True,
    key: str = "train_file",
) -> RawSplit:
    """Rows of a CSV/TSV file with a header line (or header-less with ``columns``).

    Every row must have exactly as many fields as the header. ``quoting=False`` splits on
    the delimiter only (the GLUE TSVs hold unbalanced quote characters). When
    ``columns`` is given and the first line consists of names that are all in
    ``columns`` (CoLA's test file has a header, its train/dev files do not), that line
    is read as a header.
    """
    path = _check_file(path, key)
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    with _open_text(path) as handle:
        if quoting:
            reader = csv.reader(handle, delimiter=delimiter)
            records = []
            start_line = 1
            for fields in reader:
                records.append((start_line, fields))
                start_line = reader.line_num + 1
        else:
            records = [
                (line_no, line.rstrip("\r\n").split(delimiter))
                for line_no, line in enumerate(handle, start=1)
            ]
    records = [(n, f) for n, f in records if f and any(x.strip() for x in f)]
    if not records:
        raise DataFormatError(f"{path}: the file is empty")
    first = [name.strip() for name in records[0][1]]
    if columns is None or set(first) <= set(columns):
        header, body = first, records[1:]
    else:
        header, body = list(columns), records
    if len(set(header)) != len(header):
        raise DataFormatError(f"{path}:{records[0][0]}: duplicate column names in header {header}")
    rows, locations = [], []
    for line_no, fields in body:
        if len(fields) != len(header):
            raise DataFormatError(
                f"{path}:{line_no}: expected {len(header)} fields ({', '.join(header)}), got {len(fields)}"
            )
        rows.append(dict(zip(header, fields, strict=True)))
        locations.append(f"{path}:{line_no}")
    return RawSplit(str(path), rows, locations)


@_utf8_or_error
def read_conll(
    path: str | Path,
    *,
    token_column: int = 0,
    tag_column: int = -1,
    key: str = "train_file",
) -> RawSplit:
    """Sentences of a CoNLL column file as rows ``{"tokens": [...], "ner_tags": [...]}``.

    Columns are whitespace-separated; a blank (or whitespace-only) line ends a sentence;
    ``-DOCSTART-`` lines are skipped. Tags are kept as written (CoNLL-2003's original
    files use IOB1, where ``I-X`` may start an entity; the entity metric reads both).
    A row's location is the line of its first token.
    """
    path = _check_file(path, key)
    # token and tag must be distinct columns: with the default (0, -1) a line needs two fields
    needed = max(token_column + 1, tag_column + 1 if tag_column >= 0 else max(2, -tag_column))
    rows, locations = [], []
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0

    def flush() -> None:
        if tokens:
            rows.append({"tokens": list(tokens), "ner_tags": list(tags)})
            locations.append(f"{path}:{first_line}")
            tokens.clear()
            tags.clear()

    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                flush()
                continue
            if fields[0] == "-DOCSTART-":
                flush()
                continue
            if len(fields) < needed:
                raise DataFormatError(
                    f"{path}:{line_no}: expected at least {needed} whitespace-separated columns "
                    f"(token column {token_column}, tag column {tag_column}), got {len(fields)}: {line.rstrip()!r}"
                )
            if not tokens:
                first_line = line_no
            tokens.append(fields[token_column])
            tags.append(fields[tag_column])
    flush()
    if not rows:
        raise DataFormatError(f"{path}: no sentences found")
    return RawSplit(str(path), rows, locations)


def _from_dataset(dataset: Any, source: str) -> RawSplit:
    """Rows of a ``datasets.Dataset``, with ``ClassLabel`` names kept per field."""
    from datasets import ClassLabel

    names: dict[str, list[str]] = {}
    for column, feature in dataset.features.items():
        inner = getattr(feature, "feature", feature)  # List(ClassLabel) for per-token tags
        if isinstance(inner, ClassLabel):
            names[column] = list(inner.names)
    rows = dataset.to_list()
    return RawSplit(source, rows, [f"{source}[row {i}]" for i in range(len(rows))], names)


def read_saved(path: str | Path, split_names: dict[str, str]) -> dict[str, RawSplit]:
    """Splits of a dataset written with ``save_to_disk`` (a DatasetDict, or one Dataset = train)."""
    from datasets import Dataset, load_from_disk

    path = Path(path).expanduser()
    if not path.exists():
        raise DataFormatError(f"data.dataset: {str(path)!r} does not exist (expected a save_to_disk directory)")
    try:
        loaded = load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataFormatError(f"data.dataset: {str(path)!r} is not a dataset saved with save_to_disk ({err})") from None
    if isinstance(loaded, Dataset):
        loaded = {"train": loaded}
    return _pick_splits(loaded, split_names, str(path))


def read_hub(name: str, config: str | None, split_names: dict[str, str]) -> dict[str, RawSplit]:
    """Splits of a hub dataset; a clear error where no hub is reachable."""
    from datasets import load_dataset

    try:
        loaded = load_dataset(name, config)
    except (ConnectionError, OSError) as err:
        raise DataFormatError(
            f"data.dataset: could not load {name!r} from the Hugging Face hub ({err}). "
            "No hub is reachable here (or HF_DATASETS_OFFLINE is set): save the dataset with "
            "`save_to_disk` where a hub is reachable and use `format: disk`, or point "
            "`train_file`/`validation_file`/`test_file` at local files."
        ) from None
    return _pick_splits(loaded, split_names, f"hub:{name}" + (f"/{config}" if config else ""))


def _pick_splits(loaded: Any, split_names: dict[str, str], source: str) -> dict[str, RawSplit]:
    available = list(loaded.keys())
    splits = {}
    for split in SPLITS:
        name = split_names.get(split, split)
        if name in loaded:
            splits[split] = _from_dataset(loaded[name], f"{source}[{name}]")
        elif split in split_names:
            raise DataFormatError(f"data.split_names: {source} has no split {name!r} (it has {available})")
    if "train" not in splits:
        raise DataFormatError(
            f"{source} has no train split (it has {available}); map one with data.split_names, e.g. {{train: {available[0] if available else 'train'}}}"
        )
    return splits


# --------------------------------------------------------------------------- labels


def label_key(value: Any) -> str | None:
    """The canonical string of a raw label: ``True`` -> ``"true"``, ``1.0`` -> ``"1"``, ``" pos "`` -> ``"pos"``.

    ``None`` and the empty string mean "no label".
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


class LabelMap:
    """Label names in id order, and the rule that turns a raw label into an id.

    A raw value ``v`` maps, in this order: (1) to the id of the name equal to
    ``label_key(v)``; (2) when the names were *declared* (config ``label_names``, a
    builtin manifest, a ``ClassLabel`` feature, a format preset) and ``v`` is an integer
    or a boolean, to ``int(v)`` if that is a valid id (GLUE's ``"0"``/``"1"``, BoolQ's
    ``false``/``true``). Anything else is an error naming the row's location.

    Inferred names (:meth:`infer`) are the sorted distinct keys of the training labels
    (numerically when all are integers; ``O`` first then by entity type, ``B`` before
    ``I``, for BIO tags).
    """

    def __init__(self, names: Sequence[str], *, declared: bool = True) -> None:
        names = [str(n) for n in names]
        if not names:
            raise ValueError("data.label_names must not be empty")
        if len(set(names)) != len(names):
            raise ValueError(f"data.label_names has duplicates: {names}")
        self.names = names
        self.declared = declared
        self._index = {name: i for i, name in enumerate(names)}

    @classmethod
    def infer(cls, values: Iterable[Any], *, bio: bool = False) -> LabelMap:
        keys = {k for k in map(label_key, values) if k is not None}
        if not keys:
            raise ValueError("cannot infer label names: the training split has no labels")
        if bio:
            def order(tag: str) -> tuple:
                if tag == "O":
                    return (0, "", "")
                prefix, _, kind = tag.partition("-")
                return (1, kind, prefix)
            names = sorted(keys, key=order)
        elif all(_is_int(k) for k in keys):
            names = sorted(keys, key=int)
        else:
            names = sorted(keys)
        return cls(names, declared=False)

    def encode(self, value: Any, location: str) -> int:
        key = label_key(value)
        if key is None:
            raise DataFormatError(f"{location}: missing label")
        if key in self._index:
            return self._index[key]
        if self.declared:
            if isinstance(value, bool):
                return int(value) if len(self.names) == 2 else self._unknown(key, location)
            if _is_int(key) and 0 <= int(key) < len(self.names):
                return int(key)
        return self._unknown(key, location)

    def _unknown(self, key: str, location: str) -> int:
        raise DataFormatError(f"{location}: label {key!r} is not one of the label names {self.names}")

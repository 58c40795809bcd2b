"""vitaminc: a seeded subset of BIG-bench's vitaminc_fact_verification, read from the
bigbench sdist tarball without installing it."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from dataset_build.manifest import BUILD_SCRIPT, label_counts, write_task
from dataset_build.sources import load_normalize
from dataset_build.splits import connected_groups

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
    normalize = load_normalize()
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
    return write_task(out_dir, "vitaminc", splits, manifest)

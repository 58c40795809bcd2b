"""Generic loaders: each format on a small fixture written here, label maps, and clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pefthub.data import (
    PairClassificationDataModule,
    SentenceClassificationDataModule,
    TokenClassificationDataModule,
)
from pefthub.data.loaders import DataFormatError, LabelMap


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> str:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _rows(module, split: str) -> list[dict]:
    return module.load_splits()[split].to_list()


# --------------------------------------------------------------------------- formats


def test_csv_with_named_columns_and_inferred_labels(tmp_path):
    train = _write(tmp_path / "train.csv", 'id,review,stars\n1,"Great, really great",pos\n2,awful,neg\n3,"said ""meh""",neg\n')
    val = _write(tmp_path / "val.csv", "id,review,stars\n7,fine,pos\n")
    data = SentenceClassificationDataModule(
        format="csv", train_file=train, validation_file=val, text_field="review", label_field="stars", backbone="tiny-bert"
    )
    assert data.label_names == ["neg", "pos"]  # sorted, inferred from train
    assert _rows(data, "train") == [
        {"text": "Great, really great", "label": 1},
        {"text": "awful", "label": 0},
        {"text": 'said "meh"', "label": 0},
    ]
    assert _rows(data, "validation") == [{"text": "fine", "label": 1}]
    assert data.primary_metric == "accuracy"


def test_jsonl_pairs_with_declared_label_names(tmp_path):
    rows = [
        {"premise": "A man sleeps.", "hypothesis": "A person rests.", "label": "entailment"},
        {"premise": "A man sleeps.", "hypothesis": "A man runs.", "label": "contradiction"},
        {"premise": "A dog.", "hypothesis": "A cat.", "label": 1},  # declared names: ints are ids
    ]
    data = PairClassificationDataModule(
        format="jsonl",
        train_file=_jsonl(tmp_path / "train.jsonl", rows),
        text_fields=["premise", "hypothesis"],
        label_names=["entailment", "neutral", "contradiction"],
        backbone="tiny-bert",
    )
    assert [r["label"] for r in _rows(data, "train")] == [0, 2, 1]
    assert _rows(data, "train")[0]["text_pair"] == "A person rests."


def test_glue_tsv_sst2_rte_and_mnli_layouts(tmp_path):
    sst = _write(tmp_path / "sst_train.tsv", "sentence\tlabel\nit 's \" great\t1\nbad .\t0\n")
    data = SentenceClassificationDataModule(format="glue_tsv", glue_task="sst2", train_file=sst, backbone="tiny-bert")
    assert data.label_names == ["negative", "positive"]
    assert _rows(data, "train") == [{"text": "it 's \" great", "label": 1}, {"text": "bad .", "label": 0}]

    rte = _write(tmp_path / "rte_dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA b.\tA.\tentailment\n1\tC d.\tE.\tnot_entailment\n")
    data = PairClassificationDataModule(format="glue_tsv", glue_task="rte", train_file=rte, backbone="tiny-bert")
    assert _rows(data, "train") == [
        {"text": "A b.", "text_pair": "A.", "label": 0},
        {"text": "C d.", "text_pair": "E.", "label": 1},
    ]

    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    mnli_train = _write(tmp_path / "mnli_train.tsv", header + "0\t1\t1n\tfiction\tP one.\tH one.\tneutral\tneutral\n"
                        "1\t2\t2c\tfiction\tP two.\tH two.\tcontradiction\tcontradiction\n"
                        "2\t3\t3e\tfiction\tP 3.\tH 3.\tentailment\tentailment\n")  # fmt: skip
    mnli_test = _write(tmp_path / "mnli_test.tsv", "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\n0\t9\t9\tx\tP.\tH.\n")
    data = PairClassificationDataModule(
        format="glue_tsv", glue_task="mnli", train_file=mnli_train, test_file=mnli_test, backbone="tiny-bert"
    )
    with pytest.warns(UserWarning, match="the test split is unlabelled"):
        splits = data.load_splits()
    assert [r["label"] for r in splits["train"]] == [1, 2, 0]
    assert splits["test"].to_list() == [{"text": "P.", "text_pair": "H."}]


def test_glue_tsv_cola_headerless_with_mcc_as_primary_metric(tmp_path):
    train = _write(tmp_path / "train.tsv", "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tOne more pseudo generalization.\n")
    data = SentenceClassificationDataModule(format="glue_tsv", glue_task="cola", train_file=train, backbone="tiny-bert")
    assert data.primary_metric == "mcc"
    assert data.label_names == ["unacceptable", "acceptable"]
    assert _rows(data, "train") == [
        {"text": "Our friends won't buy this analysis.", "label": 1},
        {"text": "One more pseudo generalization.", "label": 0},
    ]


def test_conll_columns_docstart_and_blank_lines(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\ncall NN I-NP O\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
    )
    data = TokenClassificationDataModule(format="conll", train_file=_write(tmp_path / "eng.train", text), backbone="tiny-bert")
    assert data.label_names == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    assert _rows(data, "train") == [
        {"tokens": ["EU", "rejects", "German", "call"], "label": [2, 0, 1, 0]},
        {"tokens": ["Peter", "Blackburn"], "label": [3, 4]},
    ]
    assert data.primary_metric == "entity_f1"


def test_boolq_jsonl(tmp_path):
    rows = [
        {"question": "is it true", "title": "T", "answer": True, "passage": "It is true."},
        {"question": "is it false", "title": "T", "answer": False, "passage": "It is not."},
    ]
    data = PairClassificationDataModule(format="boolq_jsonl", train_file=_jsonl(tmp_path / "train.jsonl", rows), backbone="tiny-bert")
    assert data.label_names == ["no", "yes"]
    assert _rows(data, "train") == [
        {"text": "It is true.", "text_pair": "is it true", "label": 1},
        {"text": "It is not.", "text_pair": "is it false", "label": 0},
    ]


def test_save_to_disk_keeps_classlabel_names(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=["O", "B-PER", "I-PER"]))})
    splits = DatasetDict(
        {
            "train": Dataset.from_dict({"tokens": [["Ann", "Lee", "ran"]], "ner_tags": [[1, 2, 0]]}, features=features),
            "dev": Dataset.from_dict({"tokens": [["Bo", "ran"]], "ner_tags": [[1, 0]]}, features=features),
        }
    )
    splits.save_to_disk(str(tmp_path / "saved"))
    data = TokenClassificationDataModule(
        format="disk", dataset=str(tmp_path / "saved"), split_names={"validation": "dev"}, backbone="tiny-bert"
    )
    assert data.label_names == ["O", "B-PER", "I-PER"]
    assert _rows(data, "validation") == [{"tokens": ["Bo", "ran"], "label": [1, 0]}]
    data.setup("fit")
    assert len(data.datasets["train"]) == 1


def test_hub_without_a_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = PairClassificationDataModule(format="hub", dataset="nyu-mll/glue", dataset_config="rte", text_fields=["sentence1", "sentence2"], backbone="tiny-bert")
    with pytest.raises(DataFormatError, match=r"could not load 'nyu-mll/glue'.*format: disk"):
        data.load_splits()


# --------------------------------------------------------------------------- errors naming file and line


@pytest.mark.parametrize(
    ("name", "content", "module", "kwargs", "line"),
    [
        ("bad.csv", "text,label\nfine,1\ntoo,many,fields\n", SentenceClassificationDataModule, {"format": "csv"}, 3),
        ("bad.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": \n', SentenceClassificationDataModule, {"format": "jsonl"}, 3),
        ("bad.tsv", "sentence\tlabel\nok\t1\nno label here\n", SentenceClassificationDataModule, {"format": "glue_tsv", "glue_task": "sst2"}, 3),
        ("bad.conll", "EU B-ORG\nrejects O\n\nlonely\n", TokenClassificationDataModule, {"format": "conll"}, 4),
        ("missing.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n', SentenceClassificationDataModule, {"format": "jsonl"}, 2),
        ("nolabel.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', SentenceClassificationDataModule, {"format": "jsonl"}, 2),
        ("empty.jsonl", '{"text": "a", "label": 1}\n{"text": "  ", "label": 0}\n', SentenceClassificationDataModule, {"format": "jsonl"}, 2),
        ("tags.jsonl", '{"tokens": ["a", "b"], "ner_tags": ["O"]}\n', TokenClassificationDataModule, {"format": "jsonl"}, 1),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, name, content, module, kwargs, line):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataFormatError, match=rf"{name}:{line}: "):
        module(train_file=path, backbone="tiny-bert", **kwargs).load_splits()


def test_a_label_train_never_saw_is_an_error_naming_the_row(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    val = _jsonl(tmp_path / "val.jsonl", [{"text": "c", "label": "pos"}, {"text": "d", "label": "neutral"}])
    data = SentenceClassificationDataModule(format="jsonl", train_file=train, validation_file=val, backbone="tiny-bert")
    with pytest.raises(DataFormatError, match=r"val.jsonl:2: label 'neutral' is not one of the label names \['neg', 'pos'\]"):
        data.load_splits()
    # with declared names, a label that is declared but absent from train is still an error
    data = SentenceClassificationDataModule(
        format="jsonl", train_file=train, validation_file=val, label_names=["neg", "neutral", "pos"], backbone="tiny-bert"
    )
    with pytest.raises(DataFormatError, match=r"val.jsonl:2: label 'neutral' never occurs in the training split"):
        data.load_splits()


def test_unseen_tag_in_token_eval_is_an_error(tmp_path):
    train = _write(tmp_path / "train.txt", "Ann B-PER\nran O\n")
    test = _write(tmp_path / "test.txt", "Bo B-PER\n\nin O\nRome B-LOC\n")
    data = TokenClassificationDataModule(format="conll", train_file=train, test_file=test, backbone="tiny-bert")
    with pytest.raises(DataFormatError, match=r"test.txt:3: label 'B-LOC'"):
        data.load_splits()


def test_configuration_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.format must be one of"):
        SentenceClassificationDataModule(format="xml", train_file="x")
    # a config's builtin task gives way to your own files (issue 14); without files the error names the flag
    with pytest.raises(ValueError, match=r"data.format 'csv' needs its files: add --data.test_file FILE"):
        SentenceClassificationDataModule(task="sst2", format="csv")
    assert SentenceClassificationDataModule(task="sst2", format="csv", test_file="x").task is None
    with pytest.raises(ValueError, match="sentence-pair task; use pefthub.data.PairClassificationDataModule"):
        SentenceClassificationDataModule(format="glue_tsv", glue_task="mnli", train_file="x")
    with pytest.raises(ValueError, match="data.primary_metric must be one of"):
        PairClassificationDataModule(task="boolq", primary_metric="entity_f1")
    with pytest.raises(ValueError, match="data.text_fields must name exactly two fields"):
        PairClassificationDataModule(format="jsonl", train_file="x")
    with pytest.raises(DataFormatError, match="data.train_file: file .* does not exist"):
        SentenceClassificationDataModule(format="jsonl", train_file=str(tmp_path / "nope.jsonl")).load_splits()
    with pytest.raises(ValueError, match="unknown builtin task 'sst3'"):
        SentenceClassificationDataModule(task="sst3")


# --------------------------------------------------------------------------- label maps


def test_label_map_rules():
    assert LabelMap.infer(["10", 9, "2"]).names == ["2", "9", "10"]
    assert LabelMap.infer(["I-PER", "O", "B-PER", "B-LOC"], bio=True).names == ["O", "B-LOC", "B-PER", "I-PER"]
    declared = LabelMap(["negative", "positive"])
    assert [declared.encode(v, "x") for v in ("positive", "0", 1, 1.0, True, False)] == [1, 0, 1, 1, 1, 0]
    with pytest.raises(DataFormatError, match="f.tsv:9: label '2'"):
        declared.encode("2", "f.tsv:9")
    inferred = LabelMap.infer(["pos", "neg"])
    with pytest.raises(DataFormatError, match="label '0'"):
        inferred.encode(0, "here")  # inferred names are never indexed by integer


def test_label_map_is_saved_and_checked_on_load(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    data = SentenceClassificationDataModule(format="jsonl", train_file=train, backbone="tiny-bert")
    state = data.state_dict()
    assert state == {"label_names": ["neg", "pos"]}
    data.load_state_dict(state)
    with pytest.raises(ValueError, match=r"trained with label names \['pos', 'neg'\]"):
        data.load_state_dict({"label_names": ["pos", "neg"]})


def test_csv_field_longer_than_the_csv_module_default_is_read_whole(tmp_path):
    from pefthub.data.loaders import read_delimited

    long_text = "word " * 40_000  # 200,000 characters: over csv's default 131,072 field limit
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long_text}",pos\nshort,neg\n', encoding="utf-8")
    split = read_delimited(path, ",")
    assert [row["text"] for row in split.rows] == [long_text, "short"]
    assert split.locations == [f"{path}:2", f"{path}:3"]


def test_non_utf8_byte_is_reported_with_file_line_and_column(tmp_path):
    from pefthub.data.loaders import DataFormatError, read_conll, read_delimited

    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"text,label\nfine,pos\n" + "na\xefve,neg\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(csv_path))}:3: byte 0xef at column 3 is not valid UTF-8"):
        read_delimited(csv_path, ",")
    conll_path = tmp_path / "latin1.conll"
    conll_path.write_bytes(b"EU B-ORG\n\n" + "Gen\xe8ve B-LOC\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(conll_path))}:3: byte 0xe8"):
        read_conll(conll_path)

"""Use what you trained (issue 14), in-process on tiny-bert: a run given by flags alone gets
pefthub's logger and checkpointing; `predict` writes a predictions file whose labels and
probabilities are the model's; `test`/`predict` on a new file take the label names from the
checkpoint, let data.format + files override a config's builtin task, and write into the run
they evaluate instead of a new version folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from pefthub.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny" / "lora_sst2.yaml")
WORDS = {"positive": ["good", "great", "fun", "lovely"], "negative": ["bad", "awful", "dull", "boring"]}


def _rows(count: int) -> list[tuple[str, str]]:
    rows = []
    for i in range(count):
        label = "positive" if i % 2 else "negative"
        words = WORDS[label]
        rows.append((f"a {words[i % 4]} film , {words[(i + 1) % 4]} acting", label))
    return rows


def _write_csv(path: Path, rows: list[tuple], header: tuple[str, ...]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def flags_run(tmp_path_factory) -> Path:
    """`pefthub fit` with flags only (no YAML) on a user's CSV."""
    import os

    root = tmp_path_factory.mktemp("flags")
    train = _write_csv(root / "train.csv", _rows(32), ("text", "label"))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", "--model", "pefthub.methods.LoRAModule", "--model.backbone", "tiny-bert", "--model.rank", "4",
              "--data", "pefthub.data.SentenceClassificationDataModule", "--data.format", "csv",
              "--data.train_file", str(train), "--data.validation_file", str(train), "--data.max_length", "32",
              "--data.batch_size", "8", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.log_every_n_steps", "1", "--seed_everything", "0"])
    finally:
        os.chdir(cwd)
    return root


def test_flags_alone_get_tensorboard_under_runs_and_best_and_last_checkpoints(flags_run):
    run = flags_run / "runs" / "pefthub" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file() and list((run / "checkpoints").glob("best-*.ckpt"))
    assert not (flags_run / "lightning_logs").exists()
    usage = json.loads((run / "adapter" / "usage.json").read_text())
    assert usage["backbone"] == "tiny-bert" and usage["label_names"] == ["negative", "positive"]
    assert usage["max_length"] == 32 and usage["input_fields"] == ["text"] and usage["task_type"] == "sequence_classification"


def _expected(checkpoint: Path, texts: list[str]) -> torch.Tensor:
    from pefthub.backbones import load_tokenizer
    from pefthub.methods import LoRAModule

    module = LoRAModule(backbone="tiny-bert", rank=4, label_names=["negative", "positive"]).eval()
    module.load_trainable_from_checkpoint(checkpoint)
    batch = load_tokenizer("tiny-bert")(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return module(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).softmax(-1)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_predict_writes_the_models_labels_and_probabilities_into_the_run(flags_run, capsys, monkeypatch, suffix):
    monkeypatch.chdir(flags_run)
    texts = ["a great film , lovely acting", "a dull film , boring acting", "an odd one"]
    new = _write_csv(flags_run / "new.csv", [(t,) for t in texts], ("text",))
    run = flags_run / "runs" / "pefthub" / "version_0"
    config_before = (run / "config.yaml").read_bytes()
    # jsonl: `--ckpt_path last` (found through the default logger); csv: an explicit best checkpoint
    checkpoint = run / "checkpoints" / "last.ckpt" if suffix == "jsonl" else next((run / "checkpoints").glob("best-*.ckpt"))
    args = ["predict", "--model", "pefthub.methods.LoRAModule", "--data", "pefthub.data.SentenceClassificationDataModule",
            "--data.format", "csv", "--data.predict_file", str(new), "--trainer.enable_progress_bar", "false",
            "--ckpt_path", "last" if suffix == "jsonl" else str(checkpoint)]
    if suffix == "csv":
        args += ["--predictions_file", str(flags_run / "out" / "p.csv")]
    main(args)
    written = run / "predict" / "predictions.jsonl" if suffix == "jsonl" else flags_run / "out" / "p.csv"
    line = next(x for x in capsys.readouterr().out.splitlines() if "predictions to" in x)
    assert line.startswith("pefthub: wrote 3 predictions to ") and Path(line.split(" to ", 1)[1]).resolve() == written.resolve()
    probabilities = _expected(checkpoint, texts)
    names = ["negative", "positive"]
    if suffix == "jsonl":
        rows = [json.loads(line) for line in written.read_text().splitlines()]
        assert [r["text"] for r in rows] == texts
        got = torch.tensor([[r["probabilities"][n] for n in names] for r in rows])
    else:
        rows = list(csv.DictReader(written.open(encoding="utf-8")))
        assert [r["text"] for r in rows] == texts
        got = torch.tensor([[float(r[f"p_{n}"]) for n in names] for r in rows])
    assert [r["label"] for r in rows] == [names[i] for i in probabilities.argmax(-1).tolist()]
    torch.testing.assert_close(got, probabilities, rtol=1e-4, atol=1e-5)
    assert not (flags_run / "runs" / "pefthub" / "version_1").exists()
    assert (run / "config.yaml").read_bytes() == config_before  # the training run's files are untouched


def test_test_on_a_new_csv_with_a_builtin_task_config_and_labels_from_the_checkpoint(flags_run, capsys, monkeypatch):
    monkeypatch.chdir(flags_run)
    labelled = _write_csv(flags_run / "labelled.csv", _rows(6), ("text", "label"))
    best = next((flags_run / "runs" / "pefthub" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    for _ in range(2):  # a second test run reuses the same folder
        main(["test", "-c", TINY, "--data.format", "csv", "--data.test_file", str(labelled), "--ckpt_path", str(best)])
    assert "test/accuracy" in capsys.readouterr().out
    test_dir = flags_run / "runs" / "pefthub" / "version_0" / "test"
    assert list(test_dir.glob("events.out.tfevents.*"))
    assert not (flags_run / "runs" / "pefthub" / "version_1").exists() and not (flags_run / "runs" / "tiny").exists()


def test_format_without_files_over_a_builtin_task_names_the_flag_to_add(flags_run, capsys, monkeypatch):
    monkeypatch.chdir(flags_run)
    with pytest.raises(SystemExit):
        main(["test", "-c", TINY, "--data.format", "csv"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("pefthub: error: data.format 'csv' needs its files: add --data.test_file FILE")


TEXTS = ["a great film , lovely acting", "a dull film , boring acting", "an odd one"]


def _adapter_and_best(flags_run: Path) -> tuple[Path, Path]:
    run = flags_run / "runs" / "pefthub" / "version_0"
    return run / "adapter", next((run / "checkpoints").glob("best-*.ckpt"))


def test_pefthub_load_predict_matches_the_trained_model(flags_run):
    import pefthub

    adapter, best = _adapter_and_best(flags_run)
    results = pefthub.load(adapter, device="cpu").predict(TEXTS, batch_size=2)
    expected = _expected(best, TEXTS)
    assert [r["label"] for r in results] == [["negative", "positive"][i] for i in expected.argmax(-1).tolist()]
    got = torch.tensor([[r["probabilities"]["negative"], r["probabilities"]["positive"]] for r in results])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_short_form_predict_with_an_adapter_needs_no_config(flags_run, tmp_path, capsys):
    import shutil

    adapter, best = _adapter_and_best(flags_run)
    shared = shutil.copytree(adapter, tmp_path / "shared-adapter")  # "elsewhere": only the directory travels
    new = _write_csv(tmp_path / "new.csv", [(t,) for t in TEXTS], ("text",))
    main(["predict", "--adapter", str(shared), "--input", str(new)])
    written = tmp_path / "new.csv.predictions.jsonl"
    assert capsys.readouterr().out.strip() == f"pefthub: wrote 3 predictions to {written}"
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    expected = _expected(best, TEXTS)
    assert [r["text"] for r in rows] == TEXTS
    assert [r["label"] for r in rows] == [["negative", "positive"][i] for i in expected.argmax(-1).tolist()]


def test_export_merged_loads_in_transformers_alone_with_equal_logits(flags_run, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    adapter, best = _adapter_and_best(flags_run)
    main(["export", "--format", "merged", str(adapter), str(tmp_path / "merged")])
    model = AutoModel.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    head = load_file(str(tmp_path / "merged" / "pefthub_head.safetensors"))
    meta = json.loads((tmp_path / "merged" / "pefthub_head.json").read_text())
    assert meta["pooling"] == "mean" and meta["label_names"] == ["negative", "positive"]
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    logits = ((hidden * mask).sum(1) / mask.sum(1)) @ head["weight"].T + head["bias"]
    torch.testing.assert_close(logits.softmax(-1), _expected(best, TEXTS), rtol=1e-4, atol=1e-5)


def test_export_merged_refuses_a_token_routed_adapter_in_one_line(tmp_path, capsys):
    from pefthub.methods import UniHyperLoRAModule

    UniHyperLoRAModule(backbone="tiny-bert", num_atoms=16, d0=32, max_flop_overhead=None, max_adapter_bytes=None).save_adapter(tmp_path / "uni")
    with pytest.raises(SystemExit):
        main(["export", "--format", "merged", str(tmp_path / "uni"), str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "routes each token to its own atoms, so it has no merged weights" in error[0]


def test_test_ends_with_one_summary_line(flags_run, capsys, monkeypatch):
    monkeypatch.chdir(flags_run)
    labelled = _write_csv(flags_run / "summary.csv", _rows(6), ("text", "label"))
    adapter, best = _adapter_and_best(flags_run)
    main(["test", "-c", TINY, "--data.format", "csv", "--data.test_file", str(labelled), "--ckpt_path", str(best)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("pefthub: test accuracy ") and f"on {labelled} (6) · checkpoint {best}" in last


def test_plain_progress_lines_replace_the_bar_when_stdout_is_not_a_terminal(capsys, tmp_path):
    import lightning.pytorch as pl

    from pefthub.callbacks.plain_progress import PlainProgress
    from pefthub.cli import _plain_progress_when_not_a_terminal
    from pefthub.data import SentenceClassificationDataModule
    from pefthub.methods import LoRAModule

    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=True,
                         limit_val_batches=0, log_every_n_steps=1, enable_model_summary=False, default_root_dir=tmp_path)
    _plain_progress_when_not_a_terminal(trainer)  # pytest's captured stdout is not a TTY
    assert trainer.progress_bar_callback is None
    progress = next(c for c in trainer.callbacks if isinstance(c, PlainProgress))
    progress.min_interval_s = 0
    data = SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", train_limit=24, eval_limit=8, batch_size=8, max_length=16)
    trainer.fit(LoRAModule(backbone="tiny-bert", rank=2), datamodule=data)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pefthub: epoch")]
    assert [line.split(" · ")[1] for line in lines] == ["step 1/3 (33%)", "step 2/3 (67%)", "step 3/3 (100%)"]
    assert all(" · loss " in line and " steps/s · eta " in line for line in lines)


def test_test_with_model_init_adapter_takes_labels_from_the_adapter_and_matches_the_checkpoint(flags_run, capsys, monkeypatch):
    monkeypatch.chdir(flags_run)
    labelled = _write_csv(flags_run / "adapter-test.csv", _rows(8), ("text", "label"))
    adapter, best = _adapter_and_best(flags_run)
    common = ["test", "-c", TINY, "--data.format", "csv", "--data.test_file", str(labelled)]
    main([*common, "--ckpt_path", str(best)])
    from_checkpoint = capsys.readouterr().out.strip().splitlines()[-1]
    # the tiny config's LoRA has alpha 8, the adapter's run 16: the file's scaling is applied
    main([*common, "--model.init_adapter", str(adapter)])
    from_adapter = capsys.readouterr().out.strip().splitlines()[-1]
    assert from_adapter.split(" · ")[0] == from_checkpoint.split(" · ")[0]
    assert from_adapter.startswith("pefthub: test accuracy ") and f"adapter {adapter} (" in from_adapter
    assert (adapter.parent / "test").is_dir() and not (flags_run / "runs" / "tiny").exists()


def _predict_rows(module, data, root: Path):
    import lightning.pytorch as pl

    from pefthub.predict import rows_from_outputs

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root)
    outputs = trainer.predict(module.eval(), datamodule=data)
    return rows_from_outputs(outputs, data, module.label_names, module.task_type)


def test_token_task_predictions_are_one_tag_per_word_from_each_words_first_subword(tmp_path):
    from pefthub.data import TokenClassificationDataModule
    from pefthub.methods import LoRAModule

    sentences = [["Ada", "Lovelace", "lived", "in", "London"], ["unbelievably", "long", "words", "here"]]
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps({"tokens": words}) + "\n" for words in sentences))  # no tags: unlabelled
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    data = TokenClassificationDataModule(format="jsonl", predict_file=str(path), label_names=names, backbone="tiny-bert", max_length=32)
    torch.manual_seed(0)
    module = LoRAModule(backbone="tiny-bert", rank=2, num_labels=5, label_names=names, task_type="token_classification")
    rows = _predict_rows(module, data, tmp_path)
    assert [row["tokens"] for row in rows] == sentences
    tokenizer = data.tokenizer
    for row, words in zip(rows, sentences, strict=True):
        encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            tags = module(encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids"))[0].argmax(-1)
        first = {}
        for position, word in enumerate(encoded.word_ids()):
            if word is not None:
                first.setdefault(word, position)
        assert row["tags"] == [names[int(tags[first[i]])] for i in range(len(words))]


def test_pair_task_predictions_carry_both_texts(tmp_path):
    from pefthub.data import PairClassificationDataModule
    from pefthub.methods import LoRAModule

    path = _write_csv(tmp_path / "pairs.csv", [("it rained all day", "the ground is wet"), ("a cat sat", "no animal sat")],
                      ("premise", "hypothesis"))
    data = PairClassificationDataModule(format="csv", predict_file=str(path), text_fields=["premise", "hypothesis"],
                                        label_names=["entailment", "not_entailment"], backbone="tiny-bert", max_length=32)
    module = LoRAModule(backbone="tiny-bert", rank=2, label_names=["entailment", "not_entailment"])
    rows = _predict_rows(module, data, tmp_path)
    assert [(r["text"], r["text_pair"]) for r in rows] == [("it rained all day", "the ground is wet"), ("a cat sat", "no animal sat")]
    assert all(set(r["probabilities"]) == {"entailment", "not_entailment"} and r["label"] in r["probabilities"] for r in rows)


def test_summary_line_names_metric_data_checkpoint_and_adapter(tmp_path):
    import torch as _torch

    from pefthub.summary import summary_line

    class Data:
        primary_metric, task, files = "accuracy", "sst2", {}

        def source_name(self) -> str:
            return "sst2"

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter.safetensors").write_bytes(b"x" * 1_350_000)
    line = summary_line({"val/accuracy": _torch.tensor(0.86351), "val/mcc": _torch.tensor(0.7271)}, "val", Data(), "best.ckpt",
                        tmp_path / "adapter", 872, label="best val")
    assert line == f"pefthub: best val accuracy 0.8635 (mcc 0.7271) on sst2 validation (872) · checkpoint best.ckpt · adapter {tmp_path / 'adapter'} (1.35 MB)"


def test_a_token_run_that_finds_no_entity_says_what_usually_fixes_it():
    import torch as _torch

    from pefthub.summary import NO_ENTITY_HINT, summary_line

    class Data:
        primary_metric, task, files = "entity_f1", "ner", {}

        def source_name(self) -> str:
            return "ner"

    zero = summary_line({"test/entity_f1": _torch.tensor(0.0), "test/accuracy": _torch.tensor(0.9365)}, "test", Data())
    learned = summary_line({"test/entity_f1": _torch.tensor(0.47), "test/accuracy": _torch.tensor(0.957)}, "test", Data())
    assert zero.endswith(NO_ENTITY_HINT) and "model.head_lr" in zero
    assert NO_ENTITY_HINT not in learned

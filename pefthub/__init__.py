"""pefthub: parameter-efficient fine-tuning methods, compared honestly, on PyTorch Lightning."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(directory: Any, backbone: str | None = None, device: str | None = None) -> Any:
    """``pefthub.load(adapter_dir).predict(texts)``: see :func:`pefthub.api.load`."""
    from pefthub.api import load as _load

    return _load(directory, backbone=backbone, device=device)

"""Adapter files: one ``adapter.safetensors`` (tensors) + one ``adapter_config.json``.

Loading never unpickles: tensors come only through safetensors, configuration only
through JSON. A pickle (``.bin``/``.pt``/``.ckpt``) is refused before it is opened.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


class AdapterFileError(ValueError):
    """An adapter file that is missing, unsafe or malformed; the message names the file."""


def _atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash mid-save
    never leaves a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_adapter(directory: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``tensors`` (made contiguous, detached, on CPU) and ``config`` into ``directory``."""
    directory = Path(directory)
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    text = config_text(config)
    _atomic_write_bytes(directory / WEIGHTS_NAME, lambda tmp: save_file(cpu, tmp, metadata={"format": "pt"}))

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    _atomic_write_bytes(directory / CONFIG_NAME, write_json)
    return directory


def config_text(config: dict[str, Any]) -> str:
    """The text of ``adapter_config.json`` as :func:`save_adapter` writes it for ``config``."""
    return json.dumps({"format_version": FORMAT_VERSION, **config}, indent=2, sort_keys=True) + "\n"


def _resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterFileError(
            f"{path}: refusing to load a pickle-based file ({path.suffix}); pefthub adapters are "
            f"{WEIGHTS_NAME} + {CONFIG_NAME} (safetensors + JSON), which load without executing code"
        )
    if path.is_dir():
        return path / WEIGHTS_NAME, path / CONFIG_NAME
    if path.name == CONFIG_NAME:
        return path.with_name(WEIGHTS_NAME), path
    return path, path.with_name(CONFIG_NAME)


def load_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an adapter directory (or its ``.safetensors`` file): ``(config, tensors)``."""
    weights, config_path = _resolve(path)
    for required in (weights, config_path):
        if not required.is_file():
            raise AdapterFileError(f"{required}: adapter file not found (expected {WEIGHTS_NAME} and {CONFIG_NAME})")
    tensors = read_safetensors(weights)
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except json.JSONDecodeError as error:
        raise AdapterFileError(f"{config_path}: not valid JSON ({error})") from error
    if not isinstance(config, dict) or "method" not in config:
        raise AdapterFileError(f"{config_path}: expected a JSON object with a 'method' key")
    return config, tensors


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a pickle/torch archive under a ``.safetensors`` name,
    or a truncated/corrupt file, is an :class:`AdapterFileError` naming the file (never unpickled)."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(9)
    # A safetensors file starts with an 8-byte little-endian header length followed by "{";
    # only a file that is not that is checked for pickle/zip markers (a header length of
    # 0x..80 or 0x..4B50 would otherwise look like one).
    looks_like_safetensors = len(head) == 9 and head[8:9] == b"{"
    if not looks_like_safetensors and (head[:1] == b"\x80" or head[:2] == b"PK"):  # pickle protocol / torch zip
        raise AdapterFileError(f"{path}: this is a pickle/torch archive, not safetensors; refusing to load it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(f"{path}: not a valid safetensors file ({error})") from error


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is an :class:`AdapterFileError` naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterFileError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise AdapterFileError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def serialized_size_of_shapes(shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    """:func:`serialized_size` of tensors with these ``(shape, dtype)``: the file's size
    depends on names, shapes and dtypes only, so uninitialised CPU tensors stand in (no RNG
    draw, nothing to compute)."""
    return serialized_size({name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()})


def serialized_size(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes the tensors take as a safetensors file written by :func:`save_adapter` (header and
    its ``{"format": "pt"}`` metadata included), measured by serialising."""
    from safetensors.torch import save

    return len(save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata={"format": "pt"}))

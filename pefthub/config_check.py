"""Catch configuration-key typos before LightningCLI does, and suggest the closest key.

jsonargparse rejects an unknown key with "Option 'rnak' is not accepted" buried in a
report about every union member; this check runs first and says
``unknown key 'model.init_args.rnak' in cfg.yaml; did you mean 'rank'?``.
It only looks at keys of ``model``/``data`` init_args and ``trainer``; everything else is
left to LightningCLI's own validation.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml


class ConfigKeyError(ValueError):
    """An unknown configuration key; the message names the file/flag and the closest key."""


def accepted_arguments(cls: type) -> set[str]:
    """Constructor arguments of ``cls``, following ``**kwargs`` up the class hierarchy (as
    jsonargparse does when a subclass passes ``**kwargs`` to ``super().__init__``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        names.update(n for n, p in parameters.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            break
    return names


def _import(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None  # LightningCLI reports bad class paths itself


def _available(section: str) -> list[str]:
    """The importable classes of ``pefthub.methods`` / ``pefthub.data`` (for error messages)."""
    package = importlib.import_module("pefthub.methods" if section == "model" else "pefthub.data")
    return sorted(f"{package.__name__}.{name}" for name in getattr(package, "__all__", []) if name[0].isupper())


def _check(section: dict[str, Any], cls: type, where: str, prefix: str) -> None:
    accepted = accepted_arguments(cls)
    for key in section:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; accepted keys: {sorted(accepted)}"
            raise ConfigKeyError(f"unknown key '{prefix}{key}' in {where}{hint}")


def check_config_files(argv: list[str]) -> None:
    """Check the YAML files given with ``-c/--config`` and ``--model.*``/``--data.*`` flags."""
    from lightning.pytorch import Trainer

    class_paths: dict[str, str] = {}
    for index, arg in enumerate(argv):
        path = None
        if arg in ("-c", "--config") and index + 1 < len(argv):
            path = argv[index + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        if path is not None and not Path(path).is_file() and (path.endswith((".yaml", ".yml", ".json")) or "/" in path):
            raise ConfigKeyError(f"config file {path} does not exist (-c/--config expects a YAML file, e.g. configs/lora/sst2.yaml)")
        if path is None or not Path(path).is_file():
            continue
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigKeyError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(config, dict):
            continue
        for section in ("model", "data"):
            value = config.get(section)
            if isinstance(value, dict) and value.get("class_path"):
                class_paths[section] = value["class_path"]
                if _import(value["class_path"]) is None:
                    raise ConfigKeyError(
                        f"{path}: {section}.class_path {value['class_path']!r} does not exist; "
                        f"available: {_available(section)}"
                    )
            cls = _import(class_paths[section]) if section in class_paths else None
            if cls is not None and isinstance(value, dict) and isinstance(value.get("init_args"), dict):
                _check(value["init_args"], cls, path, f"{section}.init_args.")
        if isinstance(config.get("trainer"), dict):
            _check(config["trainer"], Trainer, path, "trainer.")
    for arg in argv:
        for section in ("model", "data"):
            if not arg.startswith(f"--{section}.") or section not in class_paths:
                continue
            key = arg[len(section) + 3 :].split("=", 1)[0].removeprefix("init_args.").split(".", 1)[0].rstrip("+")
            cls = _import(class_paths[section])
            if cls is not None and key not in ("help", "class_path", "init_args", "dict_kwargs"):
                _check({key: None}, cls, f"flag {arg.split('=', 1)[0]}", f"{section}.")

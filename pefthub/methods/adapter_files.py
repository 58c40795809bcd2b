"""The checkpoint and adapter-file half of :class:`~pefthub.methods.base.PEFTModule`.

A checkpoint keeps only the tensors a resume needs (the trainable ones), stamped with the
method and backbone that wrote it; an adapter file is ``adapter.safetensors`` (adapter tensors
and the task head) plus ``adapter_config.json`` (the shared fields and the method's
:meth:`~AdapterFiles.adapter_config`). The mixin reads the module's ``backbone``, ``head``,
``backbone_name``, ``method_name``, ``family``, ``task_type``, ``label_names`` and ``pooling``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pefthub import __version__
from pefthub.adapters.inject import adapter_state
from pefthub.adapters.io import config_text, load_adapter, save_adapter, serialized_size
from pefthub.checkpoint_io import read_checkpoint, saved_tensor_names


class AdapterFiles:
    """Checkpoint hooks (``on_save_checkpoint``/``on_load_checkpoint``) and adapter-file I/O
    (``save_adapter``, ``load_adapter``, ``model.init_adapter``) of a PEFT LightningModule."""

    def load_init_adapter(self, path: str | Path) -> dict[str, Any]:
        """Load ``model.init_adapter``: a pefthub adapter directory, or a PEFT LoRA directory
        (``adapter_model.safetensors``), converted on the fly (safetensors + JSON only); a PEFT
        directory without ``pefthub_head.safetensors`` keeps this module's fresh head."""
        from pefthub.adapters.peft_format import PEFT_WEIGHTS

        path = Path(path)
        if not path.exists():
            raise ValueError(f"model.init_adapter: {path} does not exist (expected an adapter directory)")
        if path.is_dir() and (path / PEFT_WEIGHTS).is_file():
            import tempfile

            from pefthub.adapters.io import load_adapter as read_adapter
            from pefthub.adapters.io import save_adapter as write_adapter
            from pefthub.adapters.peft_format import import_from_peft

            with tempfile.TemporaryDirectory(prefix="pefthub-peft-") as tmp:
                imported = import_from_peft(path, Path(tmp) / "adapter", backbone=self.backbone_name)
                config, tensors = read_adapter(imported)
                if not any(name.startswith("head.") for name in tensors):
                    tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
                config.update(task_type=self.task_type, num_labels=self.head.out_features, label_names=self.label_names)
                write_adapter(imported, config, tensors)
                return self.load_adapter(imported)
        return self.load_adapter(path)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_tensor_names(self) -> set[str]:
        """The tensors a checkpoint keeps (and a resume needs): the trainable parameters; a
        method whose adapter also has frozen parts (UniHyperLoRA's δθ phase) widens it."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only :meth:`checkpoint_tensor_names`: a MiniLM checkpoint is then ~1 MB instead of 90 MB."""
        keep = self.checkpoint_tensor_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["pefthub"] = {"version": __version__, "method": self.method_name, "backbone": self.backbone_name}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        written_by = checkpoint.get("pefthub") or {}
        for key, own in (("method", self.method_name), ("backbone", self.backbone_name)):
            if written_by.get(key) not in (None, own):
                raise ValueError(
                    f"checkpoint was written by {key} {written_by[key]!r} but this run uses {key} {own!r}; "
                    f"set model.{'class_path' if key == 'method' else 'backbone'} to match it or start a new run"
                )
        # a DeepSpeed engine loads the weights itself and hands over only the names it saved
        missing = sorted(self.checkpoint_tensor_names() - saved_tensor_names(checkpoint))
        if missing:
            raise ValueError(
                f"checkpoint lacks {len(missing)} tensor(s) this {type(self).__name__} trains "
                f"(e.g. {missing[:3]}); was it written by another method or configuration?"
            )

    def load_trainable_from_checkpoint(self, path: str | Path) -> None:
        """Copy the trainable tensors of a pefthub checkpoint into this module (weights only).

        ``path`` is a Lightning checkpoint file or a DeepSpeed checkpoint directory
        (:func:`pefthub.checkpoint_io.read_checkpoint`). Under ZeRO-3 call it inside
        ``deepspeed.zero.GatheredParameters`` (the parameters are shards otherwise)."""
        checkpoint = read_checkpoint(path)
        self.on_load_checkpoint(checkpoint)
        self.load_state_dict(checkpoint["state_dict"], strict=False)

    # ------------------------------------------------------------------ adapter files

    def adapter_config(self) -> dict[str, Any]:
        """What a loader needs besides the tensors to rebuild this adapter (JSON-safe)."""
        return {}

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Adapter tensors (``backbone.<module>.<name>``) and the task head (``head.*``)."""
        tensors = {f"backbone.{k}": v for k, v in adapter_state(self.backbone).items()}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return tensors

    def adapter_file(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The adapter file's JSON half and tensors, exactly as :meth:`save_adapter` writes them
        (a method that stores its tensors encoded, as UniHyperLoRA's int8/int4, overrides this)."""
        return self.adapter_file_config(), self.adapter_tensors()

    def adapter_file_bytes(self) -> int:
        """Bytes of ``adapter.safetensors`` + ``adapter_config.json`` as :meth:`save_adapter` writes them."""
        config, tensors = self.adapter_file()
        return serialized_size(tensors) + len(config_text(config).encode())

    def adapter_file_config(self) -> dict[str, Any]:
        """The JSON half of the adapter file (everything but the tensors)."""
        return {**self.shared_file_config(), **self.adapter_config()}

    def shared_file_config(self) -> dict[str, Any]:
        """The fields of ``adapter_config.json`` every method writes (the method's own follow)."""
        return {
            "method": self.method_name,
            "pefthub_version": __version__,
            "backbone": self.backbone_name,
            "family": self.family,
            "task_type": self.task_type,
            "num_labels": self.head.out_features,
            "label_names": self.label_names,
            "pooling": self.pooling,
        }

    def save_adapter(self, directory: str | Path) -> Path:
        return save_adapter(directory, *self.adapter_file())

    def load_adapter(self, path: str | Path) -> dict[str, Any]:
        """Load an adapter saved by :meth:`save_adapter` into this module (no pickle)."""
        config, tensors = load_adapter(path)
        if config["method"] != self.method_name:
            raise ValueError(f"{path}: adapter was saved by method {config['method']!r}, this module is {self.method_name!r}")
        own = self.adapter_tensors()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise ValueError(f"{path}: adapter tensors do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        with torch.no_grad():
            for name, target in own.items():
                if target.shape != tensors[name].shape:
                    raise ValueError(
                        f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, model expects {tuple(target.shape)}; "
                        "set the method's settings (rank, target_modules, ...) to those in the adapter's adapter_config.json"
                    )
                target.copy_(tensors[name])
        return config

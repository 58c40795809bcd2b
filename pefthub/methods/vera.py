"""VeRA as a LightningModule (Kopiczko et al., ICLR 2024)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from pefthub.adapters.inject import AdapterSite, find_targets, inject_adapters
from pefthub.adapters.io import load_adapter
from pefthub.adapters.vera import VeRALinear, VeRAProjections
from pefthub.backbones import default_targets
from pefthub.methods.base import PEFTModule
from pefthub.methods.settings import VeRASettings, from_config


class VeRAModule(PEFTModule):
    """VeRA on the frozen backbone: ``y = W x + b ⊙ (B[:d_out] (d ⊙ (A[:, :d_in] dropout(x))))``.

    One frozen random pair A (r × d_in_max), B (d_out_max × r), sized to the largest
    adapted layer and shared by all of them; each layer trains d ∈ R^r and b ∈ R^{d_out}
    (``r + d_out`` numbers per layer). Defaults follow HF PEFT 0.21's ``VeraConfig``
    except ``save_projection`` (see below).

    Args:
        rank: r, the shared projection dimension (PEFT's default 256; the paper uses
            r = 1024 on RoBERTa-base GLUE). It may exceed a layer's width. Per-token
            extra cost per layer is ``r (d_in + d_out)`` multiply-adds, so large r on a
            narrow host costs as much compute as the frozen layer itself.
        d_initial: initial value of every entry of each d (PEFT default 0.1; the paper
            recommends ≤ 0.1). b starts at zero, so a fresh adapter changes nothing.
        projection_prng_key: seed of the CPU generator that draws A then B
            (Kaiming-uniform, as PEFT's ``projection_prng_key``); saved in the adapter JSON.
        dropout: dropout on the adapter input (PEFT's ``vera_dropout``).
        target_modules: module-name patterns to adapt (a name equal to or ending in
            ``.<pattern>``, or ``re:<regex>``); default: the family's attention and FFN
            projections, as for LoRA (BERT: query, key, value, attention.output.dense,
            intermediate.dense, output.dense; MPNet: q, k, v, o, intermediate.dense,
            output.dense; Llama: q/k/v/o_proj, gate/up/down_proj).
        save_projection: also store A and B in the adapter file. Default ``False``
            (PEFT defaults to ``True``): the file then holds only d, b and the head, and
            A, B are regenerated from ``projection_prng_key``; the JSON records the key,
            the shapes and a SHA-256 of the projections, and loading refuses a file whose
            regenerated projections differ.
        **kwargs: the shared arguments of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "vera"

    def __init__(
        self,
        rank: int = 256,
        d_initial: float = 0.1,
        projection_prng_key: int = 0,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        save_projection: bool = False,
        **kwargs: Any,
    ) -> None:
        settings = VeRASettings(
            rank=rank,
            d_initial=d_initial,
            projection_prng_key=projection_prng_key,
            dropout=dropout,
            target_modules=target_modules,
            save_projection=save_projection,
        )
        super().__init__(**kwargs)
        self.settings = settings = replace(settings, target_modules=target_modules or list(default_targets(self.family)))
        shapes = [self.backbone.get_submodule(name) for name, _ in find_targets(self.backbone, self.target_modules)]
        d_in = max(linear.in_features for linear in shapes)
        d_out = max(linear.out_features for linear in shapes)
        self.vera_projections = VeRAProjections(settings.rank, d_in, d_out, seed=settings.projection_prng_key)
        self.sites: list[AdapterSite] = inject_adapters(
            self.backbone,
            self.target_modules,
            lambda linear, site: VeRALinear(linear, self.vera_projections, d_initial=settings.d_initial, dropout=settings.dropout),
        )
        self.adapters_ready()

    @property
    def target_modules(self) -> list[str]:
        return self.settings.target_modules

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().adapter_tensors()
        if self.settings.save_projection:
            tensors["vera_projections.vera_A"] = self.vera_projections.vera_A
            tensors["vera_projections.vera_B"] = self.vera_projections.vera_B
        return tensors

    def adapter_config(self) -> dict[str, Any]:
        projections = self.vera_projections
        return {
            **asdict(self.settings),
            "projection_shape": {"vera_A": [projections.rank, projections.d_in], "vera_B": [projections.d_out, projections.rank]},
            "projection_sha256": projections.fingerprint(),
            "projection_init": "kaiming_uniform(relu gain, fan_in), torch CPU generator, A then B",
            "sites": [site.to_dict() for site in self.sites],
        }

    def load_adapter(self, path: str | Path) -> dict[str, Any]:
        """Load d, b and the head (and A, B when the file stores them). Without stored
        projections the file's key, shapes and SHA-256 must match this module's
        regenerated A, B; otherwise a ValueError names the mismatch."""
        config, tensors = load_adapter(path)
        stored = "vera_projections.vera_A" in tensors
        if config.get("method") == self.method_name and not stored:
            own = self.adapter_config()
            for key in ("projection_prng_key", "projection_shape", "projection_sha256"):
                if key in config and config[key] != own[key]:
                    raise ValueError(
                        f"{path}: adapter_config.json {key}={config[key]!r} but this model regenerates {own[key]!r}; "
                        "the shared VeRA projections would differ (set model.projection_prng_key / rank / "
                        "target_modules to the file's values, or save the adapter with save_projection: true)"
                    )
        if stored != self.settings.save_projection:  # load whatever the file carries
            previous, self.settings = self.settings, replace(self.settings, save_projection=stored)
            try:
                return super().load_adapter(path)
            finally:
                self.settings = previous
        return super().load_adapter(path)

    @classmethod
    def from_adapter(cls, path: str, backbone: str | None = None, **kwargs: Any) -> VeRAModule:
        """A module rebuilt from an adapter directory's JSON (backbone, targets, rank, key,
        labels) with its tensors loaded; safetensors + JSON only."""
        config, _ = load_adapter(path)
        if config.get("method") != cls.method_name:
            raise ValueError(f"{path}: adapter was saved by method {config.get('method')!r}, not {cls.method_name!r}")
        if "rank" not in config:
            raise ValueError(f"{path}: adapter_config.json has no 'rank' (expected a VeRA adapter written by pefthub)")
        settings = from_config(VeRASettings, config)
        module = cls(
            backbone=backbone or config["backbone"],
            rank=settings.rank,
            d_initial=settings.d_initial,
            projection_prng_key=settings.projection_prng_key,
            target_modules=settings.target_modules,
            save_projection=settings.save_projection,
            num_labels=config.get("num_labels", 2),
            label_names=config.get("label_names"),
            **{"pooling": config["pooling"], **kwargs} if "pooling" in config else kwargs,
        )
        module.load_adapter(path)
        return module

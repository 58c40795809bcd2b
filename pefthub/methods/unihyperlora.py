"""UniHyperLoRA as a LightningModule: one adapter file for hosts of any width and depth.

The math is in :mod:`pefthub.adapters.hyper`; storage in :mod:`pefthub.adapters.quant`.
Not to be confused with HF PEFT's ``UniLoraConfig`` ("Uni-LoRA"), an unrelated method.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pefthub import __version__
from pefthub.adapters import quant
from pefthub.adapters.hyper import (
    CANONICAL_TYPES,
    HyperLinear,
    HyperShared,
    PortableHead,
    block_name,
    canonical_type,
)
from pefthub.adapters.inject import AdapterSite, inject_adapters
from pefthub.adapters.io import CONFIG_NAME, load_adapter
from pefthub.backbones import default_targets
from pefthub.callbacks.logging_step import is_logging_step
from pefthub.methods.base import PEFTModule

# Keys of HyperShared's constructor that fix tensor shapes: an adapter file decides them.
STRUCTURAL_KEYS = (
    "num_atoms",
    "d0",
    "num_frequencies",
    "generator_hidden",
    "width_feature",
    "mixer_hidden",
    "num_tasks",
    "task_dim",
    "max_frequency",
    "projector_basis",
)
# Defaults for keys that adapter files written before they existed lack (what those files meant).
LEGACY_HYPER_DEFAULTS = {"projector_basis": "none"}
# The same for learned (SAT-LoRA) projectors: there is no generator.
LEARNED_STRUCTURAL_KEYS = ("num_atoms", "d0", "mixer_hidden", "num_tasks", "task_dim")
# Runtime settings a transfer takes from the file too (they change the adapter's function).
BEHAVIOUR_KEYS = ("top_k", "threshold", "scale")
INT8_TENSORS = (
    "hyper.atoms_U",
    "hyper.atoms_V",
    "hyper.router.weight",
    "hyper.generator.inner.weight",
    "hyper.generator.outer.weight",
)


# Named presets: the model settings that distinguish them (YAML files and benchmarks use these;
# tests check that configs/unihyperlora/{sst2,spec_sst2}.yaml agree). docs/methods/unihyperlora.md
# lists every departure of "default" from the proposal and why it is kept.
PRESETS: dict[str, dict[str, Any]] = {
    # the design shipped before issue 17 (with the projector fix): a 140k-parameter generator,
    # δθ trained with everything else at the source, always k = 2 atoms per token
    "default": {
        "generator_hidden": 256,
        "train_delta": True,
        "threshold": 0.0,
        "lambda_flops": 0.0,
        "lambda_delta": 0.001,
    },
    # the proposal: generator ≈ 4 kB, δθ frozen at the source (tuned only in the δθ phase),
    # a gate that can fire fewer than 2 atoms and a FLOP term λ_F E[k] > 0, λ_Q in every phase
    "spec": {
        "generator_hidden": 4,
        "train_delta": False,
        "threshold": 0.5,
        "lambda_flops": 0.01,
        "lambda_delta": 0.001,
    },
}


def storage_scheme(name: str, quantize: bool = True) -> str:
    """How tensor ``name`` is stored: U, V, router, generator matrices and SAT-LoRA's learned
    projectors int8 per row, the mixer (θ and δθ) int4 per row, everything else (biases, task
    embeddings, head) float16."""
    if not quantize:
        return "float32"
    if name in INT8_TENSORS or name.startswith("hyper.learned."):
        return "int8_row"
    if name.startswith("hyper.mixer."):
        return "int4_row"
    return "float16"


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    config_path = path / CONFIG_NAME if path.is_dir() else path.with_name(CONFIG_NAME)
    with open(config_path, encoding="utf-8") as handle:
        return with_legacy_defaults(json.load(handle))


def with_legacy_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Fill ``config["hyper"]`` (generated projectors) with :data:`LEGACY_HYPER_DEFAULTS` where an
    older file lacks a key, so an adapter saved before that key existed loads as it was trained."""
    hyper = config.get("hyper")
    if isinstance(hyper, dict) and hyper.get("projector") != "learned":
        for key, value in LEGACY_HYPER_DEFAULTS.items():
            hyper.setdefault(key, value)
    return config


class UniHyperLoRAModule(PEFTModule):
    """UniHyperLoRA on the frozen backbone (docs/design.md, section 3):
    ``y = W x + s Σ_{j∈top-k} π_j m_j(ℓ/L, type) · P_out(d_out) u_j (v_jᵀ P_in(d_in) x)``.

    Args:
        num_atoms: M, canonical rank-one atoms (u_j, v_j ∈ R^{d0}).
        d0: canonical width.
        top_k: atoms per token, 1 or 2 (chosen by the router once per block).
        num_frequencies: Fourier frequencies of the projector generator's unit-coordinate features.
        max_frequency: highest of them (cycles over the width); they are geometric from 1.
        generator_hidden: hidden width of the generator MLP (bounds the projectors' rank).
        width_feature: give the generator ``ln(d/d0)`` as an extra feature.
        projector_basis: ``fourier``: the projectors are a fixed orthogonal Fourier basis of the
            unit coordinate plus the (zero-initialised, unit-centred) generator MLP, full rank
            at every width; ``none``: the MLP alone, as before issue 17 (its projectors start
            with one dominant direction, constant over the units, and source training barely
            learns; kept to load older adapter files). Adapter files without the key load as
            ``none``.
        mixer_hidden: hidden width of the sine mixer g_θ (≈2k parameters at 16).
        mixer_omega: std of the mixer's first-layer weights (sine frequency scale).
        num_tasks: rows of the router's task-embedding table.
        task_dim: size of a task embedding.
        task_id: the task embedding this run uses.
        threshold: router gates σ(logit) below it are zeroed, so fewer than k atoms can be active.
        scale: s, multiplies the update.
        update_impl: how each layer computes its update: ``sparse`` (gather the k routed atoms
            per token: the fewest multiply-adds, what the FLOP figures count), ``dense`` (the
            same value as one rank-M product with the gates as a token × atom matrix: M/k times
            the multiply-adds, ~20 instead of ~50 aten ops per layer, faster where a step is
            launch-bound) or ``auto`` (dense on CUDA, sparse elsewhere).
        dropout: dropout on the adapter input.
        target_modules: module-name patterns to adapt (default: the family's attention and FFN
            projections, as for LoRA).
        module_types: extra ``pattern -> canonical type`` entries for targets outside the
            builtin families (types: q, k, v, o, ffn_gate, ffn_in, ffn_out).
        lambda_flops: λ_F of the budget loss ``λ_F E[k] + λ_Q ‖δθ‖²`` (E[k]: mean Σ_{j∈S} π_j per token).
        lambda_delta: λ_Q of the budget loss.
        train_delta: train δθ together with everything else at the source (``true``, the
            ``default`` preset) or keep it frozen at zero until a δθ phase
            (:class:`~pefthub.callbacks.transfer.DeltaTuning`) unfreezes it (``false``, the
            proposal; the ``spec`` preset).
        quantize: store U, V, router, generator int8 and the mixer int4 (``false``: float32).
        init_adapter: an adapter directory to start from (a transfer or δθ run); its
            structural settings (num_atoms, d0, num_frequencies, generator_hidden,
            width_feature, mixer_hidden, num_tasks, task_dim) replace the ones given here.
        init_head: also load the adapter file's task head (``false`` for a task the source
            never saw: the head starts fresh).
        max_adapter_bytes: budget on the adapter files' size, checked at fit start (null: none).
        max_flop_overhead: budget on the extra FLOPs of the host forward as a fraction (0.10 =
            10 %), measured with fvcore at fit start (null: not checked).
        budget_seq_len: sequence length of the FLOP measurement.
        **kwargs: the shared arguments of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "unihyperlora"
    # where the projectors come from (see HyperShared); SATLoRAModule sets "learned"
    projector = "generated"
    structural_keys = STRUCTURAL_KEYS

    def __init__(
        self,
        num_atoms: int = 128,
        d0: int = 256,
        top_k: int = 2,
        num_frequencies: int = 16,
        max_frequency: float = 64.0,
        generator_hidden: int = 256,
        width_feature: bool = True,
        projector_basis: str = "fourier",
        mixer_hidden: int = 16,
        mixer_omega: float = 2.0,
        num_tasks: int = 1,
        task_dim: int = 16,
        task_id: int = 0,
        threshold: float = 0.0,
        scale: float = 1.0,
        update_impl: str = "auto",
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        module_types: dict[str, str] | None = None,
        lambda_flops: float = 0.0,
        lambda_delta: float = 0.0,
        train_delta: bool = True,
        quantize: bool = True,
        init_adapter: str | None = None,
        init_head: bool = True,
        max_adapter_bytes: int | None = 1_000_000,
        max_flop_overhead: float | None = 0.10,
        budget_seq_len: int = 128,
        **kwargs: Any,
    ) -> None:
        for key, value in (("lambda_flops", lambda_flops), ("lambda_delta", lambda_delta)):
            if value < 0:
                raise ValueError(f"model.{key} must be >= 0, got {value}")
        hyper_kwargs = dict(
            num_atoms=num_atoms,
            d0=d0,
            top_k=top_k,
            num_frequencies=num_frequencies,
            max_frequency=max_frequency,
            generator_hidden=generator_hidden,
            width_feature=width_feature,
            projector_basis=projector_basis,
            mixer_hidden=mixer_hidden,
            mixer_omega=mixer_omega,
            num_tasks=num_tasks,
            task_dim=task_dim,
            task_id=task_id,
            threshold=threshold,
            scale=scale,
            update_impl=update_impl,
            projector=self.projector,
        )
        if init_adapter is not None:
            stored = read_adapter_config(init_adapter)
            if stored.get("method") != self.method_name:
                raise ValueError(f"model.init_adapter={init_adapter!r} was saved by method {stored.get('method')!r}, not {self.method_name!r}")
            hyper_kwargs.update({k: stored["hyper"][k] for k in (*self.structural_keys, *BEHAVIOUR_KEYS)})
        super().__init__(**kwargs)
        self.dropout = dropout
        self.target_modules = list(target_modules) if target_modules else list(default_targets(self.family))
        self.module_types = dict(module_types or {})
        self.lambda_flops = lambda_flops
        self.lambda_delta = lambda_delta
        self.train_delta = bool(train_delta)
        self.quantize = quantize
        self.max_adapter_bytes = max_adapter_bytes
        self.max_flop_overhead = max_flop_overhead
        self.budget_seq_len = budget_seq_len
        self.init_head = bool(init_head)
        self.hyper = HyperShared(**hyper_kwargs)
        self.sites: list[AdapterSite] = self._insert_adapters()
        self.adapters_ready()
        if not self.train_delta:  # stays zero at the source; DeltaTuning unfreezes it later
            self.hyper.mixer.delta.requires_grad_(False)
        if init_adapter is not None:
            self.load_adapter(init_adapter, load_head=init_head)

    # ------------------------------------------------------------------ building

    def _insert_adapters(self) -> list[AdapterSite]:
        """One HyperLinear per target, all sharing ``self.hyper``; the head becomes portable."""
        types = {p: CANONICAL_TYPES.index(canonical_type(p, self.module_types)) for p in self.target_modules}
        sites = inject_adapters(
            self.backbone,
            self.target_modules,
            lambda linear, site: HyperLinear(
                linear, self.hyper, site.depth, types[site.module_type], self.dropout
            ),
        )
        if self.hyper.learned is not None:  # SAT-LoRA: one projector pair per width of this host
            hidden = int(self.backbone.config.hidden_size)  # block inputs (router) and pooled state (head)
            self.hyper.add_projectors({hidden, *(s.d_in for s in sites), *(s.d_out for s in sites)})
        num_layers = int(getattr(self.backbone.config, "num_hidden_layers", 1))
        self.hyper.attach(self.backbone, [(s.depth, block_name(s.name)) for s in sites], num_layers)
        positions = getattr(self.backbone.config, "pefthub_unit_positions", None)
        for width, coords in (positions or {}).items():  # derived (pruned) hosts: source coordinates
            self.hyper.set_positions(int(width), torch.tensor(coords, dtype=torch.float32))
        self.head = PortableHead(self.hyper, self.head.out_features)
        return sites

    # ------------------------------------------------------------------ losses, logging

    def regularization(self) -> torch.Tensor | None:
        """Budget loss ``λ_F E[k] + λ_Q ‖δθ‖²``."""
        terms = []
        expected = self.hyper.expected_atoms()
        if self.lambda_flops > 0 and expected is not None:
            terms.append(self.lambda_flops * expected)
        if self.lambda_delta > 0:
            terms.append(self.lambda_delta * self.hyper.mixer.delta.pow(2).sum())
        return torch.stack(terms).sum() if terms else None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self._trainer is None or is_logging_step(self.trainer):
            self._log_routing("budget")  # logging steps only: no per-step work or sync for statistics
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_routing("val")

    def _log_routing(self, prefix: str) -> None:
        active, expected = self.hyper.active_atoms(), self.hyper.expected_atoms()
        if active is None or expected is None:
            return
        on_step = prefix == "budget"
        self.log(f"{prefix}/atoms_per_token", active, on_step=on_step, on_epoch=not on_step)
        self.log(f"{prefix}/expected_atoms", expected.detach(), on_step=on_step, on_epoch=not on_step)

    def on_train_start(self) -> None:
        super().on_train_start()
        figures = {
            "budget/adapter_params": float(sum(p.numel() for p in self.hyper.parameters())),
            "budget/head_params": float(sum(p.numel() for p in self.head.parameters())),
            "budget/delta_params": float(self.hyper.mixer.delta.numel()),
        }
        for logger in self.loggers:
            logger.log_metrics(figures, step=self.global_step)

    def freeze_for_delta_phase(self) -> dict[str, int]:
        """The δθ phase (:class:`~pefthub.callbacks.transfer.DeltaTuning`): freeze everything but
        δθ and, when the head was not loaded from the adapter (``init_head: false``), the head;
        returns the trained sizes (``budget/delta_params``, ``budget/new_head_params``)."""
        train_head = not self.init_head
        self.requires_grad_(False)
        self.hyper.mixer.delta.requires_grad_(True)
        self.head.requires_grad_(train_head)
        return {
            "budget/delta_params": self.hyper.mixer.delta.numel(),
            "budget/new_head_params": sum(p.numel() for p in self.head.parameters()) if train_head else 0,
        }

    def configure_callbacks(self) -> list:
        from pefthub.callbacks.budget import BudgetCheck

        return [
            *super().configure_callbacks(),
            BudgetCheck(self.max_adapter_bytes, self.max_flop_overhead, seq_len=self.budget_seq_len),
        ]

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_tensor_names(self) -> set[str]:
        """Every adapter tensor (also the ones a δθ phase froze), nothing of the host."""
        return {f"hyper.{n}" for n, _ in self.hyper.named_parameters()} | {f"head.{n}" for n, _ in self.head.named_parameters()}

    # ------------------------------------------------------------------ adapter files

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Every UniHyperLoRA tensor, unquantised: ``hyper.*`` (shared) and ``head.*``."""
        tensors = {f"hyper.{n}": p for n, p in self.hyper.named_parameters()}
        tensors.update({f"head.{n}": p for n, p in self.head.named_parameters()})
        return tensors

    def encoded_adapter(self) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
        """The tensors as stored (quantised) and the per-tensor storage entries for the JSON."""
        stored, entries = {}, {}
        for name, tensor in self.adapter_tensors().items():
            encoded, entry = quant.encode(name, tensor, storage_scheme(name, self.quantize))
            stored.update(encoded)
            entries[name] = entry
        return stored, entries

    def adapter_file_config(self) -> dict[str, Any]:
        """The adapter JSON: method, task and canonical settings only — no backbone name, width,
        depth or layer list, so any host can load it (the storage entries come with
        :meth:`adapter_file`)."""
        return {
            "method": self.method_name,
            "pefthub_version": __version__,
            "task_type": self.task_type,
            "num_labels": self.head.out_features,
            "label_names": self.label_names,
            "pooling": self.pooling,
            "hyper": self.hyper.config(),
        }

    def adapter_file(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The JSON (with each tensor's storage entry) and the tensors as stored (quantised)."""
        stored, entries = self.encoded_adapter()
        return {**self.adapter_file_config(), "storage": entries}, stored

    def load_adapter(self, path: str | Path, load_head: bool = True) -> dict[str, Any]:
        """Load an adapter saved by :meth:`save_adapter` from ANY host (no retraining needed);
        a SAT-LoRA adapter only into a host whose widths it has projectors for (extra ones are
        ignored), anything else is a ValueError naming the missing widths.

        Args:
            path: adapter directory (or its safetensors/JSON file).
            load_head: also load the task head (it must have this module's number of labels).
        """
        config, tensors = load_adapter(path)
        config = with_legacy_defaults(config)
        if config["method"] != self.method_name:
            raise ValueError(f"{path}: adapter was saved by method {config['method']!r}, this module is {self.method_name!r}")
        own_config = self.hyper.config()
        mismatched = {k: (config["hyper"].get(k), own_config[k]) for k in self.structural_keys if config["hyper"].get(k) != own_config[k]}
        if mismatched:
            raise ValueError(f"{path}: adapter settings differ from this module's (file, module): {mismatched}")
        if self.hyper.learned is not None:
            missing_widths = sorted(set(own_config["widths"]) - set(config["hyper"].get("widths", [])))
            if missing_widths:
                raise ValueError(
                    f"{path}: this SAT-LoRA adapter has learned projectors for widths {config['hyper'].get('widths')}, "
                    f"but host {self.backbone_name!r} also needs width(s) {missing_widths}: SAT-LoRA's projectors are "
                    "learned per host, so it must be retrained on each host (UniHyperLoRA is the method whose "
                    "adapter transfers)"
                )
        if load_head and config["num_labels"] != self.head.out_features:
            raise ValueError(
                f"{path}: the adapter's head has {config['num_labels']} labels, this task has "
                f"{self.head.out_features}; set `model.init_head: false` to start a new head"
            )
        own = self.adapter_tensors()
        names = [n for n in own if load_head or not n.startswith("head.")]
        missing = [n for n in names if n not in config["storage"]]
        if missing:
            raise ValueError(f"{path}: adapter file lacks tensor(s) {missing[:3]}")
        with torch.no_grad():
            for name in names:
                value = quant.decode(name, tensors, config["storage"][name])
                if value.shape != own[name].shape:
                    raise ValueError(f"{path}: tensor {name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}")
                own[name].copy_(value)
        self.hyper.clear_cache()
        return config

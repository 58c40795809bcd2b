"""Reference rows: Hugging Face PEFT's own LoRA and AdaLoRA inside pefthub's training loop.

The same frozen backbone, task head, data, batches, optimiser and schedule as
:class:`~pefthub.methods.LoRAModule` / :class:`~pefthub.methods.AdaLoRAModule`; only the adapter
comes from ``peft.get_peft_model``. A grid row "pefthub AdaLoRA vs HF PEFT AdaLoRA" then separates
the method from its implementation. The constructor arguments are pefthub's (same names, same
defaults), mapped onto ``LoraConfig`` / ``AdaLoraConfig``.

Not for production runs: checkpoints resume the weights, but HF AdaLoRA's importance EMAs live in
PEFT's rank allocator and restart on resume; multi-process strategies are not supported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pefthub.backbones import default_targets
from pefthub.methods.base import PEFTModule


def hf_adalora_orth_penalty(model: nn.Module, weight: float) -> torch.Tensor:
    """HF PEFT's AdaLoRA orthogonality penalty (``AdaLoraModel.forward`` adds it to a model's own
    loss, which a bare backbone has not): ``weight`` × the mean over every ``lora_A`` / ``lora_B``
    of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F."""
    total, count = None, 0
    for name, param in model.named_parameters():
        if "lora_A" not in name and "lora_B" not in name:
            continue
        cov = param @ param.T if "lora_A" in name else param.T @ param
        eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
        term = torch.norm(cov - eye, p="fro")
        total = term if total is None else total + term
        count += 1
    return weight * total / count


def _steps(value: int | float, total: int) -> int:
    """An int is optimiser steps; a float in [0, 1) a fraction of ``total`` (pefthub's AdaLoRA rule)."""
    return int(value) if isinstance(value, int) else int(value * total)


class _HFPEFTModule(PEFTModule):
    """Wraps ``self.backbone`` in a ``peft.PeftModel``; the adapter file holds PEFT's own tensors
    (loaded by the base's name-and-shape-checked :meth:`load_adapter`)."""

    def _wrap(self, config: Any) -> None:
        from peft import get_peft_model

        self.peft_config = config
        self.backbone = get_peft_model(self.backbone, config)
        self.adapters_ready(trainable=[p for p in self.backbone.parameters() if p.requires_grad])  # PEFT's choice

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """PEFT's trainable tensors under their ``PeftModel`` names, unresized (AdaLoRA's pruned
        triplets are zeros, as in training), and the head."""
        tensors = {f"backbone.{n}": p for n, p in self.backbone.named_parameters() if "lora_" in n}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return tensors

    def adapter_config(self) -> dict[str, Any]:
        return {"peft_config": {k: (sorted(v) if isinstance(v, set) else v) for k, v in self.peft_config.to_dict().items()}}


class HFPEFTLoRAModule(_HFPEFTModule):
    """HF PEFT's ``LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules)``.

    Args:
        rank: LoRA rank r.
        alpha: scaling numerator (update × alpha / rank).
        dropout: dropout on the adapter input.
        target_modules: module-name suffixes to adapt (PEFT's matching); default: the family's
            attention and FFN projections, as pefthub's LoRA.
        **kwargs: the shared arguments of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "hf_peft_lora"

    def __init__(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 target_modules: list[str] | None = None, **kwargs: Any) -> None:
        from peft import LoraConfig

        if rank < 1:
            raise ValueError(f"model.rank must be >= 1, got {rank}")
        super().__init__(**kwargs)
        targets = list(target_modules) if target_modules else list(default_targets(self.family))
        self._wrap(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets))


class HFPEFTAdaLoRAModule(_HFPEFTModule):
    """HF PEFT's ``AdaLoraConfig`` with pefthub AdaLoRA's arguments; PEFT's own rank allocator runs
    after every optimiser step (:class:`~pefthub.callbacks.hf_peft.HFPEFTRankAllocation`), and its
    orthogonality penalty is added to the loss as ``AdaLoraModel.forward`` would.

    Args:
        init_rank, target_rank, alpha, dropout, target_modules, tinit, tfinal, delta_t, beta1, beta2,
        orth_reg_weight: as :class:`~pefthub.methods.AdaLoRAModule` (``tinit``/``tfinal``: int steps
            or a fraction of the run's optimiser steps, resolved when fit starts).
        **kwargs: the shared arguments of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "hf_peft_adalora"

    def __init__(self, init_rank: int = 12, target_rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 target_modules: list[str] | None = None, tinit: int | float = 0.1, tfinal: int | float = 0.2,
                 delta_t: int = 1, beta1: float = 0.85, beta2: float = 0.85, orth_reg_weight: float = 0.1,
                 **kwargs: Any) -> None:
        from peft import AdaLoraConfig

        if not 1 <= target_rank <= init_rank:
            raise ValueError(f"model.target_rank must be in [1, model.init_rank={init_rank}], got {target_rank}")
        super().__init__(**kwargs)
        self.tinit, self.tfinal, self.orth_reg_weight = tinit, tfinal, orth_reg_weight
        targets = list(target_modules) if target_modules else list(default_targets(self.family))
        # total_step is the run's, known when fit starts (set_total_steps); PEFT wants a value now
        self._wrap(AdaLoraConfig(init_r=init_rank, target_r=target_rank, lora_alpha=alpha, lora_dropout=dropout,
                                 target_modules=targets, tinit=0, tfinal=1, deltaT=delta_t, beta1=beta1, beta2=beta2,
                                 orth_reg_weight=orth_reg_weight, total_step=2))

    def set_total_steps(self, total: int) -> None:
        """Resolve ``tinit``/``tfinal`` against the run's ``total`` optimiser steps, in PEFT's config."""
        config = self.backbone.peft_config["default"]
        config.total_step = total
        config.tinit = _steps(self.tinit, total)
        config.tfinal = max(1, _steps(self.tfinal, total))
        if config.tinit >= total - config.tfinal:
            raise ValueError(f"model.tinit ({config.tinit} steps) + model.tfinal ({config.tfinal}) leave no budget "
                             f"schedule in {total} optimiser steps; lower them or train longer")

    def allocate(self, step: int) -> None:
        """PEFT's ``update_and_allocate(step)``: after ``optimizer.step()``, before ``zero_grad()``."""
        self.backbone.base_model.update_and_allocate(step)

    def regularization(self) -> torch.Tensor:
        return hf_adalora_orth_penalty(self.backbone, self.orth_reg_weight)

    def configure_callbacks(self) -> list:
        from pefthub.callbacks.hf_peft import HFPEFTRankAllocation

        return [*super().configure_callbacks(), HFPEFTRankAllocation()]

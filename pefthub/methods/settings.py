"""Each method's structural settings as one frozen dataclass: the constructor fills and
validates it once, ``asdict()`` of it is the method's part of ``adapter_config.json``, and a
loader reads it back with ``from_config`` (as HF PEFT's ``LoraConfig`` is both the schema
and the file). Only what shapes or scales the adapter belongs here; per-layer results (the
ranks each layer ended with, masks, sites, measured importances) are written beside it by
the method. A method built on LoRA (FW/IW-LoRA, GLoRA) keeps :class:`LoRASettings` as
``module.settings`` and its own part in a second dataclass; both go into the file.

Validation messages name the YAML key (``model.<key>``), as the constructor's did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pefthub.adapters.adalora import ORTH_REG_FORMS
from pefthub.importance_estimator import NORMALIZATIONS, check_source

S = TypeVar("S")


def from_config(cls: type[S], config: Mapping[str, Any], **fallbacks: Any) -> S:
    """``cls`` read back from an ``adapter_config.json`` dict: each field from its key, else
    from ``fallbacks``, else the field's default (older or imported files lack some keys)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in config:
            values[f.name] = config[f.name]
        elif f.name in fallbacks:
            values[f.name] = fallbacks[f.name]
    return cls(**values)


@dataclass(frozen=True)
class LoRASettings:
    """LoRA's structural settings: ``y = W x + (alpha / rank) B A dropout(x)`` on the
    ``target_modules`` (``None``: the backbone family's default, filled in by the module)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"model.rank must be >= 1, got {self.rank}")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", list(self.target_modules))


@dataclass(frozen=True)
class AdaLoRASchedule:
    """AdaLoRA's budget schedule (T − ``tfinal`` is where the final budget is reached);
    :class:`~pefthub.adapters.rank_allocation.RankAllocator` resolves and checks it against T."""

    tinit: int | float = 0.1
    tfinal: int | float = 0.2
    delta_t: int = 1
    beta1: float = 0.85
    beta2: float = 0.85


@dataclass(frozen=True)
class AdaLoRASettings:
    """AdaLoRA's structural settings: ``y = W x + (alpha / init_rank) P diag(λ) Q dropout(x)``
    pruned from ``init_rank`` to ``target_rank`` triplets per matrix on average, with the
    orthogonality penalty γ · R(P, Q) (``orth_reg_weight``, ``orth_reg_form``)."""

    init_rank: int = 12
    target_rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    schedule: AdaLoRASchedule = field(default_factory=AdaLoRASchedule)
    orth_reg_weight: float = 0.1
    orth_reg_form: str = "mean_norm"

    def __post_init__(self) -> None:
        if self.init_rank < 1:
            raise ValueError(f"model.init_rank must be >= 1, got {self.init_rank}")
        if not 0 <= self.target_rank <= self.init_rank:
            raise ValueError(f"model.target_rank must be in [0, init_rank={self.init_rank}], got {self.target_rank}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"model.orth_reg_weight must be >= 0, got {self.orth_reg_weight}")
        if self.orth_reg_form not in ORTH_REG_FORMS:
            raise ValueError(f"model.orth_reg_form must be one of {ORTH_REG_FORMS}, got {self.orth_reg_form!r}")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", list(self.target_modules))
        if isinstance(self.schedule, Mapping):  # read back from JSON
            known = {f.name for f in dataclasses.fields(AdaLoRASchedule)}
            object.__setattr__(self, "schedule", AdaLoRASchedule(**{k: v for k, v in self.schedule.items() if k in known}))


@dataclass(frozen=True)
class VeRASettings:
    """VeRA's structural settings: a frozen random pair A, B of shared dimension ``rank`` drawn
    from ``projection_prng_key``, trained per-layer scalings d (starting at ``d_initial``) and b."""

    rank: int = 256
    d_initial: float = 0.1
    projection_prng_key: int = 0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    save_projection: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"model.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "d_initial", float(self.d_initial))
        object.__setattr__(self, "projection_prng_key", int(self.projection_prng_key))
        object.__setattr__(self, "save_projection", bool(self.save_projection))
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", list(self.target_modules))


@dataclass(frozen=True)
class ImportanceLoRASettings:
    """FW/IW-LoRA's penalty settings, beside :class:`LoRASettings`:
    ``loss = task loss + λ Σ_m (1 − I_m)^β ‖ΔW_m‖²_F`` with λ = ``penalty_weight``,
    β = ``penalty_exponent`` and I_m the ``importance_source`` values normalised by
    ``importance_normalization`` (``sum``: v / Σ v, ``max``: v / max v). The warm-up's
    settings (steps, EMA, calibration) shape no adapter and are not written."""

    importance_source: str = "fisher"
    importance_normalization: str = "sum"
    penalty_weight: float = 0.01
    penalty_exponent: float = 1.0

    def __post_init__(self) -> None:
        if self.importance_normalization not in NORMALIZATIONS:
            raise ValueError(
                f"model.importance_normalization must be one of {NORMALIZATIONS}, got {self.importance_normalization!r}"
            )
        if self.penalty_weight < 0:
            raise ValueError(f"model.penalty_weight (λ) must be >= 0, got {self.penalty_weight}")
        if self.penalty_exponent <= 0:
            raise ValueError(f"model.penalty_exponent (β) must be > 0, got {self.penalty_exponent}")
        check_source(self.importance_source)


@dataclass(frozen=True)
class GLoRASettings:
    """GLoRA's allocation settings, beside :class:`LoRASettings` (whose ``rank`` is r_init):
    after the warm-up ``r_k = round(R_total · s_k)`` with R_total = ``total_rank`` and s_k the
    normalised ``importance_source`` values. ``total_rank`` ``None`` is filled in by the module
    (targets × rank), which also checks it against what the targets can hold (their shapes)."""

    total_rank: int | None = None
    importance_source: str = "grad_norm"

    def __post_init__(self) -> None:
        check_source(self.importance_source)

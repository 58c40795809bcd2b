"""UniHyperLoRA: one adapter, defined in a canonical space, for hosts of any width and depth.

Plain torch, no Lightning. Notation: a frozen layer ``y = W x`` with
``W ∈ R^{d_out×d_in}``; M atoms, canonical width d0.

* Canonical atoms ``U, V ∈ R^{M×d0}`` (shared by every layer of every host).
* Projector generator h_ψ: for any width d, row i of ``G(d) ∈ R^{d×2d0}`` is
  ``MLP_ψ(φ(t_i, log d))`` with Fourier features ``φ(t) = [sin 2πf t, cos 2πf t]_f`` of the unit's
  coordinate ``t_i = (i + ½)/d``. Its first d0 columns give ``P_out(d) = G_out/√d0 ∈ R^{d×d0}``,
  the last d0 give ``P_in(d) = G_inᵀ/√d ∈ R^{d0×d}``. The scalings keep ``‖P_in x‖`` and the
  per-unit size of ``P_out c`` independent of d (``E‖P_in x‖² = (1/d) Σ_i ‖G_in,i‖² · σ²_x``,
  a Riemann mean over t). ψ's parameter count does not depend on d; note that
  ``rank P(d) ≤ min(d, d0, generator_hidden)`` since the MLP's last layer is linear.
* SAT-LoRA (the projector ablation) replaces h_ψ by
  :class:`LearnedProjectors` (``projector="learned"``): for each distinct width d of ONE host, free
  parameters ``P_out(d) ∈ R^{d×d0}`` and ``P_in(d) ∈ R^{d0×d}``, used wherever h_ψ's are. Nothing
  else changes; such an adapter only runs on hosts whose widths it has projectors for.
* Mixer g_θ(ℓ/L, one-hot(type)) ∈ R^M: a two-layer sine MLP, ``m = 1 + W₂ sin(W₁ [ℓ/L; e_type] + b₁) + b₂ + δθ[type]``,
  where δθ ∈ R^{T×M} (T canonical module types, zero at start) is the only part tuned on a new host.
* Router r_φ, once per transformer block and token, reading the block input h in canonical space:
  ``logits = W_r P_in(d) (h / rms(h)) + W_t e_task + b``; the top-k atoms S (k ≤ 2) get gates
  ``π_j = σ(logit_j)`` (zeroed below ``threshold``).
* Update at layer (ℓ, type): ``y = W x + s · Σ_{j∈S} π_j m_j · P_out u_j (v_jᵀ P_in x)``.

The update is computed without ever forming ΔW (nor the M atom responses): with the folded
matrices ``Ṽ(d) = V P_in(d) ∈ R^{M×d}`` and ``Ũ(d) = U P_out(d)ᵀ ∈ R^{M×d}`` (one per width per
forward, cached while the weights do not change), a token costs ``k (d_in + d_out)`` multiply-adds
per layer plus ``M d`` per block for the router. ``v_jᵀ P_in x = ṽ_j · x`` and ``P_out u_j = ũ_j``
exactly, so this is the equation above, reassociated.

The shared components live in one :class:`HyperShared` module (registered once, on the owner);
each :class:`HyperLinear` holds only its site metadata and an *unregistered* reference to it, so
state dicts, checkpoints and parameter counts see every shared tensor exactly once.

The code is split by part (this module re-exports every name, so imports from it keep working):
:mod:`~pefthub.adapters.hyper_types` (module types, block names),
:mod:`~pefthub.adapters.hyper_projectors` (h_ψ and SAT-LoRA's learned projectors),
:mod:`~pefthub.adapters.hyper_mixer` (g_θ), :mod:`~pefthub.adapters.hyper_router` (r_φ),
:mod:`~pefthub.adapters.hyper_shared` (:class:`HyperShared`) and
:mod:`~pefthub.adapters.hyper_layers` (:class:`HyperLinear`, :class:`PortableHead`).
"""

from pefthub.adapters.hyper_layers import HyperLinear, PortableHead
from pefthub.adapters.hyper_mixer import SineMixer
from pefthub.adapters.hyper_projectors import (
    PROJECTOR_BASES,
    PROJECTOR_KINDS,
    LearnedProjectors,
    ProjectorGenerator,
    generated_projector_energy,
)
from pefthub.adapters.hyper_router import Router
from pefthub.adapters.hyper_shared import UPDATE_IMPLS, HyperShared
from pefthub.adapters.hyper_types import (
    CANONICAL_TYPES,
    DEFAULT_TYPE_MAP,
    block_name,
    canonical_type,
)

__all__ = [
    "CANONICAL_TYPES",
    "DEFAULT_TYPE_MAP",
    "PROJECTOR_BASES",
    "PROJECTOR_KINDS",
    "UPDATE_IMPLS",
    "HyperLinear",
    "HyperShared",
    "LearnedProjectors",
    "PortableHead",
    "ProjectorGenerator",
    "Router",
    "SineMixer",
    "block_name",
    "canonical_type",
    "generated_projector_energy",
]

"""UniHyperLoRA: one adapter, defined in a canonical space, for hosts of any width and depth.

Plain torch, no Lightning. Notation (DESIGN.md section 3): a frozen layer ``y = W x`` with
``W ∈ R^{d_out×d_in}``; M atoms, canonical width d0.

* Canonical atoms ``U, V ∈ R^{M×d0}`` (shared by every layer of every host).
* Projector generator h_ψ: for any width d, row i of ``G(d) ∈ R^{d×2d0}`` is
  ``MLP_ψ(φ(t_i, log d))`` with Fourier features ``φ(t) = [sin 2πf t, cos 2πf t]_f`` of the unit's
  coordinate ``t_i = (i + ½)/d``. Its first d0 columns give ``P_out(d) = G_out/√d0 ∈ R^{d×d0}``,
  the last d0 give ``P_in(d) = G_inᵀ/√d ∈ R^{d0×d}``. The scalings keep ``‖P_in x‖`` and the
  per-unit size of ``P_out c`` independent of d (``E‖P_in x‖² = (1/d) Σ_i ‖G_in,i‖² · σ²_x``,
  a Riemann mean over t). ψ's parameter count does not depend on d; note that
  ``rank P(d) ≤ min(d, d0, generator_hidden)`` since the MLP's last layer is linear.
* SAT-LoRA (the projector ablation, DESIGN.md section 3 point 9) replaces h_ψ by
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
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from contextlib import contextmanager
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from pefthub.adapters.frozen_linear import FrozenLinearWrapper
from pefthub.adapters.lowrank_update import (
    adapter_dropout,
    adapter_dropout_backward,
    cached_transpose,
    dropout_probability,
)

# Width- and family-agnostic module types the mixer is conditioned on.
CANONICAL_TYPES: tuple[str, ...] = ("q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out")

# Target pattern -> canonical type, for the families pefthub knows (DESIGN.md section 3).
DEFAULT_TYPE_MAP: dict[str, str] = {
    # BERT
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "attention.output.dense": "o",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    # MPNet
    "attn.q": "q",
    "attn.k": "k",
    "attn.v": "v",
    "attn.o": "o",
    # Llama
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_in",
    "mlp.down_proj": "ffn_out",
}

_BLOCK = re.compile(r"^(.*?\.\d+)\.")


def canonical_type(pattern: str, type_map: dict[str, str] | None = None) -> str:
    """The canonical module type of a target pattern; a ValueError names the config key to set."""
    mapping = {**DEFAULT_TYPE_MAP, **(type_map or {})}
    kind = mapping.get(pattern)
    if kind is None or kind not in CANONICAL_TYPES:
        raise ValueError(
            f"target pattern {pattern!r} has no canonical module type; set `model.module_types` "
            f"to map it to one of {CANONICAL_TYPES}"
        )
    return kind


def block_name(site_name: str) -> str | None:
    """``encoder.layer.3`` for ``encoder.layer.3.attention.self.query`` (None without an index)."""
    match = _BLOCK.match(site_name)
    return match.group(1) if match else None


# --------------------------------------------------------------------------- generator

PROJECTOR_BASES: tuple[str, ...] = ("fourier", "none")


class ProjectorGenerator(nn.Module):
    """h_ψ: width d (and optional unit coordinates) -> ``P_out(d) ∈ R^{d×d0}``, ``P_in(d) ∈ R^{d0×d}``.

    Row i of ``G(d) ∈ R^{d×2d0}`` is ``√(2e) [b(t_i), b(t_i)] + (MLP_ψ(φ(t_i)) − mean_i MLP_ψ(φ(t_i)))``
    with ``basis="fourier"``, and ``MLP_ψ(φ(t_i))`` alone with ``basis="none"`` (the generator
    before issue 17). ``b(t)_c = cos(2π f_c t + β_c)`` with ``f_c = ⌊c/2⌋ + 1`` and
    ``β_c ∈ {0, −π/2}`` (a cosine and a sine per frequency; no constant column): on the midpoint
    grid ``t_i = (i + ½)/d`` its d0 columns are exactly orthogonal whenever ``d > d0``, so the
    projectors have full rank d0 with equal singular values at every width, from no parameters.
    ``e`` = :func:`generated_projector_energy` (≈ 3.65) keeps ``E[G²]`` what the MLP-only generator
    starts with, so the update starts at the scale it always had, and at the scale of SAT-LoRA's
    learned projectors (which are initialised to that energy).
    The MLP part starts at zero (last layer zero-initialised) and is centred over the units:
    a component constant over the units is what a post-LayerNorm host removes, and it is what
    the MLP-only generator's projectors were made of (one singular value 7× the next at
    initialisation, participation ratio 1.4 of 256 on MiniLM-L6's widths), so that source
    training barely learnt (docs/methods/unihyperlora.md, "Why the source did not learn").

    Args:
        d0: canonical width.
        num_frequencies: number F of Fourier frequencies of the MLP's features (geometric from 1
            to ``max_frequency``).
        max_frequency: highest of them, in cycles over the unit coordinate range [0, 1).
        hidden: width of the MLP's hidden layer (its parameter count is ``(2F + 2) hidden +
            2 d0 (hidden + 1)``; with ``basis="none"`` it also bounds the projectors' rank).
        width_feature: append ``ln(d / d0) / ln 16`` to the features (its input weights start at
            zero, so an untrained width feature changes nothing).
        basis: ``fourier`` (the fixed orthogonal part above) or ``none``.
    """

    def __init__(
        self,
        d0: int,
        num_frequencies: int = 16,
        max_frequency: float = 64.0,
        hidden: int = 256,
        width_feature: bool = True,
        basis: str = "fourier",
    ) -> None:
        super().__init__()
        if num_frequencies < 1:
            raise ValueError(f"model.num_frequencies must be >= 1, got {num_frequencies}")
        if max_frequency < 1:
            raise ValueError(f"model.max_frequency must be >= 1, got {max_frequency}")
        if hidden < 1:
            raise ValueError(f"model.generator_hidden must be >= 1, got {hidden}")
        if basis not in PROJECTOR_BASES:
            raise ValueError(f"model.projector_basis must be one of {PROJECTOR_BASES}, got {basis!r}")
        self.d0 = d0
        self.width_feature = width_feature
        self.basis = basis
        self.max_frequency = float(max_frequency)
        frequencies = torch.logspace(0, math.log10(max_frequency), num_frequencies, dtype=torch.float64)
        self.register_buffer("frequencies", frequencies.float(), persistent=False)
        columns = torch.arange(d0)
        self.register_buffer("basis_frequencies", (columns // 2 + 1).float(), persistent=False)
        self.register_buffer("basis_phases", (columns % 2).float() * (-math.pi / 2), persistent=False)
        in_features = 2 * num_frequencies + int(width_feature)
        self.inner = nn.Linear(in_features, hidden)
        self.outer = nn.Linear(hidden, 2 * d0)
        with torch.no_grad():
            # features are O(1); this keeps G's entries O(1) as well
            nn.init.normal_(self.inner.weight, std=1.0 / math.sqrt(2 * num_frequencies))
            nn.init.uniform_(self.inner.bias, -math.pi, math.pi)
            if basis == "fourier":  # the basis alone at start: exactly orthogonal projectors
                nn.init.zeros_(self.outer.weight)
            else:
                nn.init.normal_(self.outer.weight, std=1.0 / math.sqrt(hidden) * math.sqrt(2.0))
            nn.init.zeros_(self.outer.bias)
            if width_feature:
                self.inner.weight[:, -1].zero_()
        self._basis_cache: dict = {}  # (d, device, positions) -> √(2e) [B, B]: no parameters, built once
        # √(2e) as a plain float: computing it (a cached quadrature) inside a compiled forward
        # would break the graph at every layer
        self._basis_scale = math.sqrt(2.0 * generated_projector_energy())

    def _positions(self, d: int, positions: torch.Tensor | None) -> torch.Tensor:
        if positions is None:
            return (torch.arange(d, device=self.frequencies.device, dtype=torch.float32) + 0.5) / d
        return positions.to(self.frequencies.device, torch.float32)

    def fourier_basis(self, d: int, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``B(d) ∈ R^{d×d0}``, ``B_ic = cos(2π f_c t_i + β_c)`` (no parameters)."""
        angles = 2 * math.pi * self._positions(d, positions)[:, None] * self.basis_frequencies[None, :]
        return torch.cos(angles + self.basis_phases[None, :])

    def features(self, d: int, positions: torch.Tensor | None = None) -> torch.Tensor:
        """φ, shape (d, 2F [+1]): Fourier features of the unit coordinates (+ the width feature)."""
        device = self.frequencies.device
        angles = 2 * math.pi * self._positions(d, positions)[:, None] * self.frequencies[None, :]
        parts = [torch.sin(angles), torch.cos(angles)]
        if self.width_feature:
            parts.append(torch.full((d, 1), math.log(d / self.d0) / math.log(16.0), device=device))
        return torch.cat(parts, dim=1)

    def _scaled_basis(self, d: int, positions: torch.Tensor | None) -> torch.Tensor:
        """``√(2e) [B(d), B(d)]`` (d, 2 d0), cached per width, device and coordinates (it is a
        constant: caching it keeps the training step's op count where it was)."""
        build = lambda: torch.cat([self.fourier_basis(d, positions)] * 2, dim=1) * self._basis_scale  # noqa: E731
        if torch.compiler.is_compiling():
            return build()
        key = (d, self.frequencies.device, None if positions is None else (positions.data_ptr(), positions._version, positions.shape))
        if key not in self._basis_cache:
            with torch.no_grad(), torch.inference_mode(False):
                self._basis_cache[key] = build()
        return self._basis_cache[key]

    def forward(self, d: int, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if d < 1:
            raise ValueError(f"projector width must be >= 1, got {d}")
        grid = self.outer(F.gelu(self.inner(self.features(d, positions))))  # (d, 2 d0)
        if self.basis == "fourier":
            grid = grid - grid.mean(0, keepdim=True) + self._scaled_basis(d, positions)
        p_out = grid[:, : self.d0] / math.sqrt(self.d0)
        p_in = grid[:, self.d0 :].t() / math.sqrt(d)
        return p_out, p_in

    def macs(self, d: int) -> int:
        """Multiply-adds of one call for width d (the two matrix products)."""
        return d * (self.inner.in_features * self.inner.out_features + self.outer.in_features * self.outer.out_features)


PROJECTOR_KINDS: tuple[str, ...] = ("generated", "learned")
UPDATE_IMPLS: tuple[str, ...] = ("auto", "sparse", "dense")


@cache
def generated_projector_energy() -> float:
    """``E[G_ij²]`` of a freshly initialised :class:`ProjectorGenerator` (``basis="none"``: the MLP's
    output; ``basis="fourier"`` scales its basis to the same value), so that learned projectors
    can start at the same scale (it is ``‖P_in‖²_F / d0`` and ``‖P_out‖²_F / d`` in expectation).

    With F frequencies ``‖φ‖² = Σ_f sin² + cos² = F`` exactly and the first-layer weights have
    std ``1/√(2F)``, so a hidden pre-activation is ``z = a + b`` with ``a ~ N(0, ½)``,
    ``b ~ U(−π, π)``; the second layer (std ``√(2/hidden)``, zero bias) gives
    ``E[G²] = 2 E[gelu(z)²]`` whatever d, F and hidden are. Computed by quadrature (≈ 3.65).
    """
    nodes = torch.linspace(-8.0, 8.0, 1601, dtype=torch.float64)  # a / σ_a, σ_a = √½
    density = torch.exp(-0.5 * nodes**2)
    density = density / density.sum()
    offsets = ((torch.arange(2048, dtype=torch.float64) + 0.5) / 2048 * 2 - 1) * math.pi  # b, uniform
    z = math.sqrt(0.5) * nodes[:, None] + offsets[None, :]
    return float(2.0 * (density[:, None] * F.gelu(z).pow(2)).sum(0).mean())


class LearnedProjectors(nn.Module):
    """SAT-LoRA's projectors: free ``P_out(d) ∈ R^{d×d0}`` and ``P_in(d) ∈ R^{d0×d}`` per width d.

    Stored as ``p_out["<d>"]`` and ``p_in["<d>"]``. Each starts as a scaled random partial isometry
    (``nn.init.orthogonal_``) with ``‖P‖²_F = e · rows``, e = :func:`generated_projector_energy`:
    for inputs with unit-variance entries every output entry then has variance e,
    ``E‖P_in x‖² = e d0`` and the per-unit ``E|(P_out c)_i|² = e`` at every width, exactly what the
    generated projectors give at initialisation (so the two start with updates of one size). An
    orthogonal matrix of shape (a, b) has ``min(a, b)`` unit singular values, so the gain is
    ``√(e a / min(a, b))``.

    Args:
        d0: canonical width.
    """

    def __init__(self, d0: int) -> None:
        super().__init__()
        self.d0 = d0
        self.p_out = nn.ParameterDict()
        self.p_in = nn.ParameterDict()

    @property
    def widths(self) -> list[int]:
        return sorted(int(k) for k in self.p_out.keys())

    def add(self, widths: Iterable[int]) -> None:
        """Create the projectors of every width in ``widths`` not yet present (on this module's
        device once it has parameters)."""
        existing = next(iter(self.parameters()), None)
        device = existing.device if existing is not None else None
        for d in sorted({int(w) for w in widths}):
            if d < 1:
                raise ValueError(f"projector width must be >= 1, got {d}")
            if str(d) in self.p_out:
                continue
            p_out = torch.empty(d, self.d0, device=device)
            p_in = torch.empty(self.d0, d, device=device)
            energy = generated_projector_energy()
            nn.init.orthogonal_(p_out, gain=math.sqrt(energy * d / min(d, self.d0)))
            nn.init.orthogonal_(p_in, gain=math.sqrt(energy * self.d0 / min(d, self.d0)))
            self.p_out[str(d)] = nn.Parameter(p_out)
            self.p_in[str(d)] = nn.Parameter(p_in)

    def forward(self, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(int(d))
        if key not in self.p_out:
            raise ValueError(
                f"SAT-LoRA has no learned projector for width {int(d)} (it has widths {self.widths}): "
                "its projectors are learned per host, so SAT-LoRA must be retrained for each host "
                "(UniHyperLoRA's generated projectors are the ones that transfer)"
            )
        return self.p_out[key], self.p_in[key]


# --------------------------------------------------------------------------- mixer, router


class SineMixer(nn.Module):
    """g_θ: ``m(ℓ/L, type) = 1 + W₂ sin(W₁ [ℓ/L; one-hot(type)] + b₁) + b₂ + δθ[type] ∈ R^M``.

    The ``1 +`` keeps every atom usable at start and leaves only small values to quantise.
    δθ (``delta``, T×M, zeros) is the host-adaptation bias tuned alone after a transfer.
    """

    def __init__(self, num_atoms: int, num_types: int, hidden: int = 16, omega: float = 2.0) -> None:
        super().__init__()
        self.num_types = num_types
        self.inner = nn.Linear(1 + num_types, hidden)
        self.outer = nn.Linear(hidden, num_atoms)
        self.delta = nn.Parameter(torch.zeros(num_types, num_atoms))
        with torch.no_grad():
            nn.init.normal_(self.inner.weight, std=omega)
            nn.init.uniform_(self.inner.bias, -math.pi, math.pi)
            nn.init.normal_(self.outer.weight, std=0.1 / math.sqrt(hidden))
            nn.init.zeros_(self.outer.bias)

    def forward(self, depth_fraction: float, type_index: int) -> torch.Tensor:
        code = torch.zeros(1, 1 + self.num_types, device=self.delta.device, dtype=self.delta.dtype)
        code[0, 0] = depth_fraction
        code[0, 1 + type_index] = 1.0
        return 1.0 + self.outer(torch.sin(self.inner(code)))[0] + self.delta[type_index]

    def table(self, codes: torch.Tensor, type_indices: torch.Tensor) -> torch.Tensor:
        """``m`` for many sites at once: ``codes`` (n, 1 + T) rows ``[ℓ/L; one-hot(type)]``,
        ``type_indices`` (n,) → (n, M). One batched evaluation per host forward instead of one
        per adapted layer (the step is launch-bound on a GPU)."""
        return 1.0 + self.outer(torch.sin(self.inner(codes))) + self.delta[type_indices]

    def macs(self) -> int:
        """Multiply-adds of one call (the two linear layers)."""
        return self.inner.in_features * self.inner.out_features + self.outer.in_features * self.outer.out_features

    def base_parameters(self) -> dict[str, nn.Parameter]:
        """θ without δθ."""
        return {n: p for n, p in self.named_parameters() if n != "delta"}


class Router(nn.Module):
    """r_φ: canonical hidden state and task embedding -> atom logits, ``W_r ẑ + W_t e_task + b``."""

    def __init__(self, num_atoms: int, d0: int, num_tasks: int = 1, task_dim: int = 16) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_atoms, d0) / math.sqrt(d0))
        self.task_embedding = nn.Parameter(torch.randn(num_tasks, task_dim) / math.sqrt(task_dim))
        self.task_weight = nn.Parameter(torch.zeros(num_atoms, task_dim))
        self.bias = nn.Parameter(torch.zeros(num_atoms))

    def task_bias(self, task_id: int) -> torch.Tensor:
        if not 0 <= task_id < self.task_embedding.shape[0]:
            raise ValueError(f"model.task_id={task_id} is outside [0, num_tasks={self.task_embedding.shape[0]})")
        embedding = self.task_embedding[task_id : task_id + 1]  # (1, task_dim): 2-D keeps FLOP counters exact
        return F.linear(embedding, self.task_weight, self.bias)[0]


# --------------------------------------------------------------------------- shared container


class HyperShared(nn.Module):
    """Everything UniHyperLoRA learns except the task head: atoms, h_ψ, g_θ (+δθ), r_φ.

    Args:
        num_atoms: M, the number of canonical rank-one atoms.
        d0: canonical width.
        top_k: atoms per token (1 or 2).
        projector: where ``P_out(d)``, ``P_in(d)`` come from. ``"generated"`` (UniHyperLoRA): the
            generator h_ψ, any width. ``"learned"`` (SAT-LoRA): free per-width matrices
            (:class:`LearnedProjectors`, in ``self.learned``; ``self.generator`` is None), created
            by :meth:`add_projectors` for the host's widths; other widths are an error.
        num_frequencies, max_frequency, generator_hidden, width_feature: see
            :class:`ProjectorGenerator` (generated projectors only).
        projector_basis: ``fourier`` (fixed orthogonal Fourier part + centred MLP) or ``none``
            (MLP alone, the generator before issue 17); see :class:`ProjectorGenerator`.
        mixer_hidden: hidden width of the sine mixer.
        mixer_omega: std of the mixer's first-layer weights (the sine's frequency scale).
        num_tasks: rows of the router's task-embedding table.
        task_dim: task-embedding size.
        task_id: which task embedding the router reads.
        threshold: gates ``σ(logit)`` below it are zeroed (0 keeps all k atoms active).
        scale: s, multiplies the update.
        update_impl: how a layer computes its update. ``sparse``: gather the k routed atoms'
            rows per token (k (d_in + d_out) multiply-adds per token; what the FLOP figures
            count). ``dense``: the same value as a rank-M product with the gates as a sparse
            (token × atom) matrix — M/k times the multiply-adds but ~20 aten ops per layer
            instead of ~50, the faster choice where a step is launch-bound (GPUs). ``auto``:
            dense on CUDA, sparse elsewhere. Tracing (fvcore) always takes the sparse path.
    """

    def __init__(
        self,
        num_atoms: int = 128,
        d0: int = 256,
        top_k: int = 2,
        num_frequencies: int = 16,
        max_frequency: float = 64.0,
        generator_hidden: int = 256,
        width_feature: bool = True,
        mixer_hidden: int = 16,
        mixer_omega: float = 2.0,
        num_tasks: int = 1,
        task_dim: int = 16,
        task_id: int = 0,
        threshold: float = 0.0,
        scale: float = 1.0,
        projector: str = "generated",
        update_impl: str = "auto",
        projector_basis: str = "fourier",
    ) -> None:
        super().__init__()
        if update_impl not in UPDATE_IMPLS:
            raise ValueError(f"model.update_impl must be one of {UPDATE_IMPLS}, got {update_impl!r}")
        self.update_impl = update_impl
        if projector not in PROJECTOR_KINDS:
            raise ValueError(f"projector must be one of {PROJECTOR_KINDS}, got {projector!r}")
        if num_atoms < 1 or d0 < 1:
            raise ValueError(f"model.num_atoms and model.d0 must be >= 1, got {num_atoms}, {d0}")
        if not 1 <= top_k <= min(2, num_atoms):
            raise ValueError(f"model.top_k must be 1 or 2 (and <= num_atoms), got {top_k}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"model.threshold must be in [0, 1), got {threshold}")
        self.num_atoms, self.d0, self.top_k = num_atoms, d0, top_k
        self.task_id, self.threshold, self.scale = task_id, threshold, scale
        # U = 0, V random: a fresh adapter leaves the host unchanged (as LoRA's B = 0)
        self.atoms_U = nn.Parameter(torch.zeros(num_atoms, d0))
        self.atoms_V = nn.Parameter(torch.randn(num_atoms, d0) / math.sqrt(d0))
        self.projector = projector
        if projector == "generated":
            self.generator = ProjectorGenerator(d0, num_frequencies, max_frequency, generator_hidden, width_feature, projector_basis)
            self.learned = None
        else:  # SAT-LoRA: no h_ψ at all
            self.generator = None
            self.learned = LearnedProjectors(d0)
        self.mixer = SineMixer(num_atoms, len(CANONICAL_TYPES), mixer_hidden, mixer_omega)
        self.router = Router(num_atoms, d0, num_tasks, task_dim)
        self.router.task_bias(task_id)  # fails early on a bad task_id
        self.bypass = False  # True: every HyperLinear returns its base layer's output
        self.num_layers = 1
        self._positions: dict[int, torch.Tensor] = {}
        self._eval_cache: dict = {}
        self._step_cache: dict = {}
        self._forward_id = 0
        self._routing: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._token_mask: torch.Tensor | None = None
        self._gates: list[torch.Tensor] = []  # this forward's gates, one tensor (..., k) per routing
        self._handles: list = []
        self._sites: list[tuple[int, int]] = []  # (depth, type index) of each HyperLinear, by site index
        self._site_widths: list[tuple[int, int]] = []  # (d_in, d_out) of each site
        self._block_site_lists: dict[int, list[int]] = {}  # depth -> site indices, in order
        self._width_users: dict[tuple[str, int], list[int]] = {}  # ("in"|"out", width) -> site indices
        self._constants: dict = {}  # device-side index/code tensors, built once per device

    # ------------------------------------------------------------------ config

    def config(self) -> dict:
        """The settings an adapter file records. Generated projectors: the generator's settings.
        Learned projectors: ``"projector": "learned"`` and the widths they exist for."""
        gen, mix, rt = self.generator, self.mixer, self.router
        if gen is not None:
            projector = {
                "num_frequencies": gen.frequencies.numel(),
                "max_frequency": gen.max_frequency,
                "generator_hidden": gen.inner.out_features,
                "width_feature": gen.width_feature,
                "projector_basis": gen.basis,
            }
        else:
            projector = {"projector": "learned", "widths": self.learned.widths}
        return {
            "num_atoms": self.num_atoms,
            "d0": self.d0,
            "top_k": self.top_k,
            **projector,
            "mixer_hidden": mix.inner.out_features,
            "num_tasks": rt.task_embedding.shape[0],
            "task_dim": rt.task_embedding.shape[1],
            "task_id": self.task_id,
            "threshold": self.threshold,
            "scale": self.scale,
            "module_types": list(CANONICAL_TYPES),
        }

    # ------------------------------------------------------------------ host wiring

    def attach(self, backbone: nn.Module, depths: Iterable[tuple[int, str | None]], num_layers: int) -> None:
        """Register the hooks that reset per-forward state (on ``backbone``) and route tokens
        once per block (a forward pre-hook on each block named in ``depths``)."""
        self.detach()
        self.num_layers = max(1, int(num_layers))
        self._handles.append(backbone.register_forward_pre_hook(self._on_host_forward, with_kwargs=True))
        self._handles.append(backbone.register_forward_hook(self._after_host_forward))
        for depth, name in sorted(set(depths)):
            if name is None:
                continue
            block = backbone.get_submodule(name)
            self._handles.append(block.register_forward_pre_hook(self._block_hook(depth), with_kwargs=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def add_projectors(self, widths: Iterable[int]) -> None:
        """Learned projectors only: create ``P_out(d)``, ``P_in(d)`` for each width d of the host
        (the adapted layers' d_in and d_out, and the hidden size the router and head read)."""
        if self.learned is None:
            raise ValueError("add_projectors is for learned projectors (projector='learned'); generated ones cover every width")
        self.learned.add(widths)
        self.clear_cache()

    def set_positions(self, width: int, positions: torch.Tensor | None) -> None:
        """Unit coordinates in [0, 1) to use for width ``width`` instead of ``(i+½)/d`` (e.g. a
        width-pruned host keeping a subset of its source's units). Generated projectors only;
        learned ones ignore them."""
        if positions is None:
            self._positions.pop(width, None)
        else:
            if positions.shape != (width,):
                raise ValueError(f"positions for width {width} must have shape ({width},), got {tuple(positions.shape)}")
            self._positions[width] = positions.detach().float()
        self._eval_cache.clear()

    def _on_host_forward(self, module, args, kwargs):
        if not torch.compiler.is_compiling():  # a changing counter would be a guard: recompiles
            self._forward_id += 1
        self._step_cache.clear()
        self._routing.clear()
        self._gates = []
        mask = kwargs.get("attention_mask")
        self._token_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _after_host_forward(self, module, args, output):
        self._routing.clear()  # a layer called on its own later must not see this forward's routes
        self._token_mask = None

    def _block_hook(self, depth: int):
        def hook(module, args, kwargs):
            if self.bypass:
                return
            hidden = args[0] if args else kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                self._routing[depth] = self.route(hidden)

        return hook

    # ------------------------------------------------------------------ cached folds

    def _trainable(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def _cached(self, key: tuple, compute):
        """Per-forward cache while training (ψ, U, V, φ change every step and the graph must be
        fresh), and a cache keyed on the parameters' versions otherwise (eval, no grad)."""
        inner = compute

        def compute() -> torch.Tensor:
            # projectors and folds are small (per width, not per token) and feed every token's
            # update: computed in fp32 even under autocast, which would round them to bf16
            with torch.autocast(self.atoms_V.device.type, enabled=False):
                return inner()

        if torch.compiler.is_compiling():
            return compute()  # no Python-side caches inside a compiled graph (they would be guarded on)
        key = tuple(int(k) if isinstance(k, torch.Tensor) else k for k in key)  # traced shapes are tensors
        if self._trainable():
            cache, full_key = self._step_cache, (key, self._forward_id)
        else:
            versions = tuple((p._version, p.data_ptr()) for p in self.parameters())
            # a fold computed under autocast is in the low dtype: never reuse it outside autocast
            device_type = self.atoms_V.device.type
            precision = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
            cache, full_key = self._eval_cache, (key, versions, precision)
            if full_key not in cache:
                for old in [k for k in cache if k[0] == key]:
                    del cache[old]
        if full_key not in cache:
            cache[full_key] = compute()
        return cache[full_key]

    def projectors(self, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_out(d), P_in(d))``: from h_ψ, or the learned ones (a ValueError for a width without)."""
        if self.learned is not None:
            return self.learned(d)
        return self._cached(("P", d), lambda: self.generator(d, self._positions.get(d)))

    def folded_in(self, d: int) -> torch.Tensor:
        """``Ṽ(d) = V P_in(d) ∈ R^{M×d}``."""
        return self._cached(("V", d), lambda: self.atoms_V @ self.projectors(d)[1])

    def folded_out(self, d: int) -> torch.Tensor:
        """``Ũ(d) = U P_out(d)ᵀ ∈ R^{M×d}``: row j is ``P_out(d) u_j``."""
        return self._cached(("U", d), lambda: self.atoms_U @ self.projectors(d)[0].t())

    def folded_router(self, d: int) -> torch.Tensor:
        """``W_r P_in(d) ∈ R^{M×d}``."""
        return self._cached(("R", d), lambda: self.router.weight @ self.projectors(d)[1])

    def clear_cache(self) -> None:
        self._eval_cache.clear()
        self._step_cache.clear()

    # ------------------------------------------------------------------ per-site mixer

    def register_site(self, depth: int, type_index: int, d_in: int = 0, d_out: int = 0) -> int:
        """Record a layer's (block, module type, widths); returns its site index (its mixer row)."""
        site = len(self._sites)
        self._sites.append((int(depth), int(type_index)))
        self._site_widths.append((int(d_in), int(d_out)))
        self._block_site_lists.setdefault(int(depth), []).append(site)
        self._width_users.setdefault(("in", int(d_in)), []).append(site)
        self._width_users.setdefault(("out", int(d_out)), []).append(site)
        self._constants.clear()
        return site

    def folded_for_site(self, site: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(Ṽ(d_in), Ũ(d_out), Ṽ(d_in)ᵀ, Ũ(d_out)ᵀ)`` for one site, the dense path's operands.

        Every site of one width gets its own view of one expanded copy (``expand`` + ``unbind``:
        two ops forward, two backward) instead of the same tensor, whose gradient autograd would
        otherwise sum with one ``add`` per site. The transposes are detached views made once per
        width and forward (they share memory with the folds and are only read)."""
        d_in, d_out = self._site_widths[site]
        return (
            self._distributed("in", d_in, site), self._distributed("out", d_out, site),
            self._cached(("Vt", d_in), lambda: self.folded_in(d_in).detach().t()),
            self._cached(("Ut", d_out), lambda: self.folded_out(d_out).detach().t()),
        )

    def _distributed(self, side: str, width: int, site: int) -> torch.Tensor:
        users = self._width_users[(side, width)]
        fold = self.folded_in if side == "in" else self.folded_out

        def split() -> tuple[torch.Tensor, ...]:
            folded = fold(width)
            return folded.expand(len(users), *folded.shape).unbind(0)

        return self._cached((f"{side}*", width), split)[users.index(site)]

    def _constant(self, key: str, device: torch.device, build) -> torch.Tensor:
        full = (key, self.num_layers, device)
        if full not in self._constants:
            if torch.compiler.is_compiling():
                return build().to(device)
            with torch.inference_mode(False):  # built once, also used by training after a validation
                self._constants[full] = build().to(device)
        return self._constants[full]

    def mixer_table(self) -> torch.Tensor:
        """``m(ℓ/L, type)`` of every registered site, shape (sites, M), once per forward."""
        device = self.mixer.delta.device

        def codes() -> torch.Tensor:
            table = torch.zeros(len(self._sites), 1 + self.mixer.num_types)
            for row, (depth, type_index) in enumerate(self._sites):
                table[row, 0] = max(depth, 0) / self.num_layers
                table[row, 1 + type_index] = 1.0
            return table

        code_table = self._constant("codes", device, codes).to(self.mixer.delta.dtype)
        types = self._constant("types", device, lambda: torch.tensor([t for _, t in self._sites], dtype=torch.long))
        return self._cached(("mix",), lambda: self.mixer.table(code_table, types))

    def mixer_row(self, site: int) -> torch.Tensor:
        """Row ``site`` of :meth:`mixer_table` (the table is split once per forward: one op, and
        one op to gather the rows' gradients, instead of one slice and one add per layer)."""
        return self._cached(("mix_rows",), lambda: self.mixer_table().unbind(0))[site]

    def use_dense(self, x: torch.Tensor) -> bool:
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or self.update_impl == "sparse":
            return False
        return self.update_impl == "dense" or x.device.type == "cuda"

    def gated_mixer(self, depth: int, site: int, x: torch.Tensor) -> torch.Tensor:
        """``G ⊙ m_site``, shape (tokens, M): the gates of the block's routing scattered into a
        token × atom matrix (k non-zeros per row) times the site's mixer row. Computed for every
        site of the block at once (one scatter, one product) when the block was routed in this
        forward; for a layer called on its own, from a routing of ``x``."""
        routed = self._routing.get(depth)
        if routed is None or routed[0].shape[:-1] != x.shape[:-1] or depth not in self._block_site_lists:
            indices, gates = self.routing_for(depth, x)
            dense = torch.zeros(*gates.shape[:-1], self.num_atoms, dtype=gates.dtype, device=gates.device)
            return (dense.scatter(-1, indices, gates) * self.mixer_row(site)).reshape(-1, self.num_atoms)
        sites = self._block_site_lists[depth]
        key = ("gm", depth, self._forward_id)  # input-dependent: never reused across forwards
        if key not in self._step_cache:
            self._step_cache[key] = self._block_gated_mixer(depth, routed, sites)
        return self._step_cache[key][sites.index(site)]

    def _block_gated_mixer(self, depth: int, routed: tuple[torch.Tensor, torch.Tensor], sites: list[int]) -> tuple[torch.Tensor, ...]:
        indices, gates = routed
        dense = torch.zeros(*gates.shape[:-1], self.num_atoms, dtype=gates.dtype, device=gates.device)
        dense = dense.scatter(-1, indices, gates).reshape(1, -1, self.num_atoms)
        rows = self._constant(f"block{depth}", gates.device, lambda: torch.tensor(sites, dtype=torch.long))
        mixers = self.mixer_table().index_select(0, rows).unsqueeze(1)  # (sites, 1, M)
        return (dense * mixers.to(dense.dtype)).unbind(0)

    # ------------------------------------------------------------------ routing

    def router_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``W_r P_in(d) (h / rms(h)) + W_t e_task + b``, shape (..., M)."""
        rms = hidden.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        logits = F.linear(hidden, self.folded_router(hidden.shape[-1])) / rms
        return logits + self._cached(("task_bias",), lambda: self.router.task_bias(self.task_id))

    def route(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k atoms per token and their gates: ``(indices (..., k) long, gates (..., k))``."""
        top = self.router_logits(hidden).topk(self.top_k, dim=-1)
        gates = torch.sigmoid(top.values)
        if self.threshold > 0:
            gates = gates * (gates >= self.threshold).to(gates.dtype)
        self._record(gates)
        return top.indices, gates

    def _record(self, gates: torch.Tensor) -> None:
        self._gates.append(gates)  # statistics are computed once per forward, on demand

    def _gate_statistic(self, per_token) -> torch.Tensor | None:
        """Mean over this forward's routings and real tokens (``attention_mask``) of
        ``per_token(gates)``; every routing stacked into one tensor (a few ops per forward)."""
        if not self._gates:
            return None
        shapes = {g.shape for g in self._gates}
        values = per_token(torch.stack(self._gates)) if len(shapes) == 1 else torch.stack([per_token(g).mean() for g in self._gates])
        mask = self._token_mask
        if len(shapes) == 1 and mask is not None and values.shape[1:] == mask.shape:
            weight = mask.to(values.dtype)
            return (values * weight).sum() / (weight.sum().clamp(min=1.0) * values.shape[0])
        return values.mean()

    def routing_count(self) -> int:
        """Routings (blocks) in the last forward."""
        return len(self._gates)

    def routing_for(self, depth: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block-level routing of ``depth`` in this forward (computed from ``x`` if none)."""
        routed = self._routing.get(depth)
        if routed is not None and routed[0].shape[:-1] == x.shape[:-1]:
            return routed
        return self.route(x)

    def expected_atoms(self) -> torch.Tensor | None:
        """E[k] of the last forward: mean over routed blocks and real tokens of Σ_{j∈S} π_j (differentiable)."""
        return self._gate_statistic(lambda gates: gates.sum(-1))

    def active_atoms(self) -> torch.Tensor | None:
        """Mean number of atoms with a non-zero gate per real token in the last forward (a 0-dim
        tensor, not read back to the host)."""
        with torch.no_grad():
            return self._gate_statistic(lambda gates: (gates > 0).sum(-1).to(gates.dtype))

    @contextmanager
    def bypassed(self):
        """Run the host as if no adapter were inserted."""
        previous, self.bypass = self.bypass, True
        try:
            yield
        finally:
            self.bypass = previous

    # ------------------------------------------------------------------ accounting

    def analytic_macs(self, num_tokens: int, hidden: int, layers: Iterable[tuple[int, int]], num_blocks: int) -> int:
        """Multiply-adds the adapter adds to one host forward over ``num_tokens`` tokens in
        inference: per token, the router's ``M·d`` per routed block and ``k (d_in + d_out)`` per
        adapted layer. Everything that does not depend on the input — the per-width folds, the
        mixer table (one row per layer) and the router's task bias — is computed once and cached
        while the weights do not change, so it costs nothing per forward. Element-wise work
        (sigmoid, gates, rms) is not counted, as fvcore does not count it either."""
        layers = list(layers)
        per_token = num_blocks * self.num_atoms * hidden + sum(self.top_k * (d_in + d_out) for d_in, d_out in layers)
        return num_tokens * per_token

    def extra_repr(self) -> str:
        return f"M={self.num_atoms}, d0={self.d0}, top_k={self.top_k}, projector={self.projector}"


# --------------------------------------------------------------------------- layers


class _DenseGatedUpdate(torch.autograd.Function):
    """``y = W x + b + s · ((x̃ Ṽᵀ) ⊙ Gm) Ũ`` for one layer, Gm = G ⊙ m (tokens × M, k non-zeros
    per row): the routed update written as one rank-M product, with the backward written out
    (about 20 aten ops a layer; autograd's composition takes ~50 with the top-k gathers). With
    g = ∂L/∂y, a = x̃ Ṽᵀ, c = a ⊙ Gm:

        ∂L/∂c = s g Ũᵀ,  ∂L/∂Ũ = s cᵀ g,  ∂L/∂a = ∂L/∂c ⊙ Gm,  ∂L/∂Ṽ = (∂L/∂a)ᵀ x̃,
        ∂L/∂Gm = ∂L/∂c ⊙ a,  ∂L/∂x = g W + drop'((∂L/∂a) Ṽ)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, folded_in, folded_out, gated, scale: float, p: float, fast_cpu: bool, transposed):  # noqa: ANN001, ANN205
        weight_t, folded_in_t, folded_out_t = transposed if transposed is not None else (weight.t(), folded_in.t(), folded_out.t())
        x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        xd, mask, inverse_keep, fast = adapter_dropout(x2, p, fast_cpu)
        out = torch.addmm(bias, x2, weight_t) if bias is not None else torch.mm(x2, weight_t)
        responses = torch.mm(xd, folded_in_t)  # a = x̃ Ṽᵀ, (N, M)
        if inverse_keep != 1.0:
            responses.mul_(inverse_keep)
        coefficients = responses * gated
        out.addmm_(coefficients, folded_out, alpha=scale)
        ctx.save_for_backward(weight, folded_in, folded_out_t, gated, xd, mask, responses, coefficients)
        ctx.scale, ctx.p, ctx.inverse_keep, ctx.fast_cpu = scale, p, inverse_keep, fast
        ctx.x_shape = x.shape
        if mask is not None:
            ctx.mark_non_differentiable(mask)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        weight, folded_in, folded_out_t, gated, xd, mask, responses, coefficients = ctx.saved_tensors
        need_x, _, _, need_in, need_out, need_gated = ctx.needs_input_grad[:6]
        g = grad_out if grad_out.dim() == 2 else grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_in = grad_out_folded = grad_gated = None
        grad_c = torch.addmm(coefficients, g, folded_out_t, beta=0, alpha=ctx.scale)  # s g Ũᵀ
        if need_out:
            grad_out_folded = torch.mm(coefficients.t(), g).mul_(ctx.scale) if ctx.scale != 1.0 else torch.mm(coefficients.t(), g)
        if need_gated:
            grad_gated = grad_c * responses
        if need_x or need_in:
            grad_a = grad_c * gated
            if ctx.inverse_keep != 1.0:
                grad_a.mul_(ctx.inverse_keep)
            if need_in:
                grad_in = torch.mm(grad_a.t(), xd)
            if need_x:
                grad_x = adapter_dropout_backward(torch.mm(grad_a, folded_in), mask, ctx.p, ctx.fast_cpu)
                grad_x = torch.addmm(grad_x, g, weight)
                if len(ctx.x_shape) != 2:
                    grad_x = grad_x.view(ctx.x_shape)
        return grad_x, None, None, grad_in, grad_out_folded, grad_gated, None, None, None, None


class HyperLinear(FrozenLinearWrapper):
    """A frozen ``nn.Linear`` plus the UniHyperLoRA update at one site.

    It owns no parameters: ``adapter_parameters()`` is empty and the shared
    :class:`HyperShared` is held by an unregistered reference (so it is saved once, by its owner).

    Args:
        base: the frozen linear layer (owned, kept frozen).
        shared: the shared components.
        depth: transformer block index ℓ (-1: none).
        type_index: index of the canonical module type in :data:`CANONICAL_TYPES`.
        dropout: dropout on the adapter's input.
    """

    def __init__(self, base: nn.Linear, shared: HyperShared, depth: int, type_index: int, dropout: float = 0.0) -> None:
        super().__init__(base)
        self.depth = depth
        self.type_index = type_index
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fast_cpu_kernels = True  # see pefthub.adapters.lowrank_update; PEFTModule sets it from model.fast_cpu_kernels
        self._transposed: dict[str, torch.Tensor] = {}  # cached transposed view of the frozen weight
        object.__setattr__(self, "_shared", shared)  # not a submodule
        self.site_index = shared.register_site(depth, type_index, base.in_features, base.out_features)

    @property
    def shared(self) -> HyperShared:
        return self._shared

    @property
    def depth_fraction(self) -> float:
        return max(self.depth, 0) / self.shared.num_layers

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """None of its own: every UniHyperLoRA parameter is shared (see :class:`HyperShared`)."""
        return {}

    def mixer_weights(self) -> torch.Tensor:
        """``m(ℓ/L, type) ∈ R^M`` (this site's row of the shared per-forward mixer table)."""
        return self.shared.mixer_row(self.site_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared
        if shared.bypass:
            return self.base(x)
        if shared.use_dense(x):
            return self._dense_forward(x)
        result = self.base(x)
        indices, gates = shared.routing_for(self.depth, x)
        weights = gates * self.mixer_weights()[indices]  # g_j = π_j m_j, (..., k)
        v_rows = shared.folded_in(self.in_features)[indices]  # (..., k, d_in)
        u_rows = shared.folded_out(self.out_features)[indices]  # (..., k, d_out)
        k = indices.shape[-1]
        flat_x = self.dropout(x).reshape(-1, self.in_features, 1)
        # a_j = ṽ_j · x for the k selected atoms only: (N, k, d_in) @ (N, d_in, 1)
        responses = torch.bmm(v_rows.reshape(-1, k, self.in_features).to(x.dtype), flat_x)
        coefficients = weights.reshape(-1, 1, k).to(x.dtype) * responses.transpose(1, 2)  # (N, 1, k)
        # Σ_j g_j a_j ũ_j: (N, 1, k) @ (N, k, d_out)
        update = torch.bmm(coefficients, u_rows.reshape(-1, k, self.out_features).to(x.dtype))
        return result + shared.scale * update.reshape(result.shape)

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared
        gated = shared.gated_mixer(self.depth, self.site_index, x)
        weight, bias = self.base.weight, self.base.bias
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            folded_in, folded_out = shared.folded_in(self.in_features), shared.folded_out(self.out_features)
            x, weight, folded_in, folded_out, gated = (t.to(dtype) for t in (x, weight, folded_in, folded_out, gated))
            bias = bias.to(dtype) if bias is not None else None
            with torch.autocast(device_type, enabled=False):
                return _DenseGatedUpdate.apply(x, weight, bias, folded_in, folded_out, gated, float(shared.scale),
                                               dropout_probability(self.dropout) if self.training else 0.0, self.fast_cpu_kernels, None)
        folded_in, folded_out, folded_in_t, folded_out_t = shared.folded_for_site(self.site_index)
        transposed = (cached_transpose(self._transposed, "weight", weight), folded_in_t, folded_out_t)
        return _DenseGatedUpdate.apply(x, weight, bias, folded_in, folded_out, gated, float(shared.scale),
                                       dropout_probability(self.dropout) if self.training else 0.0, self.fast_cpu_kernels,
                                       transposed)

    def delta_weight(self, indices: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """ΔW of ONE token with atoms ``indices`` (k,) and gates (k,): ``s Σ_j π_j m_j P_out u_j v_jᵀ P_in``.
        Only for tests (the forward never forms it)."""
        shared = self.shared
        p_out, _ = shared.projectors(self.out_features)
        _, p_in = shared.projectors(self.in_features)
        weights = gates * self.mixer_weights()[indices]
        core = (shared.atoms_U[indices].t() * weights) @ shared.atoms_V[indices]  # (d0, d0)
        return shared.scale * p_out @ core @ p_in

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, depth={self.depth}, "
            f"type={CANONICAL_TYPES[self.type_index]}"
        )


class PortableHead(nn.Module):
    """A task head any host can use: ``logits = W_h LN(P_in(d) h) + b`` on the pooled hidden state
    (LN without affine parameters, so hosts with differently scaled states land on one scale)."""

    def __init__(self, shared: HyperShared, num_labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(shared.d0, num_labels)
        object.__setattr__(self, "_shared", shared)

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        _, p_in = self._shared.projectors(pooled.shape[-1])
        canonical = F.linear(pooled, p_in.to(pooled.dtype))
        return self.linear(F.layer_norm(canonical, (canonical.shape[-1],)))

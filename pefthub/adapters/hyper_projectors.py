"""UniHyperLoRA's projectors ``P_out(d) ∈ R^{d×d0}``, ``P_in(d) ∈ R^{d0×d}`` between a host's
width d and the canonical width d0: generated for any width by h_ψ (:class:`ProjectorGenerator`),
or learned per width of one host (SAT-LoRA, :class:`LearnedProjectors`). Plain torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

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

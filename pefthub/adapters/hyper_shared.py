"""HyperShared: every tensor UniHyperLoRA learns except the task head, registered once.

It wires itself to a host (hooks that route once per block), computes the per-width folds
``Ṽ(d) = V P_in(d)``, ``Ũ(d) = U P_out(d)ᵀ`` once per forward (or while the weights do not
change) and the mixer table once per forward. The notation is :mod:`pefthub.adapters.hyper`'s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from pefthub.adapters.hyper_mixer import SineMixer
from pefthub.adapters.hyper_projectors import PROJECTOR_KINDS, LearnedProjectors, ProjectorGenerator
from pefthub.adapters.hyper_router import Router
from pefthub.adapters.hyper_types import CANONICAL_TYPES

UPDATE_IMPLS: tuple[str, ...] = ("auto", "sparse", "dense")


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
        self.task_id, self.threshold, self.scaling = task_id, threshold, scale
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
            "scale": self.scaling,
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

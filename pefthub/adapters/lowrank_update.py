"""A frozen linear layer plus a low-rank update, as one autograd function.

    y = W x + b + s · B diag(λ) A drop(x)          (λ ≡ 1 for LoRA; AdaLoRA's singular values)

Why one function: on a GPU a small model's training step costs ≈ 20 µs per dispatched aten op
(launch-bound), so the op count of the step is its speed. Autograd's composition of
``linear(x) + linear(linear(dropout(x), A), B) * s`` dispatches ~30 ops per adapted matrix
(transposes, views, the dropout's four ops, the scaling multiply and their backward nodes, a
clone of the transposed ∂L/∂B); this function dispatches about half as many, counted by
``tests/test_op_counts.py``. With ``g = ∂L/∂y`` (N × d_out), ``x̃ = drop(x)``, ``h = x̃ Aᵀ``
(N × r), ``h_λ = h diag(λ)``:

    forward   y  = addmm(b, x, Wᵀ);  y += s · h_λ Bᵀ                 (one addmm_, scaling folded)
    ∂L/∂h_λ = s · g B                                                (one addmm, β = 0)
    ∂L/∂λ   = Σ_n (∂L/∂h_λ ⊙ h)_n,   ∂L/∂h = ∂L/∂h_λ diag(λ)
    ∂L/∂A   = (∂L/∂h)ᵀ x̃,            ∂L/∂B = s · gᵀ h_λ                (contiguous, like B)
    ∂L/∂x   = g W + drop'((∂L/∂h) A)                                   (one addmm)

Dropout is torch's own kernel (``native_dropout``: one op forward, one backward; a GPU runs it
fused). ``fast_cpu_kernels`` changes two things on the CPU only: the dropout mask is drawn from
16-bit random integers (torch's CPU kernel samples a double per element, ≈ 4 ns each, most of a
LoRA step's overhead at MiniLM size; ≈ 3× faster; keep probability rounded to a multiple of
1/65536 and the update scaled by the exact inverse of it, so E[x̃] = x still holds), and ∂L/∂h,
∂L/∂B are formed as (Bᵀ gᵀ)ᵀ and (hᵀ g)ᵀ: the same numbers, but MKL runs these skinny products
several times faster in that layout (measured on the AMD EPYC CPUs here, one thread,
N = 4096, r = 8: gᵀh 43 ms vs (hᵀg)ᵀ 5 ms for d_out = 1536), at the cost of a few more ops.

The plain composition is used while tracing (``torch.jit.trace``, which fvcore's FLOP count
uses, sees an autograd function as one opaque op), under ``torch.compile`` (the compiler fuses
the composition itself) and when the frozen weight itself trains.
Under autocast the inputs are cast once to the autocast dtype and the function runs with
autocast off (the casts are differentiable, so gradients reach the fp32 parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

#: 16-bit resolution of the fast CPU dropout mask.
_MASK_LEVELS = 1 << 16


def fast_cpu_dropout_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """Boolean keep-mask with P(keep) = round((1 - p) · 65536) / 65536, and 1 / P(keep).

    Uniform 64-bit integers (``random_`` over the whole int64 range) are drawn for a quarter of
    the elements and read as four uniform signed 16-bit values each; an element is kept when
    its value is below ``threshold - 32768``.
    """
    numel = x.numel()
    threshold = round((1.0 - p) * _MASK_LEVELS)
    if threshold <= 0:
        raise ValueError(f"dropout probability {p} leaves no element; use p < 1")
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    values = words.view(torch.int16)
    if values.numel() != numel:
        values = values[:numel]
    return values.view(x.shape) < threshold - _MASK_LEVELS // 2, _MASK_LEVELS / threshold


def adapter_dropout(x2: torch.Tensor, p: float, fast_cpu: bool) -> tuple[torch.Tensor, torch.Tensor | None, float, bool]:
    """The adapter input's dropout inside a fused function: ``(x̃, mask, inverse_keep, fast)``.

    ``fast`` (``fast_cpu`` on a CPU tensor): x̃ = x ⊙ mask from :func:`fast_cpu_dropout_mask`,
    *unscaled*; the caller folds ``inverse_keep`` = 1 / P(keep) into its own scaling. Otherwise
    torch's kernel (``native_dropout``: x̃ already scaled, ``inverse_keep`` = 1). ``p = 0``: x."""
    fast = fast_cpu and x2.device.type == "cpu"
    if p <= 0:
        return x2, None, 1.0, fast
    if fast:
        mask, inverse_keep = fast_cpu_dropout_mask(x2, p)
        return x2 * mask, mask, inverse_keep, fast
    xd, mask = torch.ops.aten.native_dropout(x2, p, True)
    return xd, mask, 1.0, fast


def adapter_dropout_backward(grad: torch.Tensor, mask: torch.Tensor | None, p: float, fast: bool) -> torch.Tensor:
    """∂L/∂x through :func:`adapter_dropout` (the fast path's scale is the caller's, as in forward)."""
    if mask is None:
        return grad
    return grad * mask if fast else torch.ops.aten.native_dropout_backward(grad, mask, 1.0 / (1.0 - p))


class _AdaptedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, A, B, lam, scaling: float, p: float, fast_cpu: bool, transposed):  # noqa: ANN001, ANN205, N803
        weight_t, A_t, B_t = transposed if transposed is not None else (None, None, None)  # noqa: N806
        weight_t = weight.t() if weight_t is None else weight_t
        A_t = A.t() if A_t is None else A_t  # noqa: N806
        B_t = B.t() if B_t is None else B_t  # noqa: N806
        x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        xd, mask, inverse_keep, fast = adapter_dropout(x2, p, fast_cpu)
        scaling = scaling * inverse_keep
        out = torch.addmm(bias, x2, weight_t) if bias is not None else torch.mm(x2, weight_t)
        h = torch.mm(xd, A_t)
        h_lam = h * lam if lam is not None else h
        out.addmm_(h_lam, B_t, alpha=scaling)
        ctx.save_for_backward(weight, A, B, lam, xd, mask, h, h_lam if lam is not None else None)
        ctx.scaling, ctx.p, ctx.fast_cpu = scaling, p, fast
        ctx.x_shape = x.shape
        if mask is not None:
            ctx.mark_non_differentiable(mask)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        weight, A, B, lam, xd, mask, h, h_lam = ctx.saved_tensors  # noqa: N806
        if h_lam is None:
            h_lam = h
        s = ctx.scaling
        need_x, _, _, need_A, need_B, need_lam = ctx.needs_input_grad[:6]  # noqa: N806
        g = grad_out if grad_out.dim() == 2 else grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_A = grad_B = grad_lam = None  # noqa: N806
        cpu_layout = ctx.fast_cpu  # CPU layouts: MKL runs (Bᵀ gᵀ)ᵀ and (hᵀ g)ᵀ several times faster
        if need_x or need_A or need_lam:
            if cpu_layout:
                grad_h = torch.mm(B.t(), g.t()).t().mul_(s)
            else:
                grad_h = torch.addmm(h, g, B, beta=0, alpha=s)  # s · g B  (β = 0: h only lends its shape)
            if lam is not None:
                if need_lam:
                    grad_lam = (grad_h * h).sum(0)
                grad_h = grad_h * lam
            if need_A:
                grad_A = torch.mm(grad_h.t(), xd)  # noqa: N806
            if need_x:
                grad_x = adapter_dropout_backward(torch.mm(grad_h, A), mask, ctx.p, ctx.fast_cpu)
                grad_x = torch.addmm(grad_x, g, weight)
                if len(ctx.x_shape) != 2:
                    grad_x = grad_x.view(ctx.x_shape)
        if need_B:
            if cpu_layout:  # transposed; autograd copies it into B's layout (one small d_out × r copy)
                grad_B = torch.mm(h_lam.t(), g).t().mul_(s)  # noqa: N806
            else:  # contiguous like B: no copy when the gradient is accumulated
                grad_B = torch.addmm(B, g.t(), h_lam, beta=0, alpha=s)  # noqa: N806
        return grad_x, None, None, grad_A, grad_B, grad_lam, None, None, None, None


def _plain(x, weight, bias, A, B, lam, scaling, p, training):  # noqa: ANN001, ANN202, N803
    update_A = A if lam is None else A * lam.unsqueeze(1)  # noqa: N806
    return F.linear(x, weight, bias) + F.linear(F.linear(F.dropout(x, p, training), update_A), B) * scaling


def dropout_probability(module: torch.nn.Module) -> float:
    """p of an adapter's ``dropout`` submodule (``nn.Dropout``), 0 for ``nn.Identity``."""
    return float(module.p) if isinstance(module, torch.nn.Dropout) else 0.0


def adapted_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,  # noqa: N803
    B: torch.Tensor,  # noqa: N803
    scaling: float,
    *,
    lam: torch.Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
    fast_cpu_kernels: bool = True,
    cache: dict | None = None,
) -> torch.Tensor:
    """``x Wᵀ + b + scaling · drop(x) Aᵀ diag(λ) Bᵀ`` (module docstring).

    Args:
        x: input, shape (..., d_in).
        weight, bias: the frozen layer, shapes (d_out, d_in) and (d_out,) or ``None``.
        A: (r, d_in); B: (d_out, r); lam: optional (r,) diagonal between them.
        scaling: s, a Python number.
        dropout: dropout probability on the update's input (only when ``training``).
        fast_cpu_kernels: on the CPU, sample the dropout mask from 16-bit integers and lay the
            backward's skinny products out the way MKL runs fast (module docstring).
        cache: a dict the calling layer keeps; it holds detached transposed views of
            ``weight``, ``A`` and ``B`` (they share storage, so in-place optimiser updates
            reach them) and saves three ``t`` ops per forward. Refreshed when a tensor
            is replaced.
    """
    p = float(dropout) if training else 0.0
    if (torch.jit.is_tracing() or torch.compiler.is_compiling() or A.shape[0] == 0 or weight.requires_grad
            or (bias is not None and bias.requires_grad)):
        return _plain(x, weight, bias, A, B, lam, scaling, p, training)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight, A, B = x.to(dtype), weight.to(dtype), A.to(dtype), B.to(dtype)  # noqa: N806
        bias = bias.to(dtype) if bias is not None else None
        lam = lam.to(dtype) if lam is not None else None
        with torch.autocast(device_type, enabled=False):
            return _AdaptedLinear.apply(x, weight, bias, A, B, lam, float(scaling), p, fast_cpu_kernels, None)
    transposed = None
    if cache is not None:
        # a B made in this forward (AdaLoRA's P diag(λ)) is transposed inside the function
        transposed = (cached_transpose(cache, "weight", weight), cached_transpose(cache, "A", A),
                      cached_transpose(cache, "B", B) if B.is_leaf else None)
    return _AdaptedLinear.apply(x, weight, bias, A, B, lam, float(scaling), p, fast_cpu_kernels, transposed)


def cached_transpose(cache: dict, key: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.detach().t()``, reused while it still views ``tensor``'s memory."""
    view = cache.get(key)
    if (view is None or view.data_ptr() != tensor.data_ptr() or view.shape[::-1] != tensor.shape
            or view.dtype != tensor.dtype or view.device != tensor.device):
        view = cache[key] = tensor.detach().t()
    return view

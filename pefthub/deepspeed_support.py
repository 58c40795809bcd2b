"""Which pefthub methods train correctly under DeepSpeed, checked before the first step.

DeepSpeed owns the gradients and the optimiser's fp32 master weights: ZeRO reduces gradients
into its own (partitioned) buffers, so after ``backward`` a parameter's ``.grad`` is ``None``
or a shard, and an in-place change to a parameter between steps is overwritten by the next
step's copy from the master weights. Methods whose callbacks read ``.grad`` or edit
parameters/optimiser state between steps would train silently wrong; they are refused here
with one line that says why. A method becomes allowed by setting the class attribute
``deepspeed_compatible = True`` once it reads gradients through DeepSpeed's API (see docs/scaling.md).
"""

from __future__ import annotations

from typing import Any

# method_name -> why it cannot run under DeepSpeed (yet)
GRADIENT_READERS: dict[str, str] = {
    "adalora": (
        "AdaLoRA's rank allocator reads p.grad after the optimiser step and masks weights in place, and its "
        "orthogonality penalty adds its gradient to p.grad, but DeepSpeed partitions the gradients (p.grad is None) "
        "and restores the weights from its own fp32 copy"
    ),
    "importance_lora": (
        "the FW-LoRA/IW-LoRA importance warm-up reads p.grad in on_before_optimizer_step and the penalty adds its "
        "gradient to p.grad, but DeepSpeed keeps the gradients in its own partitioned buffers (p.grad is None)"
    ),
    "glora": (
        "GLoRA's importance warm-up reads p.grad and its rank reallocation rebuilds adapters and optimiser mid-run, "
        "which DeepSpeed's engine (owner of gradients and optimiser) does not allow"
    ),
}


# ZeRO-3 also partitions the parameters: outside a module's own forward a parameter is an
# empty shard. method_name -> why that breaks it.
PARAMETER_READERS_ZERO3: dict[str, str] = {
    "unihyperlora": (
        "UniHyperLoRA's BudgetCheck quantises and measures the adapter from the parameters at fit start, "
        "but ZeRO-3 partitions them (each rank holds an empty shard outside forward)"
    ),
    "satlora": (
        "SAT-LoRA's BudgetCheck quantises and measures the adapter from the parameters at fit start, "
        "but ZeRO-3 partitions them (each rank holds an empty shard outside forward)"
    ),
}


def check_method_supported(module: Any, strategy: Any) -> None:
    """Raise ``ValueError`` (one line) when ``module``'s method cannot train under ``strategy``.

    Only DeepSpeed strategies are checked; a module class with ``deepspeed_compatible = True``
    is always allowed.
    """
    from pefthub.strategies import zero_stage

    stage = zero_stage(strategy)
    if stage is None or getattr(type(module), "deepspeed_compatible", False):
        return
    method = getattr(type(module), "method_name", type(module).__name__)
    reason = GRADIENT_READERS.get(method)
    if reason is None and stage == 3:
        reason = PARAMETER_READERS_ZERO3.get(method)
        budgets = [key for key in ("max_adapter_bytes", "max_flop_overhead") if getattr(module, key, None) is not None]
        if reason is None and budgets:
            reason = (
                f"model.{budgets[0]} is set, and BudgetCheck measures the adapter from the parameters at fit start, "
                "which ZeRO-3 partitions (each rank holds an empty shard outside forward); unset it or use ZeRO-2"
            )
    if reason is not None:
        raise ValueError(
            f"method {method!r} ({type(module).__name__}) cannot train under DeepSpeed (ZeRO stage {stage}): {reason}; "
            f"use trainer.strategy ddp{' or ZeRO-2' if method not in GRADIENT_READERS else ''} instead"
        )

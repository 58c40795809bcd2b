"""Find target ``nn.Linear`` layers by name pattern and swap adapter layers in.

Patterns follow :mod:`pefthub.adapters.names`: a module whose dotted name equals the pattern
or ends with ``"." + pattern`` (``output.dense`` matches ``encoder.layer.0.output.dense`` and
``encoder.layer.0.attention.output.dense``), or ``re:<regex>`` matching the whole name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

from torch import nn

from pefthub.adapters.names import most_specific


@dataclass(frozen=True)
class AdapterSite:
    """Where one adapter sits: its module name and the host layer's shape and position."""

    name: str
    depth: int  # index of the transformer block (-1 when the name has none)
    module_type: str  # the pattern that selected it, e.g. "attention.self.query"
    d_in: int
    d_out: int

    def to_dict(self) -> dict:
        return asdict(self)


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def find_targets(model: nn.Module, patterns: Iterable[str]) -> list[tuple[str, str]]:
    """``(module name, matching pattern)`` for every ``nn.Linear`` matched by ``patterns``,
    in module order. Each pattern must match something: otherwise a ValueError lists the
    Linear layers that exist."""
    patterns = list(patterns)
    if not patterns:
        raise ValueError("target_modules is empty; give at least one module-name pattern")
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    found: list[tuple[str, str]] = []
    unused = set(patterns)
    for name in linear_names:
        # most specific (longest) pattern wins, so types stay distinct
        matching = most_specific(patterns, name)
        if matching:
            found.append((name, matching[0]))
            unused.difference_update(matching)
    if unused:
        shown = ", ".join(linear_names[:40]) + (" ..." if len(linear_names) > 40 else "")
        raise ValueError(
            f"target_modules pattern(s) {sorted(unused)} match no nn.Linear layer in the backbone; "
            f"Linear layers present: {shown}"
        )
    return found


def target_sites(model: nn.Module, patterns: Iterable[str]) -> list[AdapterSite]:
    """The :class:`AdapterSite` of every Linear ``patterns`` target, in module order, without
    changing the model (what :func:`inject_adapters` will adapt: a method can size its
    adapters from the shapes before building them)."""
    sites = []
    for name, pattern in find_targets(model, patterns):
        linear = model.get_submodule(name)
        match = _LAYER_INDEX.search("." + name + ".")
        sites.append(
            AdapterSite(
                name=name,
                depth=int(match.group(1)) if match else -1,
                module_type=pattern,
                d_in=linear.in_features,
                d_out=linear.out_features,
            )
        )
    return sites


def inject_adapters(
    model: nn.Module,
    patterns: Iterable[str],
    make_adapter: Callable[[nn.Linear, AdapterSite], nn.Module],
) -> list[AdapterSite]:
    """Replace each targeted Linear by ``make_adapter(linear, site)`` in place."""
    sites = target_sites(model, patterns)
    for site in sites:
        parent_name, _, child = site.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make_adapter(getattr(parent, child), site))
    return sites


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module implementing the adapter protocol (``adapter_parameters()``)."""
    for name, module in model.named_modules():
        if callable(getattr(module, "adapter_parameters", None)):
            yield name, module


def adapter_state(model: nn.Module) -> dict[str, nn.Parameter]:
    """All adapter tensors keyed ``<module name>.<local name>`` (the adapter-file layout)."""
    return {
        f"{name}.{local}": param
        for name, module in adapter_modules(model)
        for local, param in module.adapter_parameters().items()
    }


def mark_only_adapters_trainable(model: nn.Module) -> None:
    """Freeze everything, then unfreeze exactly the adapter parameters (chosen structurally)."""
    model.requires_grad_(False)
    for param in adapter_state(model).values():
        param.requires_grad_(True)

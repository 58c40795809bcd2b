"""Module-name patterns: which modules a ``target_modules`` entry or a ``rank_pattern`` /
``alpha_pattern`` key selects. One rule everywhere:

- a plain pattern matches a module whose dotted name equals it or ends with ``"." + pattern``
  (``output.dense`` matches ``encoder.layer.0.output.dense``; ``query`` does not match
  ``xquery``: only whole dotted components count);
- a pattern starting with ``re:`` is a regular expression that must match the whole name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

V = TypeVar("V")

REGEX_PREFIX = "re:"


def matches(name: str, pattern: str) -> bool:
    """Whether ``pattern`` selects the module called ``name`` (rules in the module docstring)."""
    if pattern.startswith(REGEX_PREFIX):
        return re.fullmatch(pattern[len(REGEX_PREFIX) :], name) is not None
    return name == pattern or name.endswith("." + pattern)


def most_specific(patterns: Iterable[str], name: str) -> list[str]:
    """The patterns that select ``name``, longest (most specific) first."""
    return sorted((p for p in patterns if matches(name, p)), key=len, reverse=True)


def lookup(pattern: Mapping[str, V], name: str, default: V) -> V:
    """The value for ``name`` in a per-module override dict: the exact name first, then the
    longest key that selects it (``{"dense": 4, "output.dense": 2}`` gives
    ``layer.0.output.dense`` 2); ``default`` when no key selects it."""
    if name in pattern:
        return pattern[name]
    keys = most_specific(pattern, name)
    return pattern[keys[0]] if keys else default


def first_match(pattern: Mapping[str, V], name: str, default: V) -> V:
    """The value of the first key (in dict order) that selects ``name``: HF PEFT's order rule
    for its ``rank_pattern``/``alpha_pattern``, used when reading a PEFT adapter."""
    for key, value in pattern.items():
        if matches(name, key):
            return value
    return default

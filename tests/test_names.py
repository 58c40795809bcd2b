"""The module-name pattern rules (pefthub.adapters.names), used by target_modules,
rank_pattern/alpha_pattern and the PEFT import."""

from __future__ import annotations

import pytest
from torch import nn

from pefthub.adapters.inject import find_targets
from pefthub.adapters.names import first_match, lookup, matches, most_specific


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.query", True),  # exact
        ("encoder.layer.0.attention.self.query", "query", True),  # dotted suffix
        ("encoder.layer.0.attention.self.query", "self.query", True),
        ("encoder.layer.0.attention.self.xquery", "query", False),  # no partial-word match
        ("encoder.layer.0.attention.self.query_proj", "query", False),
        ("encoder.layer.0.attention.self.query", "attention", False),  # a middle component is no suffix
        ("query", "query", True),
        ("encoder.layer.0.output.dense", r"re:encoder\.layer\.\d+\.output\.dense", True),  # re: full match
        ("encoder.layer.0.output.dense", r"re:output\.dense", False),  # re: must match the whole name
        ("encoder.layer.0.output.dense", r"re:.*dense", True),
        ("re:x", "re:x", False),  # re: is a regex, not a literal name
    ],
)
def test_matches(name: str, pattern: str, expected: bool) -> None:
    assert matches(name, pattern) is expected


def test_most_specific_orders_longest_first() -> None:
    assert most_specific(["dense", "output.dense", "query"], "layer.0.output.dense") == ["output.dense", "dense"]
    assert most_specific(["query"], "layer.0.output.dense") == []


def test_lookup_exact_then_longest_suffix() -> None:
    pattern = {"dense": 4, "output.dense": 2, "layer.1.output.dense": 7}
    assert lookup(pattern, "layer.0.output.dense", 8) == 2  # longest selecting key wins, whatever the dict order
    assert lookup(pattern, "layer.0.intermediate.dense", 8) == 4
    assert lookup(pattern, "layer.1.output.dense", 8) == 7
    assert lookup(pattern, "layer.0.attention.self.query", 8) == 8  # default
    assert lookup({"dense": 4, "output.dense": 2}, "output.dense", 8) == 2  # exact name first
    assert lookup({"query": 3}, "layer.0.xquery", 8) == 8


def test_first_match_keeps_dict_order() -> None:
    """PEFT's rank/alpha patterns take the first key that selects the module."""
    assert first_match({"dense": 4, "output.dense": 2}, "layer.0.output.dense", 8) == 4
    assert first_match({"output.dense": 2, "dense": 4}, "layer.0.output.dense", 8) == 2
    assert first_match({"query": 3}, "layer.0.value", 8) == 8


def test_find_targets_uses_the_same_rules() -> None:
    model = nn.Module()
    model.block = nn.Module()
    model.block.query = nn.Linear(2, 2)
    model.block.xquery = nn.Linear(2, 2)
    model.block.output = nn.Module()
    model.block.output.dense = nn.Linear(2, 2)
    model.dense = nn.Linear(2, 2)
    assert find_targets(model, ["query", "dense", "output.dense"]) == [
        ("block.query", "query"),
        ("block.output.dense", "output.dense"),
        ("dense", "dense"),
    ]
    assert find_targets(model, [r"re:block\.x.*"]) == [("block.xquery", r"re:block\.x.*")]

"""Seeded, deterministic splits that never put one group (equal normalised text, one
review, one passage...) on two sides: a stratified two-way split, and the 80/10/10 three-way
split most tasks use, made of two of them (test first, then validation from the rest)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1  # of all rows, i.e. 1/9 of what remains after the test split


def stratified_group_split(
    labels: Sequence[int],
    groups: Sequence[str],
    *,
    fraction: float,
    seed: int,
) -> tuple[list[int], list[int]]:
    """Split row indices into (kept, held_out), stratified by label, never splitting a group.

    Rows with the same group key (the normalised text) go to the same side, so a
    duplicated snippet cannot land in both train and validation. A group is stratified
    by the label of its first row. For each label in sorted order, the label's groups
    (in first-occurrence order) are shuffled with one ``random.Random(seed)`` and taken
    from the front until ``round(fraction * rows with that label)`` rows are held out.
    """
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    by_label: dict[int, list[str]] = {}
    for group, indices in members.items():
        by_label.setdefault(labels[indices[0]], []).append(group)

    rng = random.Random(seed)
    held_out: list[int] = []
    for label in sorted(by_label):
        label_groups = by_label[label]
        target = round(fraction * sum(len(members[g]) for g in label_groups))
        rng.shuffle(label_groups)
        taken = 0
        for group in label_groups:
            if taken >= target:
                break
            held_out.extend(members[group])
            taken += len(members[group])
    held = set(held_out)
    kept = [i for i in range(len(labels)) if i not in held]
    return kept, sorted(held)


def connected_groups(keys_per_row: Sequence[Sequence[str]]) -> list[str]:
    """Group id per row: rows sharing any key (transitively) get the same id (union-find)."""
    parent = list(range(len(keys_per_row)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for index, keys in enumerate(keys_per_row):
        for key in keys:
            if key in first:
                parent[find(index)] = find(first[key])
            else:
                first[key] = index
    return [str(find(i)) for i in range(len(keys_per_row))]


def three_way_split(labels: Sequence[int], groups: Sequence[str], seed: int) -> dict[str, list[int]]:
    """Row indices of train/validation/test (80/10/10), stratified by label, grouped."""
    rest, test = stratified_group_split(labels, groups, fraction=TEST_FRACTION, seed=seed)
    fraction = VALIDATION_FRACTION / (1 - TEST_FRACTION)
    train_local, validation_local = stratified_group_split(
        [labels[i] for i in rest], [groups[i] for i in rest], fraction=fraction, seed=seed + 1
    )
    return {
        "train": [rest[i] for i in train_local],
        "validation": [rest[i] for i in validation_local],
        "test": test,
    }


def split_record(seed: int, method: str) -> dict[str, Any]:
    """The manifest's ``split`` entry of a :func:`three_way_split` task."""
    return {
        "seed": seed,
        "test_fraction": TEST_FRACTION,
        "validation_fraction": VALIDATION_FRACTION,
        "method": method,
    }

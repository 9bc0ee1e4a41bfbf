"""Seeded splits, stratified by label so that rare classes reach the validation split too, and kept whole by group
when a group key is given so that no document straddles train and validation."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import TypeVar

T = TypeVar("T")


def stratified_split(
    items: list[T], labels: list[str | None], fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Split `items` into (train, validation), taking `fraction` of each label group into validation.

    A group of one stays in train: it cannot be both learnt and measured. Unlabelled items form one group.
    """
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        groups[label].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(groups, key=str):
        idx = groups[key]
        rng.shuffle(idx)
        n = min(max(round(len(idx) * fraction), 1), len(idx) - 1) if len(idx) >= 2 else 0
        held.update(idx[:n])
    train = [x for i, x in enumerate(items) if i not in held]
    validation = [x for i, x in enumerate(items) if i in held]
    return train, validation


def seeded_sample(items: list[T], n: int, seed: int) -> list[T]:
    """`n` items drawn without replacement, in their original order."""
    if n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def group_split(
    items: list[T], labels: list[str | None], groups: list[str], fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Split whole groups (documents, patients, contracts) into (train, validation); no group is in both.

    Groups are stratified by their most common label and taken into validation until each label's share reaches
    `fraction` of its examples; a label with a single group keeps it in train, as `stratified_split` does.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    strata: dict[str | None, list[str]] = defaultdict(list)
    for group, idx in members.items():
        counts = Counter(labels[i] for i in idx)
        top = max(counts.values())
        strata[min((label for label, n in counts.items() if n == top), key=str)].append(group)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(strata, key=str):
        names = sorted(strata[key])
        rng.shuffle(names)
        target = round(fraction * sum(len(members[g]) for g in names))
        if len(names) >= 2:
            target = max(target, 1)
        taken = 0
        for name in names[: len(names) - 1]:
            if taken >= target:
                break
            held.update(members[name])
            taken += len(members[name])
    train = [x for i, x in enumerate(items) if i not in held]
    validation = [x for i, x in enumerate(items) if i in held]
    return train, validation

"""Seeded splits, stratified by label so that rare classes reach the validation split too."""

from __future__ import annotations

import random
from collections import defaultdict
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
        n = round(len(idx) * fraction)
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        else:
            n = 0
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

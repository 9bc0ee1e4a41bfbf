"""Which examples a capped evaluation (`eval.max_examples`) answers: a sample stratified by label.

A plain random sample of 40 of banking77's 231 validation rows (77 intents, 3 each) covers about 31 intents, and
which ones is luck. Stratifying covers as many labels as the sample size allows (every label once before any
label twice) and then follows the split's label shares, so a small evaluation measures as much of the label set
as it can and says how much.
"""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def stratified_sample(items: list[T], labels: list[str | None], n: int, seed: int) -> list[T]:
    """`n` of `items`, stratified by label, in their original order.

    Each label first gets one example (when `n` is below the number of labels, a seeded draw of `n` labels gets
    one each); the rest of `n` goes to the labels in proportion to their remaining examples (largest
    remainder), so shares stay those of the split. Within a label the examples are a seeded draw.
    """
    groups: dict[str | None, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    keys = sorted(groups, key=str)
    if n >= len(items):
        return list(items)
    rng = random.Random(seed)
    quota = dict.fromkeys(keys, 0)
    if n < len(keys):
        for key in rng.sample(keys, n):
            quota[key] = 1
    else:
        spare = {key: len(groups[key]) - 1 for key in keys}
        extra, total = n - len(keys), sum(spare.values())
        exact = {key: extra * spare[key] / total for key in keys}
        for key in keys:
            quota[key] = 1 + int(exact[key])
        left = n - sum(quota.values())
        by_remainder = sorted(keys, key=lambda k: (-(exact[k] - int(exact[k])), rng.random()))
        for key in by_remainder[:left]:
            quota[key] += 1
    chosen: set[int] = set()
    for key in keys:
        chosen.update(rng.sample(groups[key], quota[key]))
    return [item for i, item in enumerate(items) if i in chosen]

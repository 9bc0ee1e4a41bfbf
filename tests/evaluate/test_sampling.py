"""A capped evaluation covers as many labels as its size allows and keeps the split's label shares."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from specialize.evaluate.sampling import stratified_sample


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=40),
    n=st.integers(1, 400),
    seed=st.integers(0, 1000),
)
def test_a_sample_covers_as_many_labels_as_it_can(sizes, n, seed):
    labels = [f"label {k}" for k, size in enumerate(sizes) for _ in range(size)]
    items = list(range(len(labels)))

    sample = stratified_sample(items, labels, n, seed)

    assert len(sample) == min(n, len(items))
    assert sample == sorted(sample), "the original order is kept"
    assert len(set(sample)) == len(sample)
    covered = {labels[i] for i in sample}
    assert len(covered) == min(len(sample), len(sizes)), "every label once before any label twice"
    assert stratified_sample(items, labels, n, seed) == sample, "seeded"


def test_the_rest_of_the_sample_follows_the_label_shares():
    labels = ["common"] * 700 + ["middling"] * 200 + ["rare"] * 100
    sample = stratified_sample(list(range(1000)), labels, 100, seed=0)

    counts = Counter(labels[i] for i in sample)
    # one each first, then the other 97 in proportion to 699 : 199 : 99
    assert counts == {"common": 1 + 68, "middling": 1 + 19, "rare": 1 + 10}


def test_banking77s_forty_of_two_hundred_thirty_one_cover_forty_intents():
    labels = [f"intent {i // 3}" for i in range(231)]

    sample = stratified_sample(list(range(231)), labels, 40, seed=0)

    assert len({labels[i] for i in sample}) == 40

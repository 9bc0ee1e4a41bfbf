"""The drift tests: each flags a sample that drifted and not one drawn like the training data."""

from __future__ import annotations

import random

import pytest

from specialize.config import DriftConfig
from specialize.monitor.drift import far_share, find_template, label_shift, length_shift, token_divergence

BANKING = [
    "my card has not arrived yet",
    "how do i top up by bank transfer",
    "the atm kept my card",
    "i was charged twice for one payment",
    "can i change my pin at an atm",
    "why was my transfer declined",
    "where is my new card",
    "how long does a transfer take",
    "my top up failed",
    "i want to cancel a transfer",
]
OTHER = [
    "write a poem about the sea at night",
    "what is the capital of australia",
    "translate good morning into italian",
    "explain photosynthesis to a child",
    "suggest a recipe with lentils and rice",
    "who painted the starry night",
]
WORDS = {w: i for i, w in enumerate(sorted({w for s in BANKING + OTHER for w in s.split()}))}


def sample(texts: list[str], n: int, seed: int) -> list[str]:
    """`n` prompts like a user writes them: a sentence of `texts` and a reference number."""
    rng = random.Random(seed)
    return [f"{rng.choice(texts)} ref {rng.randrange(1000)}" for _ in range(n)]


def ids(texts: list[str]) -> list[list[int]]:
    return [[WORDS.get(w, len(WORDS) + 1) for w in t.split()] for t in texts]


CONFIG = DriftConfig(min_requests=20)
TRAINING = sample(BANKING, 300, 0)
CONTROL = sample(BANKING, 120, 1)
DRIFTED = sample(BANKING, 60, 2) + sample(OTHER, 60, 3)


def test_the_shared_template_is_found_and_taken_off():
    prompts = [f"Classify this message. Labels: a, b.\n\nMessage: {t}\nAnswer:" for t in TRAINING[:50]]
    prompts[3] = "something else entirely"  # one odd prompt does not hide the template of the others
    template = find_template(prompts)
    assert template.prefix == "Classify this message. Labels: a, b.\n\nMessage: "
    assert template.suffix.endswith("\nAnswer:")
    assert template.cut(prompts[0]) == TRAINING[0]
    assert template.cut("a prompt without it") == "a prompt without it"


def test_token_divergence_flags_drift_and_not_the_control():
    control = token_divergence(CONFIG, ids(CONTROL), ids(TRAINING), seed=0, decode=str)
    drifted = token_divergence(CONFIG, ids(DRIFTED), ids(TRAINING), seed=0, decode=str)
    assert not control.flagged and control.p_value > CONFIG.alpha
    assert drifted.flagged and drifted.effect >= CONFIG.token_divergence and drifted.p_value < CONFIG.alpha
    # the excess removes the bias of small samples: the control's divergence is nearly all bias
    assert abs(control.effect) < CONFIG.token_divergence < control.details["divergence_bits"] + 1
    assert drifted.details["over_represented"]


def test_length_shift_flags_longer_prompts_only():
    same = length_shift(CONFIG, [len(t) for t in ids(CONTROL)], [len(t) for t in ids(TRAINING)])
    longer = length_shift(CONFIG, [len(t) + 6 for t in ids(CONTROL)], [len(t) for t in ids(TRAINING)])
    assert not same.flagged
    assert longer.flagged and longer.effect == pytest.approx(1.0)


def test_far_share_is_calibrated_on_held_out_prompts():
    held_out = sample(BANKING, 40, 4)
    control = far_share(CONFIG, CONTROL, TRAINING, held_out, seed=0)
    drifted = far_share(CONFIG, DRIFTED, TRAINING, held_out, seed=0)
    assert not control.flagged
    assert control.details["far_share"] <= control.details["expected_share"] + 0.05
    assert drifted.flagged and drifted.details["far_share"] >= 0.3
    other = {" ".join(t.split()[:3]) for t in OTHER}
    assert all(" ".join(f["prompt"].split()[:3]) in other for f in drifted.details["farthest"])


def test_label_shift_counts_only_answers_that_name_a_label():
    training = ["card"] * 100 + ["transfer"] * 100 + ["top_up"] * 100
    rng = random.Random(5)
    control = [rng.choice(["card", "Transfer", "top_up."]) for _ in range(150)] + ["I cannot say"] * 50
    skewed = ["card"] * 120 + ["transfer"] * 20 + ["top_up"] * 10
    same = label_shift(CONFIG, control, training, seed=0)
    moved = label_shift(CONFIG, skewed, training, seed=0)
    assert same is not None and not same.flagged
    assert same.details["no_label_share"] == pytest.approx(0.25)
    assert moved is not None and moved.flagged and moved.details["largest_changes"][0]["label"] == "card"
    assert label_shift(CONFIG, ["no idea"] * 100, training, seed=0) is None

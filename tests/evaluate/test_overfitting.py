"""The overfitting flag: a meaningful train/validation loss gap, and validation loss rising when recorded."""

from __future__ import annotations

import json

import pytest

from specialize.evaluate.overfitting import assess, describe, overfitting


def _train_dir(tmp_path, final_train: float, validation: float, logged: list[dict]):
    (tmp_path / "result.json").write_text(
        json.dumps({"final_train_loss": final_train, "validation_loss": validation}), encoding="utf-8"
    )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in logged), encoding="utf-8")
    return tmp_path


def test_a_wide_gap_without_recorded_evaluations_is_flagged():
    found = assess(1.0, 1.5, [])
    assert found["flagged"] and found["relative_gap"] == pytest.approx(0.5)
    assert found["validation_rising"] is None
    assert describe(found).startswith("warning: the fine-tuned model may be overfitting")


def test_a_small_gap_is_not_flagged():
    found = assess(1.0, 1.2, [])
    assert not found["flagged"]
    assert describe(found).startswith("no sign of overfitting")


def test_a_wide_gap_is_flagged_only_while_validation_loss_rises():
    assert assess(1.0, 1.6, [1.9, 1.7, 1.6])["flagged"] is False, "still improving: a gap, not overfitting"
    rising = assess(1.0, 1.6, [1.7, 1.5, 1.6])
    assert rising["flagged"] and rising["validation_rising"]


def test_training_loss_is_the_mean_of_the_last_logged_values(tmp_path):
    logged = [{"step": s, "loss": loss} for s, loss in ((5, 3.0), (10, 1.2), (15, 0.8), (20, 1.0))]
    logged.append({"step": 20, "validation_loss": 1.4})

    found = overfitting(_train_dir(tmp_path, final_train=1.0, validation=1.4, logged=logged))

    assert found["train_loss"] == pytest.approx(1.0)
    assert found["relative_gap"] == pytest.approx(0.4)
    assert found["flagged"]


def test_no_finished_training_no_assessment(tmp_path):
    assert overfitting(tmp_path) is None
    assert describe(None) is None

"""Did the fine-tuned model memorise its training set? The gap between training and validation loss.

Reads `train/result.json` (final training and validation loss) and `train/metrics.jsonl` (the losses logged
during training) of a run. The rule, and why:

- the training loss is the mean of the last few logged values: one mini-batch's loss swings by more than the gap
  being measured;
- a validation loss more than 25% above the training loss is a meaningful gap: on held-out data some gap is
  normal (the model has seen the training examples), but at a quarter of the loss the model is fitting what does
  not carry over, and scores on new data usually stall or fall;
- when validation losses were recorded during training (early stopping), the gap alone is not enough: the last
  one must also be above the best one, i.e. validation loss is rising while training loss goes on falling. With
  fewer than two recorded, the gap decides.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RELATIVE_GAP = 0.25
LAST_LOGGED = 3  # training losses averaged for the end-of-training figure


def overfitting(train_dir: Path) -> dict[str, Any] | None:
    """The training/validation loss gap of a run's training, and whether it counts as overfitting.

    Returns None when the run has no finished training (`train/result.json`), or trained on-policy: there the
    training loss is a policy-gradient surrogate and the validation figure minus a mean reward, two quantities a
    gap between means nothing for.
    """
    from specialize.config import ON_POLICY

    result = train_dir / "result.json"
    if not result.exists():
        return None
    done = json.loads(result.read_text(encoding="utf-8"))
    if done.get("method") in ON_POLICY:
        return None
    metrics = train_dir / "metrics.jsonl"
    points = (
        [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        if metrics.exists()
        else []
    )
    losses = [p["loss"] for p in points if "loss" in p][-LAST_LOGGED:] or [done["final_train_loss"]]
    validations = [p["validation_loss"] for p in points if "validation_loss" in p]
    return assess(sum(losses) / len(losses), done["validation_loss"], validations)


def assess(train_loss: float, validation_loss: float, validation_history: list[float]) -> dict[str, Any]:
    """Apply the rule of this module's docstring to the end-of-training losses."""
    gap = (validation_loss - train_loss) / train_loss if train_loss > 0 else math.inf
    rising = validation_history[-1] > min(validation_history) if len(validation_history) >= 2 else None
    flagged = math.isfinite(validation_loss) and gap > RELATIVE_GAP and rising is not False
    return {
        "train_loss": train_loss,
        "validation_loss": validation_loss,
        "relative_gap": gap,
        "validation_rising": rising,
        "flagged": flagged,
        "rule": f"validation loss over {RELATIVE_GAP:.0%} above training loss"
        + (", and rising over the recorded evaluations" if rising is not None else ""),
    }


def describe(assessment: dict[str, Any] | None) -> str | None:
    """One line for the terminal, the HTML report and the model card; None when nothing was measured."""
    if not assessment:
        return None
    a = assessment
    figures = (
        f"validation loss {a['validation_loss']:.3f} vs training loss {a['train_loss']:.3f} "
        f"({a['relative_gap']:+.0%})"
    )
    if a["flagged"]:
        return (
            f"warning: the fine-tuned model may be overfitting: {figures}; train for fewer steps or epochs, "
            "add data, or set train.early_stopping"
        )
    return f"no sign of overfitting: {figures}"

"""Label scoring variants: what is divided out of each label's log-probability before the best label is picked.

Scoring a label set by log-probability carries a label prior: some label strings are likelier than others after
any prompt (shorter ones, ones the prompt happens to mention last, ones the model saw often), and a model that
cannot read the question answers its favourite label for every row. That measures the prior, not what the model
knows, and makes base-model baselines look worse than they need to be. The variants, applied to every system
alike (base and fine-tuned), are:

- `raw`: the label's total log-probability (with the end-of-turn token).
- `length`: per label token, so a long label is not penalised for its length.
- `calibrated`: contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): the system's own prompt with
  content-free inputs ("N/A", "", "[MASK]") in place of the question gives each label's probability with no
  question at all; normalised over the label set and averaged over the inputs, it is divided out.
- `pmi`: domain-conditional PMI (Holtzman et al. 2021, "Surface Form Competition"): each label's probability after
  the bare task instruction (no question, no examples) is divided out.

All four come from one pass: the questions' label log-probabilities, plus four short prompts scored once per
system and label set (three content-free, one bare instruction), never per question. `best` picks, per system,
the variant with the highest headline metric on the validation split and keeps that choice for any later test
file of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np


class Scoring(StrEnum):
    """A label-scoring variant (the config's `eval.scoring` adds `best`: the variant chosen per system)."""

    RAW = "raw"
    LENGTH = "length"
    CALIBRATED = "calibrated"
    PMI = "pmi"


BEST = "best"


@dataclass(frozen=True)
class LabelScores:
    """One system's label log-probabilities over one label set, and what the variants divide out.

    Attributes:
        labels: the candidate answers (the run's label set, or a multiple-choice row's choices).
        rows: which evaluated examples these are (their indices in the evaluation).
        questions: log-probability of each label after each example's prompt, shape (rows, labels).
        lengths: tokens of each label as scored (end-of-turn token included).
        content_free: log-probabilities after the system's prompt with each content-free input, (inputs, labels).
        bare: log-probabilities after the bare task instruction, (labels,).
    """

    labels: list[str]
    rows: list[int]
    questions: np.ndarray
    lengths: np.ndarray
    content_free: np.ndarray
    bare: np.ndarray

    def adjusted(self, scoring: Scoring) -> np.ndarray:
        """The scores each label is ranked by under `scoring`, shape (rows, labels)."""
        if scoring == Scoring.LENGTH:
            return self.questions / self.lengths
        if scoring == Scoring.CALIBRATED:
            # Zhao et al.: the content-free distribution over the label set, averaged over the inputs in
            # probability space; dividing by it is subtracting its log.
            prior = np.exp(self.content_free - _logsumexp(self.content_free)).mean(0)
            return self.questions - np.log(prior)
        if scoring == Scoring.PMI:
            return self.questions - self.bare
        return self.questions

    def predictions(self, scoring: Scoring) -> list[str]:
        """The label ranked first after each prompt; ties go to the earlier label, as `max` over a list does."""
        return [self.labels[i] for i in self.adjusted(scoring).argmax(1)]

    def to_json(self, exact: bool = False) -> dict[str, Any]:
        """The scores as `report.json` keeps them (4 decimals), so every variant can be recomputed without a
        model; `exact` keeps every digit (answers kept for later runs score as if computed again)."""

        def digits(x: np.ndarray) -> list[Any]:
            return (x if exact else np.round(x, 4)).tolist()

        return {
            "labels": self.labels,
            "rows": self.rows,
            "questions": digits(self.questions),
            "lengths": self.lengths.tolist(),
            "content_free": digits(self.content_free),
            "bare": digits(self.bare),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LabelScores:
        return cls(
            doc["labels"],
            doc["rows"],
            np.asarray(doc["questions"], dtype=float).reshape(len(doc["rows"]), len(doc["labels"])),
            np.asarray(doc["lengths"], dtype=float),
            np.asarray(doc["content_free"], dtype=float),
            np.asarray(doc["bare"], dtype=float),
        )


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(-1, keepdims=True))


def predictions(groups: list[LabelScores], n: int, scoring: Scoring) -> list[str]:
    """Every example's answer under `scoring`, from the label sets its rows were scored over."""
    out = [""] * n
    for group in groups:
        for row, answer in zip(group.rows, group.predictions(scoring), strict=True):
            out[row] = answer
    return out


def score_variants(
    groups: list[LabelScores], gold: list[str], labels: list[str] | None
) -> dict[Scoring, dict[str, Any]]:
    """Every variant's predictions and metrics, from one pass of label scores: the classification metrics over
    `labels` (macro-F1 and the rest), or accuracy where there is no fixed label set (multiple choice). The
    evaluation and a search trial's objective read the variants this one way, so a trial is scored as the
    final evaluation will score its fine-tune."""
    from specialize.evaluate.metrics import classification_metrics

    out = {}
    for variant in Scoring:
        predicted = predictions(groups, len(gold), variant)
        if labels:
            metrics = classification_metrics(gold, predicted, labels)
        else:
            metrics = {"accuracy": sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)}
        out[variant] = {**metrics, "predictions": predicted}
    return out


def choose(metric: dict[Scoring, float]) -> Scoring:
    """The variant with the highest validation metric; a tie goes to the simpler one (raw, length, calibrated,
    pmi in that order), so a variant is only chosen for doing better."""
    return max(Scoring, key=lambda s: (metric[s], -list(Scoring).index(s)))

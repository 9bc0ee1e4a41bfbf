"""How sure is the comparison? Bootstrap confidence intervals and a paired bootstrap test.

A validation split of a few hundred examples leaves real uncertainty in every score, and a fine-tuned model that
wins by two points may not win at all. Every system answered the same examples, so resampling the examples (with
the same draw for every system) gives each score a 95% interval and the difference between two systems a paired
p-value. The statistic on each resample is the very one reported as the estimate (`metrics.averaged` for macro
averages), so an interval describes its own number. Written with numpy rather than scipy.stats.bootstrap:
macro-F1 over 1,000 resamples vectorises as one label-count table, a thousand times faster than calling
scikit-learn per resample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from specialize.evaluate.metrics import averaged, label_codes
from specialize.evaluate.systems import SYSTEMS

RESAMPLES = 1000


def _indices(n: int, seed: int | None) -> np.ndarray:
    """Resampled example indices; seed None gives the sample itself, once."""
    if seed is None:
        return np.arange(n)[None, :]
    return np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))


def resampled_scores(
    gold: list[Any] | None, predictions: list[Any], labels: list[str] | None, seed: int | None
) -> np.ndarray:
    """The headline metric on each resample: macro-F1 of predicted labels with `labels` (by `averaged`, the
    definition of the estimate itself), else the mean of the per-example scores in `predictions` (1.0 correct,
    0.0 wrong; `gold` is then unused). Seed None gives the estimate: the metric on the examples evaluated."""
    idx = _indices(len(predictions), seed)
    if labels:
        vocabulary, (g, p) = label_codes(labels, gold or [], predictions)
        return averaged(g[idx], p[idx], len(vocabulary))["macro_f1"]
    return np.asarray(predictions, dtype=float)[idx].mean(1)


def interval(scores: np.ndarray) -> list[float]:
    """The 95% percentile interval of resampled scores."""
    return [float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))]


def compare_systems(
    gold: list[Any] | None, predictions: dict[str, list[Any]], labels: list[str] | None, seed: int
) -> dict[str, Any]:
    """95% intervals for every system, and the paired test of the fine-tuned model against the best alternative.

    The fine-tuned model is `fine_tuned` (or `fine_tuned_rag` when it is evaluated alone); the alternative is
    the system with the highest headline score among those that do not use the fine-tuned weights. Testing
    against zero-shot alone would flatter fine-tuning whenever a few-shot or retrieval prompt does better.
    """
    scores = {s: resampled_scores(gold, p, labels, seed) for s, p in predictions.items()}
    observed = {s: float(resampled_scores(gold, p, labels, None)[0]) for s, p in predictions.items()}
    out: dict[str, Any] = {
        "resamples": RESAMPLES,
        "intervals": {s: interval(v) for s, v in scores.items()},
    }
    tuned = next((s.name for s in SYSTEMS.values() if s.fine_tuned and s.name in scores), None)
    others = [s for s in scores if not (s in SYSTEMS and SYSTEMS[s].fine_tuned)]
    if tuned and others:
        best = max(others, key=observed.__getitem__)
        out["paired_test"] = {
            "system": tuned,
            "against": best,
            **_paired(scores[tuned], scores[best], observed[tuned] - observed[best]),
        }
    return out


def paired_test(
    gold: list[Any] | None, first: list[Any], second: list[Any], labels: list[str] | None, seed: int
) -> dict[str, Any]:
    """Is `first` better than `second` on the same examples, or worse? Their difference in the headline metric,
    its 95% interval, the share of paired resamples on which `first` does not lead (a one-sided p-value) and the
    share on which `second` does not (`p_value_reverse`); the arguments are those of `resampled_scores`."""
    a, b = resampled_scores(gold, first, labels, seed), resampled_scores(gold, second, labels, seed)
    observed = (
        resampled_scores(gold, first, labels, None)[0] - resampled_scores(gold, second, labels, None)[0]
    )
    return {**_paired(a, b, float(observed)), "p_value_reverse": _p_value(b - a)}


def _paired(first: np.ndarray, second: np.ndarray, observed: float) -> dict[str, Any]:
    diff = first - second
    return {"difference": observed, "interval": interval(diff), "p_value": _p_value(diff)}


def _p_value(diff: np.ndarray) -> float:
    """The share of resampled differences at or below zero, never under one resample's worth."""
    return float(max((diff <= 0).mean(), 1 / RESAMPLES))


def perplexity_intervals(per_document: dict[str, list[tuple[float, int]]], seed: int) -> dict[str, Any]:
    """95% intervals of each system's perplexity, resampling documents (token-weighted, as the perplexity is).

    No paired test: the fine-tuned and the base perplexity differ on nearly every token, and which is lower is
    plain from the values; the intervals say how much the documents drawn move them.
    """
    out: dict[str, Any] = {"resamples": RESAMPLES, "intervals": {}}
    for system, docs in per_document.items():
        losses = np.array([t for t, _ in docs])
        tokens = np.array([n for _, n in docs])
        idx = _indices(len(docs), seed)
        ppl = np.exp(losses[idx].sum(1) / np.maximum(tokens[idx].sum(1), 1))
        out["intervals"][system] = interval(ppl)
    return out

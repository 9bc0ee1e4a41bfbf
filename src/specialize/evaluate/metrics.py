"""Task metrics, computed with scikit-learn, rouge-score and sacrebleu where they have them.

Every metric is on a 0-1 scale (BLEU too, divided by 100) except perplexity, so one table holds them all.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

# A number as people write answers: optional sign, thousands separators, decimals ("-1,250.50").
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
COLLAPSE_MARGIN = 0.25  # see `collapse`
COLLAPSE_ALPHA = 0.01


def label_codes(labels: list[str], *answers: list[str]) -> tuple[list[str], list[np.ndarray]]:
    """Each answer as an index into the label set; answers outside it (a test file's unseen label) get codes of
    their own after the set, so they count as labels of their own, as scikit-learn counts them."""
    extra = sorted({a for values in answers for a in values} - set(labels))
    vocabulary = [*labels, *extra]
    code = {label: i for i, label in enumerate(vocabulary)}
    return vocabulary, [np.array([code[a] for a in values], dtype=np.int64) for values in answers]


def averaged(gold: np.ndarray, predicted: np.ndarray, n_labels: int) -> dict[str, np.ndarray]:
    """Macro precision, recall and F1, and how many labels each averages, for every row of `gold`/`predicted`.

    THE definition of every averaged classification metric in a report, used alike for the estimate (one row: the
    examples evaluated), each bootstrap resample (one row per resample) and the paired test: the mean over the
    labels present in that row's gold answers or predictions, as scikit-learn computes without `labels=`
    (`zero_division=0`). A label absent from both says nothing about the system and is left out; counting it as
    0 would make the score depend on how many labels the sample happens to miss.

    Args:
        gold: label codes, shape (rows, examples).
        predicted: label codes, same shape.
        n_labels: codes run from 0 to n_labels - 1.
    """
    rows = gold.shape[0]
    offset = (np.arange(rows) * n_labels)[:, None]

    def counts(codes: np.ndarray) -> np.ndarray:
        return np.bincount(codes.ravel(), minlength=rows * n_labels).reshape(rows, n_labels)

    gold_n, pred_n = counts(gold + offset), counts(predicted + offset)
    hits = gold == predicted
    tp = np.bincount((gold + offset)[hits], minlength=rows * n_labels).reshape(rows, n_labels)
    present = gold_n + pred_n > 0
    n_present = present.sum(1)
    divide = np.maximum(n_present, 1)
    precision = np.where(pred_n > 0, tp / np.maximum(pred_n, 1), 0.0)
    recall = np.where(gold_n > 0, tp / np.maximum(gold_n, 1), 0.0)
    f1 = 2 * tp / np.maximum(gold_n + pred_n, 1)
    return {
        "macro_precision": precision.sum(1) / divide,
        "macro_recall": recall.sum(1) / divide,
        "macro_f1": f1.sum(1) / divide,
        "labels_averaged": n_present,
    }


def classification_metrics(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro and micro averages, per-class F1, the confusion matrix (rows gold) and both label counts.

    Macro averages weigh every label equally, so a rare label counts as much as a common one; they follow
    `averaged` (over the labels present in the gold answers or predictions: `labels_averaged` of them). A label
    of the set absent from both has per-class F1 None, shown as absent rather than 0. Micro averages weigh every
    example equally and, with one label per example, equal accuracy.
    """
    from sklearn.metrics import confusion_matrix

    vocabulary, (g, p) = label_codes(labels, gold, predicted)
    macro = averaged(g[None], p[None], len(vocabulary))
    accuracy = float((g == p).mean())
    out: dict[str, Any] = {"accuracy": accuracy}
    out.update({name: float(values[0]) for name, values in macro.items() if name != "labels_averaged"})
    out.update({"micro_precision": accuracy, "micro_recall": accuracy, "micro_f1": accuracy})
    out["labels_averaged"] = int(macro["labels_averaged"][0])
    gold_n = np.bincount(g, minlength=len(vocabulary))
    pred_n = np.bincount(p, minlength=len(vocabulary))
    tp = np.bincount(g[g == p], minlength=len(vocabulary))
    out["per_class_f1"] = {
        label: float(2 * tp[i] / (gold_n[i] + pred_n[i])) if gold_n[i] + pred_n[i] else None
        for i, label in enumerate(vocabulary)
    }
    out["support"] = {label: int(gold_n[i]) for i, label in enumerate(vocabulary)}
    out["predicted_counts"] = {label: int(pred_n[i]) for i, label in enumerate(vocabulary)}
    out["confusion_matrix"] = confusion_matrix(gold, predicted, labels=vocabulary).tolist()
    out["collapse"] = collapse(gold_n, pred_n, vocabulary)
    return out


def collapse(gold_n: np.ndarray, pred_n: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Does one label take far more of a system's answers than its share of the gold answers?

    The test: the most predicted label's share of the predictions must exceed its gold share by at least
    COLLAPSE_MARGIN (a quarter of all answers going to one label beyond what the data holds), and a one-sided
    exact binomial test must reject "the system predicts this label at its gold rate" at COLLAPSE_ALPHA divided by
    the number of labels (the label tested is the most predicted of them, a choice Bonferroni accounts for).
    The margin keeps a slight but real over-prediction of a common label on a large sample from counting; the
    test keeps a handful of examples, where a quarter is one or two answers, from counting. A label prior in
    log-probability scoring (some label strings are likelier after any prompt) shows as exactly this.
    """
    from scipy.stats import binom

    n = int(pred_n.sum())
    top = int(np.argmax(pred_n))
    share, gold_share = pred_n[top] / n, gold_n[top] / max(int(gold_n.sum()), 1)
    # P(X >= observed) for X ~ Binomial(n, gold share); a label never in the gold answers makes any count surprising
    p_value = float(binom.sf(pred_n[top] - 1, n, gold_share)) if gold_share > 0 else 0.0
    alpha = COLLAPSE_ALPHA / len(labels)
    return {
        "label": labels[top],
        "predicted": int(pred_n[top]),
        "of": n,
        "share": float(share),
        "gold_share": float(gold_share),
        "p_value": p_value,
        "flagged": bool(share - gold_share >= COLLAPSE_MARGIN and p_value < alpha),
        "rule": f"top label's share at least {COLLAPSE_MARGIN:.0%} above its gold share, binomial p < "
        f"{COLLAPSE_ALPHA:g}/{len(labels)} labels",
    }


def free_answer_metrics(gold: list[str], answers: list[str], labels: list[str]) -> dict[str, float]:
    """How free-form answers fare against the label set: the share that names no label, and their accuracy.

    An answer counts as a label when it equals one after normalisation (case, outer punctuation, spacing).
    """
    by_norm = {normalise_answer(label): label for label in labels}
    matched = [by_norm.get(normalise_answer(a)) for a in answers]
    return {
        "invalid_answer_rate": sum(m is None for m in matched) / len(answers),
        "free_accuracy": sum(m == g for m, g in zip(matched, gold, strict=True)) / len(answers),
    }


def normalise_answer(text: str) -> str:
    """Case, surrounding punctuation and runs of whitespace do not change an answer."""
    return " ".join(text.lower().strip().strip(".!?;:").split())


def final_number(text: str) -> str | None:
    """The answer's number: what follows a GSM8K-style `####` marker, else the last number in the text.

    Worked solutions state intermediate results before the answer, so the last number is the answer's; commas
    and a trailing `.0` are dropped so that "1,250" and "1250.0" match "1250".
    """
    marked = text.rpartition("####")[2] if "####" in text else text
    found = NUMBER.findall(marked)
    if not found:
        return None
    number = found[-1].replace(",", "")
    return number[:-2] if number.endswith(".0") else number


def exact_matches(gold: list[str], predicted: list[str]) -> list[float]:
    """1.0 where the normalised answers are equal, else 0.0."""
    return [float(normalise_answer(g) == normalise_answer(p)) for g, p in zip(gold, predicted, strict=True)]


def numeric_matches(gold: list[str], predicted: list[str]) -> list[float] | None:
    """1.0 where the answers' final numbers are equal; None when a reference has no number (not a math task)."""
    expected = [final_number(g) for g in gold]
    if any(e is None for e in expected):
        return None
    return [float(e == final_number(p)) for e, p in zip(expected, predicted, strict=True)]


def number_matches(gold: list[str], predicted: list[str], strict: bool) -> list[float]:
    """1.0 where an answer's final number is the reference's: strictly the one after `####`, leniently the last
    number written (the `number` reward's two forms). Side by side they tell a model that learnt the answer
    format from one that learnt to reason: the first raises strict alone, the second both."""
    from specialize.train import answer_number, reference_number

    return [
        float((got := answer_number(p, strict)) is not None and got == reference_number(g))
        for g, p in zip(gold, predicted, strict=True)
    ]


def generation_metrics(
    gold: list[str], predicted: list[str], loss_sum: float, n_tokens: int
) -> dict[str, Any]:
    """Exact match, numeric match (when every reference has a number), ROUGE-L F1, corpus BLEU, perplexity.

    Exact match is the strict score; ROUGE-L and BLEU give partial credit to long answers that are nearly right;
    perplexity of the reference answers measures how well the model knows them even where it words its own
    answer differently.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(g, p)["rougeL"].fmeasure for g, p in zip(gold, predicted, strict=True)]
    out: dict[str, Any] = {"exact_match": sum(exact_matches(gold, predicted)) / len(gold)}
    numeric = numeric_matches(gold, predicted)
    if numeric is not None:
        out["numeric_match"] = sum(numeric) / len(gold)
        for form in ("strict", "lenient"):
            out[f"number_{form}"] = sum(number_matches(gold, predicted, form == "strict")) / len(gold)
    out["rouge_l"] = sum(rouge) / len(gold)
    out["bleu"] = sacrebleu.corpus_bleu(predicted, [gold]).score / 100
    out["perplexity"] = math.exp(loss_sum / max(n_tokens, 1))
    return out


def per_example_scores(task: str, headline: str, gold: list[str], predicted: list[str]) -> list[float]:
    """Each example's share of the headline metric (correct 1.0 / wrong 0.0), for the paired bootstrap."""
    if headline == "numeric_match":
        return numeric_matches(gold, predicted) or []
    if task in ("multiple_choice", "preference"):
        return [float(g == p) for g, p in zip(gold, predicted, strict=True)]
    return exact_matches(gold, predicted)

"""Task metrics, computed with scikit-learn, rouge-score and sacrebleu where they have them.

Every metric is on a 0-1 scale (BLEU too, divided by 100) except perplexity, so one table holds them all.
"""

from __future__ import annotations

import math
import re
from typing import Any

# A number as people write answers: optional sign, thousands separators, decimals ("-1,250.50").
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def classification_metrics(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro and micro precision/recall/F1, per-class F1 and the confusion matrix (rows gold).

    Macro averages weigh every label equally, so a rare label counts as much as a common one; micro averages
    weigh every example equally and, with one label per example, equal accuracy.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    out: dict[str, Any] = {"accuracy": float(accuracy_score(gold, predicted))}
    for average in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(
            gold, predicted, labels=labels, average=average, zero_division=0
        )
        out.update(
            {f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)}
        )
    _, _, per_class, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, average=None, zero_division=0
    )
    out["per_class_f1"] = {label: float(v) for label, v in zip(labels, per_class, strict=True)}
    out["support"] = {label: int(v) for label, v in zip(labels, support, strict=True)}
    out["confusion_matrix"] = confusion_matrix(gold, predicted, labels=labels).tolist()
    return out


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

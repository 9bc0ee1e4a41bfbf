"""Task metrics, computed with scikit-learn where it has them."""

from __future__ import annotations

from typing import Any


def classification_metrics(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class F1 and the confusion matrix (rows gold, columns predicted)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(
        gold, predicted, labels=labels, average="macro", zero_division=0
    )
    _, _, per_class, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, average=None, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_precision": float(p),
        "macro_recall": float(r),
        "macro_f1": float(f),
        "per_class_f1": {label: float(v) for label, v in zip(labels, per_class, strict=True)},
        "support": {label: int(v) for label, v in zip(labels, support, strict=True)},
        "confusion_matrix": confusion_matrix(gold, predicted, labels=labels).tolist(),
    }


def normalise_answer(text: str) -> str:
    """Case, surrounding punctuation and runs of whitespace do not change an answer."""
    return " ".join(text.lower().strip().strip(".!?;:").split())


def generation_metrics(
    gold: list[str], predicted: list[str], loss_sum: float, n_tokens: int
) -> dict[str, Any]:
    """Exact match after normalising, and perplexity of the reference answers."""
    import math

    exact = sum(normalise_answer(g) == normalise_answer(p) for g, p in zip(gold, predicted, strict=True))
    return {"exact_match": exact / len(gold), "perplexity": math.exp(loss_sum / max(n_tokens, 1))}

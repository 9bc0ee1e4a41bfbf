"""The audit of a dataset: what is in it, what was removed and why, and what deserves a second look.

Written as `data/audit.json` in a run (and embedded in the HTML report), printed by `specialize data check`. Its
top-level keys are stable (AUDIT_KEYS; `labels` and `imbalance_ratio` only for classification) so that reports and
dashboards can read it without guessing. Everything here is computed from the cleaned splits and the rejects:
no model is run.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from typing import Any

from specialize.config import BiasConfig, DataConfig
from specialize.data.dedupe import normalise
from specialize.data.load import Example
from specialize.data.tokens import TokenCounter, training_estimate

AUDIT_KEYS = (
    "task",
    "files",
    "counts",
    "rejected_by_kind",
    "tokens",
    "labels",
    "imbalance_ratio",
    "duplicates",
    "leakage",
    "conflicts",
    "pii",
    "bias",
    "split",
    "estimate",
    "warnings",
)
IMBALANCE_WARNING = 3.0
MIN_GROUP_FOR_GAP = 5
LISTED = 10


def task_of(examples: list[Example]) -> str:
    """classification (labels), preference (pairs), feedback (rated answers), text (continued pre-training) or
    generation."""
    if any(e.label is not None for e in examples):
        return "classification"
    if any(e.rejected is not None for e in examples):
        return "preference"
    if any(e.desirable is not None for e in examples):
        return "feedback"
    if examples and all(e.text is not None for e in examples):
        return "text"
    return "generation"


def length_stats(values: list[int]) -> dict[str, float] | None:
    """Token-length distribution of one split."""
    if not values:
        return None
    values = sorted(values)

    def pct(p: float) -> int:
        return values[int(p * (len(values) - 1))]

    return {
        "min": values[0],
        "p5": pct(0.05),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 1),
        "p95": pct(0.95),
        "max": values[-1],
        "total": sum(values),
    }


def histogram(values: list[int]) -> dict[str, int]:
    """Counts in power-of-two buckets ("<=64", "<=128", ...): the shape of the length distribution at a glance."""
    out: Counter[str] = Counter()
    for v in values:
        edge = 16
        while edge < v:
            edge *= 2
        out[f"<={edge}"] += 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0][2:])))


def label_section(
    train: list[Example], validation: list[Example], declared: list[str] | None, warnings: list[str]
) -> dict[str, Any]:
    """Per-label counts, the imbalance ratio, and warnings about rare or missing classes."""
    train_counts = Counter(e.label for e in train if e.label is not None)
    val_counts = Counter(e.label for e in validation if e.label is not None)
    labels = sorted(train_counts)
    out: dict[str, Any] = {
        "labels": {
            label: {"train": train_counts[label], "validation": val_counts.get(label, 0)} for label in labels
        },
    }
    if train_counts:
        (big, most), (small, least) = train_counts.most_common()[0], train_counts.most_common()[-1]
        ratio = most / least
        out["imbalance_ratio"] = round(ratio, 2) if ratio % 1 else int(ratio)
        if ratio >= IMBALANCE_WARNING:
            warnings.append(
                f"class imbalance {ratio:.1f}:1 ('{big}' has {most} training examples, '{small}' "
                f"{least}); report macro-F1 rather than accuracy, and add examples of the rare classes"
            )
    unseen = sorted(set(val_counts) - set(train_counts))
    if unseen:
        out["validation_labels_not_in_train"] = unseen
        warnings.append(f"validation labels never seen in training: {', '.join(unseen)}")
    missing = sorted(set(declared or []) - set(train_counts) - set(val_counts))
    if missing:
        warnings.append(f"declared in data.labels but absent from the data: {', '.join(missing)}")
    return out


def conflicts(train: list[Example], validation: list[Example]) -> dict[str, Any] | None:
    """Identical inputs (normalised) that carry different labels: noise the model cannot learn from."""
    by_input: dict[str, list[tuple[str, Example, str]]] = defaultdict(list)
    for split, examples in (("train", train), ("validation", validation)):
        for ex in examples:
            if ex.label is not None:
                key = "\n".join(normalise(m["content"]) for m in ex.prompt if m["role"] != "system")
                by_input[key].append((ex.label, ex, split))
    if not by_input:
        return None
    clashing = [rows for rows in by_input.values() if len({label for label, _, _ in rows}) > 1]
    listed = []
    for rows in clashing[:LISTED]:
        user = next((m["content"] for m in reversed(rows[0][1].prompt) if m["role"] == "user"), "")
        listed.append(
            {
                "input": _preview(user),
                "labels": dict(Counter(label for label, _, _ in rows)),
                "sources": [ex.where for _, ex, _ in rows[:5]],
            }
        )
    across = sum(len({split for _, _, split in rows}) > 1 for rows in clashing)
    return {
        "count": len(clashing),
        "rows": sum(len(rows) for rows in clashing),
        "across_splits": across,
        "examples": listed,
    }


def bias_probe(examples: list[Example], config: BiasConfig, lengths: dict[int, int]) -> dict[str, Any] | None:
    """Label distribution (or, without labels, count and length) per group, and the largest gap between groups.

    A group is a value of `config.field`, or a keyword list of `config.keywords` (a row belongs to every group
    whose words it uses, to "(none)" if it uses none). A large gap says the model may learn the group as a proxy
    for the label.
    """
    if not config.field and not config.keywords:
        return None
    groups: dict[str, list[Example]] = defaultdict(list)
    if config.field:
        for ex in examples:
            value = ex.extra.get(config.field)
            groups["(missing)" if value in (None, "") else str(value)].append(ex)
        by = f"field '{config.field}'"
    else:
        patterns = {
            name: re.compile(
                r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE
            )
            for name, words in config.keywords.items()
            if words
        }
        for ex in examples:
            text = ex.text if ex.text is not None else "\n".join(m["content"] for m in ex.messages)
            hits = [name for name, pattern in patterns.items() if pattern.search(text)]
            for name in hits or ["(none)"]:
                groups[name].append(ex)
        by = "keywords"
    labelled = any(e.label is not None for e in examples)
    section: dict[str, Any] = {"by": by, "groups": {}}
    for name in sorted(groups):
        members = groups[name]
        entry: dict[str, Any] = {"count": len(members)}
        if labelled:
            counts = Counter(e.label for e in members)
            entry["labels"] = {label: round(n / len(members), 3) for label, n in sorted(counts.items())}
        else:
            entry["mean_tokens"] = round(statistics.fmean(lengths.get(id(e), 0) for e in members), 1)
        section["groups"][name] = entry
    if labelled:
        section["max_gap"] = _max_gap(section["groups"])
    return section


def _max_gap(groups: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    big = {name: g for name, g in groups.items() if g["count"] >= MIN_GROUP_FOR_GAP}
    best = None
    labels = {label for g in big.values() for label in g["labels"]}
    for label in sorted(labels):
        shares = sorted((g["labels"].get(label, 0.0), name) for name, g in big.items())
        if len(shares) >= 2 and (best is None or shares[-1][0] - shares[0][0] > best["gap"]):
            best = {
                "label": label,
                "gap": round(shares[-1][0] - shares[0][0], 3),
                "highest": shares[-1][1],
                "lowest": shares[0][1],
            }
    return best


def build_audit(
    config: DataConfig,
    train: list[Example],
    validation: list[Example],
    rejects: list[dict[str, Any]],
    lengths: dict[int, int],
    stats: dict[str, Any],
    counter: TokenCounter,
    files: dict[str, Any],
) -> dict[str, Any]:
    """The audit of cleaned splits: `lengths` maps id(example) to its tokens, `stats` holds what cleaning counted
    (pii, split, chunked) and `files` what was read from where."""
    warnings: list[str] = []
    rejected_by_kind = dict(Counter(r["kind"] for r in rejects))
    train_lengths = [lengths[id(e)] for e in train]
    report: dict[str, Any] = {
        "task": task_of(train + validation),
        "files": files,
        "counts": {"train": len(train), "validation": len(validation), "rejected": len(rejects)},
        "rejected_by_kind": rejected_by_kind,
        "tokens": {
            "counted_with": counter.description,
            "context_length": counter.context_length,
            "min_tokens": config.min_tokens,
            "max_tokens": config.max_tokens,
            "train": length_stats(train_lengths),
            "validation": length_stats([lengths[id(e)] for e in validation]),
            "histogram": histogram(train_lengths + [lengths[id(e)] for e in validation]),
            **({"chunked_documents": stats["chunked"]} if "chunked" in stats else {}),
        },
    }
    if report["task"] == "classification":
        report.update(label_section(train, validation, config.labels, warnings))
    report["duplicates"] = {
        "exact": rejected_by_kind.get("duplicate", 0),
        "near": rejected_by_kind.get("near_duplicate", 0),
        "near_threshold": config.dedupe.threshold if config.dedupe.near else None,
        "method": "exact: normalised text; near: MinHash LSH on word 3-grams, confirmed by exact Jaccard",
    }
    report["leakage"] = {
        "exact": rejected_by_kind.get("leakage", 0),
        "near": rejected_by_kind.get("near_leakage", 0),
        "group": rejected_by_kind.get("group_leakage", 0),
        "action": "training copies removed; validation kept",
    }
    report["conflicts"] = conflicts(train, validation)
    report["pii"] = stats.get("pii")
    report["bias"] = bias_probe(train + validation, config.bias, lengths)
    report["split"] = stats.get("split")
    report["estimate"] = training_estimate(sum(train_lengths), counter, config.tokens_per_second)
    warnings += reject_warnings(rejected_by_kind)
    if report["conflicts"] and report["conflicts"]["count"]:
        warnings.append(
            f"{report['conflicts']['count']} input(s) appear with different labels (see conflicts)"
        )
    pii = report["pii"] or {}
    if pii.get("rows") and pii.get("mode") == "report":
        kinds = ", ".join(f"{k} {n}" for k, n in pii["by_kind"].items())
        warnings.append(
            f"personal data in {pii['rows']} row(s) ({kinds}); set data.pii.mode: mask (or drop) so that training "
            "does not see it"
        )
    if not counter.exact:
        warnings.append(f"token counts are estimates: {counter.description}")
    report["warnings"] = warnings
    return report


# Rows left out by a sample the config asked for (data.max_train_examples, data.max_per_label), not for anything
# wrong with them: summaries count them apart from rows rejected for a reason.
SAMPLED_OUT = ("not_sampled", "over_label_cap")


def left_out(rejected_by_kind: dict[str, int]) -> tuple[int, int]:
    """(rows rejected for a reason, rows not sampled), from an audit's `rejected_by_kind`."""
    not_sampled = sum(n for kind, n in rejected_by_kind.items() if kind in SAMPLED_OUT)
    return sum(rejected_by_kind.values()) - not_sampled, not_sampled


def reject_warnings(rejected_by_kind: dict[str, int]) -> list[str]:
    if not rejected_by_kind:
        return []
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(rejected_by_kind.items(), key=lambda kv: -kv[1]))
    return [
        f"{sum(rejected_by_kind.values())} row(s) removed ({kinds}); each is in rejects.jsonl with its reason"
    ]


def _preview(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."

"""The promotion gate: may a retrained child replace its parent?

Reads the evaluation reports of parent and child on the same two files (the frozen regression set, and the held-out
new examples); returns a `GateDecision` with every number behind it, which `retraining.py` writes to the child's
`gate.json`.

Two one-sided paired bootstrap tests on the headline metric (macro-F1, accuracy, exact match, ...), resampling the
examples with one draw shared by parent and child (`evaluate.significance.resampled_scores` with one seed), so
each resample compares the two models on the same examples:

- Regression set, non-inferiority: H0 "the child is worse than the parent by more than `gate.margin`". The
  p-value is the share of resampled differences (child - parent) at or below -margin; the child passes when it is
  below `gate.alpha`, i.e. when the one-sided lower confidence bound of the difference at level alpha lies above
  -margin. A child too close to call is refused: the burden of proof is on the change.
- New examples, superiority: H0 "the child is no better than the parent"; the p-value is the share of resampled
  differences at or below 0, and it must be below alpha.

Point values alone (MLflow's thresholds, a CI job comparing two numbers) would promote a child that wins by noise
on a small set and refuse one that loses a point by noise on a large one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specialize.config import GateConfig
from specialize.errors import EvalError

SYSTEM = "fine_tuned"


@dataclass(frozen=True)
class Comparison:
    """Parent and child on one set of examples, and the one-sided paired bootstrap test between them."""

    examples: str  # "regression" or "new"
    n: int
    metric: str
    parent: float
    child: float
    difference: float  # child - parent
    lower_bound: float  # one-sided lower confidence bound of the difference at level alpha
    null: float  # the difference H0 says the child is at or below (-margin, or 0)
    p_value: float
    passed: bool


@dataclass(frozen=True)
class GateDecision:
    """Whether the child may be promoted, why, and the numbers."""

    passed: bool
    reasons: list[str]
    margin: float
    alpha: float
    regression: Comparison
    new: Comparison | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> GateDecision:
        new = Comparison(**doc["new"]) if doc.get("new") else None
        return cls(
            doc["passed"], doc["reasons"], doc["margin"], doc["alpha"], Comparison(**doc["regression"]), new
        )

    def summary(self) -> str:
        """The decision and its numbers, as a person reads them."""
        lines = ["promoted" if self.passed else "refused"]
        for c in (self.regression, self.new):
            if c is None:
                continue
            lines.append(
                f"  {c.examples} ({c.n} examples, {c.metric}): parent {c.parent:.4f}, child {c.child:.4f}, "
                f"difference {c.difference:+.4f}, lower bound {c.lower_bound:+.4f} at alpha {self.alpha:g}, "
                f"H0 difference <= {c.null:+.4f}: p={c.p_value:.4f} -> {'pass' if c.passed else 'fail'}"
            )
        lines += [f"  {r}" for r in self.reasons]
        return "\n".join(lines)


def compare_reports(
    examples: str,
    examples_file: Path,
    parent_report: Path,
    child_report: Path,
    null: float,
    alpha: float,
    seed: int,
) -> Comparison:
    """The one-sided paired bootstrap test of child against parent on `examples_file`, which both reports
    evaluated in full.

    Raises:
        EvalError: the reports are not of the same examples, or their task has no per-example score (held-out
            text's perplexity).
    """
    from specialize.evaluate.metrics import per_example_scores
    from specialize.evaluate.significance import resampled_scores

    parent, child = (json.loads(p.read_text(encoding="utf-8")) for p in (parent_report, child_report))
    metric = parent["headline"]
    if parent["task"] == "text" or SYSTEM not in parent["systems"] or SYSTEM not in child["systems"]:
        raise EvalError(
            f"the gate compares per-example answers of the fine-tuned systems; {parent_report} has task "
            f"{parent['task']} and systems {sorted(parent['systems'])}"
        )
    gold = _gold(examples_file, parent)
    answers = {who: r["systems"][SYSTEM]["predictions"] for who, r in (("parent", parent), ("child", child))}
    if not len(gold) == len(answers["parent"]) == len(answers["child"]):
        raise EvalError(f"{parent_report} and {child_report} did not evaluate the same examples")
    labels = parent.get("labels") if parent["task"] == "classification" else None
    if labels:
        scores = {who: resampled_scores(gold, a, labels, seed) for who, a in answers.items()}
        point = {who: float(resampled_scores(gold, a, labels, None)[0]) for who, a in answers.items()}
    else:
        per = {who: per_example_scores(parent["task"], metric, gold, a) for who, a in answers.items()}
        scores = {who: resampled_scores(None, p, None, seed) for who, p in per.items()}
        point = {who: float(np.mean(p)) for who, p in per.items()}
    diff = scores["child"] - scores["parent"]
    p_value = float(max((diff <= null).mean(), 1 / len(diff)))
    return Comparison(
        examples,
        len(gold),
        metric,
        point["parent"],
        point["child"],
        point["child"] - point["parent"],
        float(np.quantile(diff, alpha)),
        null,
        p_value,
        p_value < alpha,
    )


def _gold(examples_file: Path, report: dict[str, Any]) -> list[str]:
    """The gold answers in the order evaluated: the report's own when it keeps them, else the examples file's."""
    if report.get("gold"):
        return [str(g) for g in report["gold"]]
    rows = [
        json.loads(line) for line in examples_file.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if report["task"] == "classification":
        return [str(r["label"]) for r in rows]
    if report["task"] == "preference":
        return ["chosen"] * len(rows)
    if report["task"] == "multiple_choice" and all(r.get("label") is not None for r in rows):
        return [str(r["label"]) for r in rows]
    return [str(r["messages"][-1]["content"]) for r in rows]


def decide(config: GateConfig, regression: Comparison, new: Comparison | None) -> GateDecision:
    """Promote only if not worse on the regression set (beyond the margin) and better on the new examples."""
    reasons = []
    if not regression.passed:
        reasons.append(
            f"not shown to be within {config.margin:g} of the parent on the regression set: difference "
            f"{regression.difference:+.4f}, lower bound {regression.lower_bound:+.4f}, p={regression.p_value:.4f} "
            f">= alpha {config.alpha:g}"
        )
    if new is None:
        reasons.append(
            f"no held-out new examples (fewer than gate.min_new_examples, {config.min_new_examples}): the child "
            "cannot show it is better; add new data with --data or wait for more corrections"
        )
    elif not new.passed:
        reasons.append(
            f"not shown to be better than the parent on the new examples: difference {new.difference:+.4f}, "
            f"p={new.p_value:.4f} >= alpha {config.alpha:g}"
        )
    return GateDecision(not reasons, reasons, config.margin, config.alpha, regression, new)

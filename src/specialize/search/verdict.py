"""What a study concludes, in the terms a user decides by: did the search beat the default config, what to use
on this task, and would more data help.

The tuned and default runs (and the learning curve's) answered the same validation examples, so each question is
a paired test on their `eval/report.json` (`evaluate.significance.paired_test`): the tuned fine-tune against the
default one, against the best system that needs no fine-tune, and against itself trained on half the data. A
lead inside the noise is called that, in both directions: on banking77 the search's winner led the default by
0.085 on its own sample and trailed it on the rest.
"""

from __future__ import annotations

from typing import Any

from specialize.evaluate.report import system_name

SIGNIFICANT = 0.05
PLAIN_NAMES = {
    "base_zero_shot": "the base model, zero-shot",
    "base_few_shot": "the base model with few-shot examples",
    "base_rag": "the base model with retrieval (RAG)",
}


def study_verdict(
    tuned: dict[str, Any],
    default: dict[str, Any],
    seed: int,
    chose_winner: bool = False,
    half_data: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The paired tests and the sentences that state them, from the tuned and default runs' reports; None
    where they cannot be paired (plain text, scored by perplexity per document, or different examples).

    Args:
        tuned: the tuned config's `eval/report.json`.
        default: the default config's `eval/report.json`, on the same examples.
        seed: the resampling seed (the study's).
        chose_winner: the runs were evaluated on the rows the trials were ranked on (a search sample that held
            the whole validation split), which flatters the winner; the verdict then says so.
        half_data: the learning curve's run on half the training data (its fine-tuned system), if it has one.
    """
    from specialize.evaluate.metrics import per_example_scores
    from specialize.evaluate.significance import paired_test

    gold = tuned.get("gold") or []
    if not gold or gold != default.get("gold") or "fine_tuned" not in tuned["systems"]:
        return None
    metric, labels = tuned["headline"], tuned.get("labels")

    def answers(report: dict[str, Any], system: str) -> list[Any]:
        predicted = report["systems"][system]["predictions"]
        return predicted if labels else per_example_scores(tuned["task"], metric, gold, predicted)

    ours = answers(tuned, "fine_tuned")
    search = paired_test(gold, ours, answers(default, "fine_tuned"), labels, seed)
    lines = [_search_line(search, metric, len(gold))]
    against = (tuned["significance"].get("paired_test") or {}).get("against")
    verdict: dict[str, Any] = {"examples": len(gold), "metric": metric, "tuned_vs_default": search}
    if against:
        use = paired_test(gold, ours, answers(tuned, against), labels, seed)
        verdict["tuned_vs_best_alternative"] = {"against": against, **use}
        how = (tuned.get("scoring") or {}).get("chosen", {}).get(against)
        name = PLAIN_NAMES.get(against, system_name(against)) + (
            f" ({how} scoring)" if how and how != "raw" else ""
        )
        lines.append(_use_line(use, name))
    if half_data and half_data.get("gold") == gold:
        more = paired_test(gold, ours, answers(half_data, "fine_tuned"), labels, seed)
        verdict["full_vs_half_data"] = more
        lines.append(_data_line(more, metric))
    if chose_winner:
        lines.append(
            "These are the examples the trials were ranked on, so both figures flatter the tuned config; give "
            "--sample fewer than the validation split, or --sample-from unused-train, for a fair comparison."
        )
    verdict["lines"] = lines
    return verdict


def _outcome(test: dict[str, Any]) -> str:
    """Whether the first system of a paired test is better, worse, or neither beyond noise."""
    if test["p_value"] < SIGNIFICANT:
        return "better"
    return "worse" if test["p_value_reverse"] < SIGNIFICANT else "noise"


def _search_line(test: dict[str, Any], metric: str, n: int) -> str:
    low, high = test["interval"]
    figures = (
        f"The tuned fine-tune scores {test['difference']:+.3f} {metric} against the default config's on these {n} "
        f"examples (95% CI {low:+.3f} to {high:+.3f}"
    )
    return (
        figures
        + {
            "better": f", p={test['p_value']:.3f}): the search helped.",
            "worse": f"; p={test['p_value_reverse']:.3f} that the default does better): the default config "
            "does better, and the search's winner was picked on noise in its sample.",
            "noise": f", p={test['p_value']:.3f}): no difference beyond noise; the search did not clearly help, "
            "and the default config is as good on this evidence.",
        }[_outcome(test)]
    )


def _use_line(test: dict[str, Any], alternative: str) -> str:
    low, high = test["interval"]
    gap, figures = test["difference"], f"95% CI {low:+.3f} to {high:+.3f}"
    outcome = _outcome(test)
    if outcome == "better":
        return (
            f"Use the tuned fine-tune: it beats the best system without one, {alternative}, by {gap:.3f} "
            f"({figures}, p={test['p_value']:.3f})."
        )
    if outcome == "worse":
        return (
            f"Use {alternative}: it beats the tuned fine-tune by {-gap:.3f} ({figures} for the fine-tune's lead, "
            f"p={test['p_value_reverse']:.3f}) and needs no training."
        )
    leader, trailer, lead = (
        ("the tuned fine-tune", alternative, gap) if gap > 0 else (alternative, "the tuned fine-tune", -gap)
    )
    return (
        f"{leader[0].upper()}{leader[1:]} leads {trailer} by {lead:.3f}, within noise ({figures} for the "
        f"fine-tune's lead, p={test['p_value']:.3f}): without training, {alternative} does as well on this "
        "evidence; more validation examples could tell them apart."
    )


def _data_line(test: dict[str, Any], metric: str) -> str:
    low, high = test["interval"]
    figures = (
        f"Trained on all its data instead of half, the tuned fine-tune scores {test['difference']:+.3f} {metric} "
        f"(95% CI {low:+.3f} to {high:+.3f}, p={test['p_value']:.3f})"
    )
    return (
        figures
        + {
            "better": ": the curve still rises, so more data of this kind is likely to help.",
            "worse": ": more data made it worse; check the added rows and the training length first.",
            "noise": ": no gain beyond noise from the second half; more of the same data may not help much.",
        }[_outcome(test)]
    )

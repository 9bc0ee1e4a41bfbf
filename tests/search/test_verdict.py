"""The study's verdict: paired bootstrap tests on the tuned and default runs' answers, stated as a decision, and
a lead within the noise called that in either direction."""

from __future__ import annotations

from specialize.search import study_verdict

GOLD = ["refund", "card", "refund", "transfer"] * 10


def report(answers: dict[str, list[str]], against: str = "base_rag", task: str = "classification") -> dict:
    """The parts of an `eval/report.json` the verdict reads."""
    labels = sorted(set(GOLD)) if task == "classification" else None
    return {
        "task": task,
        "headline": "macro_f1" if labels else "exact_match",
        "labels": labels,
        "gold": GOLD,
        "systems": {name: {"predictions": p} for name, p in answers.items()},
        "significance": {"paired_test": {"system": "fine_tuned", "against": against}},
        "scoring": {"chosen": {"base_rag": "cal", "fine_tuned": "raw"}},
    }


def wrong(share: float) -> list[str]:
    """The gold answers with the first `share` of them replaced by a wrong one."""
    n = round(share * len(GOLD))
    return ["card" if g != "card" else "refund" for g in GOLD[:n]] + GOLD[n:]


def test_a_clear_win_over_the_default_and_the_alternative_says_to_use_the_tuned_fine_tune():
    tuned = report({"fine_tuned": GOLD, "base_rag": wrong(0.6)})
    verdict = study_verdict(tuned, report({"fine_tuned": wrong(0.5)}), seed=0)

    assert verdict is not None and verdict["examples"] == 40 and verdict["metric"] == "macro_f1"
    assert verdict["tuned_vs_default"]["difference"] > 0.4
    assert verdict["tuned_vs_default"]["p_value"] < 0.05 < verdict["tuned_vs_default"]["p_value_reverse"]
    assert verdict["tuned_vs_best_alternative"]["against"] == "base_rag"
    search, use = verdict["lines"]
    assert search.endswith("the search helped.") and "on these 40 examples" in search
    assert use.startswith(
        "Use the tuned fine-tune: it beats the best system without one, the base model with"
    )
    assert "(cal scoring)" in use


def test_an_alternative_that_beats_the_fine_tune_is_named_with_its_margin():
    tuned = report({"fine_tuned": wrong(0.5), "base_rag": GOLD})
    verdict = study_verdict(tuned, report({"fine_tuned": wrong(0.5)}), seed=0)

    search, use = verdict["lines"]
    assert verdict["tuned_vs_default"]["difference"] == 0
    assert "no difference beyond noise" in search
    gap = -verdict["tuned_vs_best_alternative"]["difference"]
    assert gap > 0.4
    assert use.startswith(
        f"Use the base model with retrieval (RAG) (cal scoring): it beats the tuned fine-tune by {gap:.3f}"
    )
    assert "needs no training" in use


def test_a_default_config_that_does_better_says_the_winner_was_picked_on_noise():
    verdict = study_verdict(
        report({"fine_tuned": wrong(0.5), "base_rag": wrong(0.9)}), report({"fine_tuned": GOLD}), seed=0
    )

    assert verdict["tuned_vs_default"]["p_value_reverse"] < 0.05
    assert "the default config does better" in verdict["lines"][0]


def test_a_lead_of_one_example_is_within_noise_and_says_so():
    one_wrong = ["card", *GOLD[1:]]
    verdict = study_verdict(
        report({"fine_tuned": GOLD, "base_rag": one_wrong}), report({"fine_tuned": GOLD}), seed=0
    )

    use = verdict["lines"][1]
    assert use.startswith("The tuned fine-tune leads the base model with retrieval (RAG) (cal scoring) by")
    assert "within noise" in use and "more validation examples could tell them apart" in use


def test_generation_answers_are_paired_by_exact_match_and_a_flattering_sample_is_named():
    tuned = report({"fine_tuned": GOLD, "base_few_shot": wrong(0.5)}, "base_few_shot", task="generation")
    verdict = study_verdict(
        tuned, report({"fine_tuned": wrong(0.5)}, task="generation"), 0, chose_winner=True
    )

    assert verdict["metric"] == "exact_match"
    assert round(verdict["tuned_vs_default"]["difference"], 3) == 0.5
    assert verdict["lines"][1].startswith("Use the tuned fine-tune")
    assert "the trials were ranked on, so both figures flatter the tuned config" in verdict["lines"][2]


def test_runs_that_cannot_be_paired_have_no_verdict():
    text = report({"fine_tuned": []}) | {"task": "text", "gold": []}
    assert study_verdict(text, text, seed=0) is None
    other_rows = report({"fine_tuned": GOLD}) | {"gold": list(reversed(GOLD))}
    assert study_verdict(report({"fine_tuned": GOLD}), other_rows, seed=0) is None


def test_the_learning_curve_says_whether_the_second_half_of_the_data_helped():
    tuned, default = report({"fine_tuned": GOLD, "base_rag": GOLD}), report({"fine_tuned": GOLD})
    rising = study_verdict(tuned, default, 0, half_data=report({"fine_tuned": wrong(0.5)}))
    flat = study_verdict(tuned, default, 0, half_data=report({"fine_tuned": GOLD}))

    assert rising["full_vs_half_data"]["p_value"] < 0.05
    assert rising["lines"][2].startswith(
        "Trained on all its data instead of half, the tuned fine-tune scores +"
    )
    assert rising["lines"][2].endswith("more data of this kind is likely to help.")
    assert flat["lines"][2].endswith("more of the same data may not help much.")

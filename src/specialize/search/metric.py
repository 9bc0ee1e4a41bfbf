"""The objective of a study: the task's headline validation metric, on a sample of the validation split (drawn
by `search.study`), computed on the model while it trains.

The same metric the evaluation ranks systems by (macro-F1 for classification, accuracy over the choices, exact or
final-number match for generation, chosen-over-rejected accuracy for pairs; for plain text the loss, where the
report shows its perplexity), answered the way the evaluation's fine-tuned system answers: its zero-shot prompts,
and for labels and choices its label scores read under the run's `eval.scoring` (`evaluate.calibration`), so
that a trial is ranked by the figure its winner will be reported with. A sample keeps each evaluation cheap enough
to run several times per trial, which is what the pruner needs.
"""

from __future__ import annotations

from typing import Any

from specialize.config import EvalConfig

GENERATION_SAMPLE = 64  # decoding answers costs far more than scoring labels: a smaller default sample
SAMPLE = 200


class ValidationMetric:
    """The headline metric of the rows' task on those rows; call it with a model to score it."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        labels: list[str] | None,
        tokenizer: Any,
        context: int,
        seed: int,
        eval_config: EvalConfig,
        shots: list[dict[str, Any]],
    ) -> None:
        """Build the prompts once for every evaluation of every trial.

        Args:
            rows: the validation sample the metric is computed on.
            labels: the label set of a classification task, None otherwise.
            tokenizer: the base model's tokenizer.
            context: the model's context length; prompts are cut to fit it as the evaluation cuts them.
            seed: the run's seed (the evaluation's prompts take it).
            eval_config: the run's `eval:` section; its `scoring` decides how labels are read.
            shots: the prepared training rows; with the sample they give the bare task instruction the
                question-free prompts are built from, as in the evaluation.
        """
        from specialize.evaluate.prompts import SystemPrompts
        from specialize.evaluate.systems import Prompting

        self.task = task_of(rows, labels)
        self.rows, self.labels, self.tokenizer = rows, labels, tokenizer
        self.scoring_asked = eval_config.scoring
        self.scoring: str | None = None  # the variant the last call was read under (label tasks)
        self.prompts: list[str] = []
        self.question_free: tuple[list[str], str] = ([], "")
        if self.task != "text":
            prompts = SystemPrompts(eval_config, tokenizer, rows, shots, context, seed)
            self.prompts = prompts.for_context(Prompting.ZERO_SHOT)[0]
            if self.task in ("classification", "multiple_choice"):
                self.question_free = prompts.question_free(Prompting.ZERO_SHOT)
        self.name, self.maximize = headline(self.task, self.rows)

    def __call__(self, model: Any) -> float:
        """The metric of `model` (in eval mode, under the training autocast) on the sample."""
        import torch

        with torch.no_grad():
            return self._score(model)

    def _score(self, model: Any) -> float:
        from specialize.evaluate import EVAL_BATCH, GENERATE_BATCH
        from specialize.evaluate.metrics import exact_matches, numeric_matches
        from specialize.evaluate.scoring import answer_loss

        tok, rows, prompts = self.tokenizer, self.rows, self.prompts
        if self.task in ("classification", "multiple_choice"):
            return self._label_metric(model)
        if self.task == "preference":
            wins = 0
            for row, prompt in zip(rows, prompts, strict=True):
                chosen, n_chosen = answer_loss(model, tok, prompt, row["chosen"][-1]["content"])
                rejected, n_rejected = answer_loss(model, tok, prompt, row["rejected"][-1]["content"])
                wins += chosen / n_chosen < rejected / n_rejected  # per token, as the evaluation compares
            return wins / len(rows)
        if self.task == "text":
            from specialize.data import encode_text
            from specialize.train import validation_loss

            encoded = [encode_text(tok, row["text"]) for row in rows]
            return validation_loss(model, encoded, tok.pad_token_id, EVAL_BATCH)
        from specialize.models.generation import generate_batch

        references = [_answer(row) for row in rows]
        budgets = [min(512, len(tok(r)["input_ids"]) * 2 + 16) for r in references]
        answers = generate_batch(model, tok, prompts, budgets, batch_size=GENERATE_BATCH)
        scores = numeric_matches(references, answers) if self.name == "numeric_match" else None
        scores = scores if scores is not None else exact_matches(references, answers)
        return sum(scores) / len(rows)

    def _label_metric(self, model: Any) -> float:
        """Classification or multiple choice, as the evaluation scores its fine-tuned system: one pass of label
        scores (the content-free and bare prompts scored once per label set, not per question), every variant
        read from it, and the one `eval.scoring` names; under `best`, the variant with the best metric on the
        sample, which mirrors how the final evaluation reports the fine-tune (its best variant on the validation
        split). The variant is left in `self.scoring` for the trial's record."""
        from specialize.evaluate.answers import gold_answer, score_label_sets
        from specialize.evaluate.calibration import BEST, Scoring, choose, score_variants
        from specialize.evaluate.systems import Task

        task, rows = Task(self.task), self.rows
        labels = self.labels if task == Task.CLASSIFICATION else None
        groups = score_label_sets(model, self.tokenizer, rows, self.prompts, self.question_free, labels, None)
        gold = [gold_answer(row, task) for row in rows]
        metric = "macro_f1" if labels else "accuracy"
        values = {v: float(m[metric]) for v, m in score_variants(groups, gold, labels).items()}
        chosen = choose(values) if self.scoring_asked == BEST else Scoring(self.scoring_asked)
        self.scoring = str(chosen)
        return values[chosen]


def headline(task: str, rows: list[dict[str, Any]]) -> tuple[str, bool]:
    """The metric of `task` and whether higher is better."""
    if task == "generation":  # math: the answer's number, not its wording
        numeric = all(_final_number(r) is not None for r in rows)
        return ("numeric_match" if numeric else "exact_match"), True
    names = {
        "classification": "macro_f1",
        "multiple_choice": "accuracy",
        "preference": "preference_accuracy",
        "text": "loss",
    }
    return names[task], task != "text"


def task_of(rows: list[dict[str, Any]], labels: list[str] | None) -> str:
    """The task, by the rules of the evaluation (`evaluate.evaluation`): plain text, preference pairs, choices,
    labels, else generation."""
    if all("messages" not in r for r in rows):
        return "text"
    if all("rejected" in r for r in rows):
        return "preference"
    if all("choices" in r for r in rows):
        return "multiple_choice"
    return "classification" if labels else "generation"


def _answer(row: dict[str, Any]) -> str:
    if "choices" in row and row.get("label") is not None:
        return str(row["label"])
    return str(row["messages"][-1]["content"])


def _final_number(row: dict[str, Any]) -> str | None:
    from specialize.evaluate.metrics import final_number

    return final_number(_answer(row))

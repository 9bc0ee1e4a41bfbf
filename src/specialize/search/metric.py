"""The objective of a study: the task's headline validation metric, on a seeded sample of the validation split,
computed on the model while it trains.

The same metric the evaluation ranks systems by (macro-F1 for classification, accuracy over the choices, exact or
final-number match for generation, chosen-over-rejected accuracy for pairs; for plain text the loss, where the
report shows its perplexity), answered the way the fine-tuned system answers: zero-shot prompts, labels scored.
A sample keeps each evaluation cheap enough to run several times per trial, which is what the pruner needs.
"""

from __future__ import annotations

from typing import Any

from specialize.data.split import seeded_sample

GENERATION_SAMPLE = 64  # decoding answers costs far more than scoring labels: a smaller default sample
SAMPLE = 200


class ValidationMetric:
    """The headline metric of the rows' task, on a seeded sample of them; call it with a model to score it."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        labels: list[str] | None,
        tokenizer: Any,
        context: int,
        seed: int,
        size: int | None = None,
    ) -> None:
        from specialize.evaluate.prompts import fitting_prompt

        self.task = task_of(rows, labels)
        default = GENERATION_SAMPLE if self.task == "generation" else SAMPLE
        self.rows = seeded_sample(rows, size or default, seed)
        self.labels, self.tokenizer = labels, tokenizer
        self.prompts = (
            []
            if self.task == "text"
            else [fitting_prompt(tokenizer, row, [], context)[0] for row in self.rows]
        )
        self.name, self.maximize = headline(self.task, self.rows)

    def __call__(self, model: Any) -> float:
        """The metric of `model` (in eval mode, under the training autocast) on the sample."""
        import torch

        with torch.no_grad():
            return self._score(model)

    def _score(self, model: Any) -> float:
        from specialize.evaluate import EVAL_BATCH, GENERATE_BATCH
        from specialize.evaluate.metrics import classification_metrics, exact_matches, numeric_matches
        from specialize.evaluate.scoring import answer_loss, pick_labels

        tok, rows, prompts = self.tokenizer, self.rows, self.prompts
        if self.task == "classification" and self.labels:
            predicted = pick_labels(model, tok, prompts, self.labels, EVAL_BATCH)
            gold = [str(r["label"]) for r in rows]
            return float(classification_metrics(gold, predicted, self.labels)["macro_f1"])
        if self.task == "multiple_choice":
            right = [
                pick_labels(model, tok, [prompt], row["choices"])[0] == _answer(row)
                for row, prompt in zip(rows, prompts, strict=True)
            ]
            return sum(right) / len(rows)
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

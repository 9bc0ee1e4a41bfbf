"""How one system answers the evaluated rows, per task: label scores, greedy answers, pair likelihoods, perplexity.

Called by `evaluation.evaluate` once per system, with the model (base weights, or fine-tuned) and that system's
prompts; returns what the report needs: the label scores every scoring variant is computed from, or the answers
and their metrics.
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

from specialize.evaluate.calibration import LabelScores
from specialize.evaluate.systems import Task

if TYPE_CHECKING:
    from specialize.train import Reward

GENERATE_BATCH = 16  # answers decoded together; on a CPU, more rows per step stop paying beyond this
EVAL_BATCH = 4  # prompts scored together; bounds the label-expanded cache to a few hundred MB


def gold_answer(row: dict[str, Any], task: Task) -> str:
    """The answer a row counts as right: its label, or its last assistant turn ("chosen" for a preference pair)."""
    if task == Task.PREFERENCE:
        return "chosen"
    if task == Task.CLASSIFICATION or (task == Task.MULTIPLE_CHOICE and row.get("label") is not None):
        return str(row["label"])
    return str(row["messages"][-1]["content"])


def score_label_sets(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    prompts: list[str],
    question_free: tuple[list[str], str],
    labels: list[str] | None,
    progress: Any,
) -> list[LabelScores]:
    """The one scoring pass of a classification or multiple-choice system, one `LabelScores` per label set.

    Classification scores every row over the run's label set; multiple choice scores each row over its own
    choices, rows with the same choices together. The question-free prompts are scored once per label set.
    """
    from specialize.evaluate.scoring import label_scores

    if labels:
        sets = {tuple(labels): list(range(len(rows)))}
    else:
        sets = {}
        for i, row in enumerate(rows):
            sets.setdefault(tuple(row["choices"]), []).append(i)
    free, bare = question_free
    return [
        label_scores(
            model,
            tokenizer,
            [prompts[i] for i in members],
            list(choices),
            members,
            free,
            bare,
            EVAL_BATCH,
            progress,
        )
        for choices, members in sets.items()
    ]


def answer_freely(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], prompts: list[str], task: Task, progress: Any
) -> dict[str, Any]:
    """Generation (greedy answers, batched, and the perplexity of the references) or preference pairs."""
    from specialize.evaluate.metrics import generation_metrics
    from specialize.evaluate.scoring import answer_loss
    from specialize.models.generation import generate_batch

    predictions: list[str] = []
    if task == Task.PREFERENCE:
        # Which answer of the pair does the system find more likely after its prompt, the one people preferred?
        # Per token, so that a short answer does not win on length alone (summed log-likelihoods favour it).
        for row, prompt in zip(rows, prompts, strict=True):
            chosen, n_chosen = answer_loss(model, tokenizer, prompt, row["chosen"][-1]["content"])
            rejected, n_rejected = answer_loss(model, tokenizer, prompt, row["rejected"][-1]["content"])
            predictions.append("chosen" if chosen / n_chosen < rejected / n_rejected else "rejected")
            progress(1)
        return {"preference_accuracy": predictions.count("chosen") / len(rows), "predictions": predictions}
    references = [row["messages"][-1]["content"] for row in rows]
    budgets = [min(512, len(tokenizer(r)["input_ids"]) * 2 + 16) for r in references]
    predictions = generate_batch(
        model, tokenizer, prompts, budgets, batch_size=GENERATE_BATCH, progress=progress
    )
    loss_sum, n_tokens = 0.0, 0
    for prompt, reference in zip(prompts, references, strict=True):
        loss, n = answer_loss(model, tokenizer, prompt, reference)
        loss_sum, n_tokens = loss_sum + loss, n_tokens + n
    return {**generation_metrics(references, predictions, loss_sum, n_tokens), "predictions": predictions}


def rewarded(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    prompts: list[str],
    task: Task,
    result: dict[str, Any],
    reward: Reward,
) -> dict[str, Any]:
    """The reward of a system's answers to the held-out prompts: its generated answers, its predicted labels or
    choices, or, for preference pairs (where it only ranked answers), greedy answers generated for the purpose.

    The reward sees each row's own conversation as the prompt, not the system's few-shot or retrieved context.
    """
    from specialize.train import Scored, prompt_of, score_answers

    extra: dict[str, Any] = {}
    if task == Task.PREFERENCE:
        from specialize.models.generation import generate_batch

        budgets = [min(512, len(tokenizer(r["chosen"][-1]["content"])["input_ids"]) * 2 + 16) for r in rows]
        answers = generate_batch(model, tokenizer, prompts, budgets, batch_size=GENERATE_BATCH)
        extra["answers"] = answers
    else:
        answers = [str(a) for a in result["predictions"]]
    rewards = score_answers(reward, [Scored(prompt_of(r), a, r) for r, a in zip(rows, answers, strict=True)])
    return {"reward": statistics.fmean(rewards), "rewards": rewards, **extra}


def free_answers(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], prompts: list[str], labels: list[str]
) -> dict[str, Any]:
    """Answers decoded freely (greedy, batched) next to the label-scored ones, and how many name no label."""
    from specialize.evaluate.metrics import free_answer_metrics
    from specialize.models.generation import generate_batch

    budget = max(len(tokenizer(label)["input_ids"]) for label in labels) + 4
    answers = generate_batch(model, tokenizer, prompts, budget, batch_size=GENERATE_BATCH)
    return {**free_answer_metrics([r["label"] for r in rows], answers, labels), "free_answers": answers}


def perplexity(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], context: int, progress: bool
) -> dict[str, Any]:
    """Perplexity on held-out documents (continued pre-training): exp of the mean token cross-entropy.

    A document longer than the context is scored in consecutive windows of the context length.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from specialize.data import encode_text

    per_document = []
    for row in tqdm(rows, desc="perplexity", unit="doc", disable=not progress, dynamic_ncols=True):
        ids = encode_text(tokenizer, row["text"]).input_ids
        total = 0.0
        for start in range(0, len(ids) - 1, context):
            window = torch.tensor([ids[start : start + context + 1]], device=model.device)
            with torch.no_grad():
                logits = model(input_ids=window[:, :-1]).logits[0].float()
            total += F.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        per_document.append((total, len(ids) - 1))
    loss = sum(t for t, _ in per_document) / max(sum(n for _, n in per_document), 1)
    return {
        "perplexity": math.exp(loss),
        "loss": loss,
        "tokens": sum(n for _, n in per_document),
        "per_document": per_document,
    }

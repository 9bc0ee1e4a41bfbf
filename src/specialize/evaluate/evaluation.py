"""Evaluation: the fine-tuned model side by side with every cheaper alternative, on the same examples.

Reads the prepared splits and the trained adapter of a run, writes `eval/report.json` (metrics and predictions of
every system) and `eval/report.html` (plots). The systems: the base model zero-shot, few-shot (solved training
examples, drawn at random or the most similar) and with retrieval (`base_rag`: the most similar training
examples, or passages of `eval.rag_documents`), the fine-tuned model, and the fine-tuned model with the same
retrieved context (`fine_tuned_rag`). Every system answers the same validation examples, so the comparison is
paired. The base model is the fine-tuned model with its adapter switched off: one model in memory.

Tasks: classification (a label per row; scored over the label set), multiple choice (a `choices` list per row,
the answer being one of them; scored over that row's choices) and generation (greedy answers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.config import EvalConfig
from specialize.data import read_prepared
from specialize.data.split import seeded_sample
from specialize.errors import EvalError
from specialize.evaluate.prompts import fitting_prompt
from specialize.evaluate.retrieval import Retriever, document_passages, question_text
from specialize.runs import write_atomic

log = logging.getLogger(__name__)

GENERATE_BATCH = 16  # answers decoded together; on a CPU, more rows per step stop paying beyond this
EVAL_BATCH = 4  # prompts scored together; bounds the label-expanded cache to a few hundred MB
# System -> (runs on the fine-tuned weights, context in its prompt).
SYSTEMS: dict[str, tuple[bool, str | None]] = {
    "base_zero_shot": (False, None),
    "base_few_shot": (False, "few_shot"),
    "base_rag": (False, "rag"),
    "fine_tuned": (True, None),
    "fine_tuned_rag": (True, "rag"),
}


@dataclass(frozen=True)
class EvalReport:
    """Metrics of each evaluated system, the metric they are ranked by, and where the report was written."""

    task: str
    metrics: dict[str, dict[str, Any]]
    n_examples: int
    report_path: Path
    headline: str


def evaluate(
    config: EvalConfig,
    model_path: Path,
    adapter_path: Path | None,
    train_file: Path,
    validation_file: Path,
    out_dir: Path,
    labels: list[str] | None,
    seed: int = 0,
    on_metrics: Callable[[str, dict[str, float]], None] | None = None,
    progress: bool = True,
    train_dir: Path | None = None,
) -> EvalReport:
    """Evaluate each configured system on the validation split.

    Args:
        config: the `eval:` section.
        model_path: the base model directory.
        adapter_path: the trained adapter (None when only base systems are asked for).
        train_file: prepared training split; few-shot and retrieved examples come from it, never from validation.
        validation_file: the examples to evaluate on.
        out_dir: the run's `eval/` directory.
        labels: the label set of a classification task, None otherwise.
        seed: seeds the sample of examples and the random few-shot draw.
        on_metrics: called with (system, headline metrics) as each system finishes.
        progress: show a progress bar.
        train_dir: the run's `train/` directory; its losses tell whether the model overfitted.

    Returns:
        The metrics of every system.
    """
    from specialize.evaluate.metrics import per_example_scores
    from specialize.evaluate.overfitting import overfitting
    from specialize.evaluate.significance import compare_systems, perplexity_intervals
    from specialize.models import load_model

    systems = list(config.systems)
    tuned_systems = [s for s in systems if SYSTEMS[s][0]]
    if tuned_systems and adapter_path is None:
        raise EvalError(
            f"eval.systems lists {', '.join(tuned_systems)} but the run has no trained model; train it first"
        )
    rows = read_prepared(validation_file)
    if config.max_examples is not None:
        rows = seeded_sample(rows, config.max_examples, seed)
    task = _task(rows, labels, validation_file)
    shots = read_prepared(train_file)
    model, tokenizer = load_model(model_path)
    tuned = None
    if adapter_path is not None and (adapter_path / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    elif adapter_path is not None:
        tuned = load_model(adapter_path)[0].eval()
    model.eval()
    context = getattr(model.config, "max_position_embeddings", 2048)
    prompts = _SystemPrompts(config, tokenizer, rows, shots, context, seed)
    results: dict[str, dict[str, Any]] = {}
    done: dict[tuple[bool, tuple[str, ...]], str] = {}
    for system in systems:
        on_tuned, kind = SYSTEMS[system]
        if task == "text":
            if kind is not None:
                log.info(
                    "%s skipped: held-out text has no question to put examples or passages before", system
                )
                continue
            use = tuned if on_tuned and tuned is not None else model
            with (
                model.disable_adapter()
                if not on_tuned and hasattr(model, "disable_adapter")
                else contextlib.nullcontext()
            ):
                results[system] = _perplexity(use, tokenizer, rows, context, progress)
            if on_metrics:
                on_metrics(system, {"perplexity": results[system]["perplexity"]})
            continue
        system_prompts, sources = prompts.for_context(kind)
        same = done.get((on_tuned, tuple(system_prompts)))
        if same is not None:  # e.g. similarity few-shot and RAG over training examples: identical prompts
            log.info("%s sees the same prompts as %s; its answers are reused", system, same)
            results[system] = dict(results[same])
        else:
            use = tuned if on_tuned and tuned is not None else model
            # PEFT injects the adapter into the base modules in place: base systems run on the same model with
            # the adapter switched off, never on a second reference to the "base" object.
            switch_off = not on_tuned and hasattr(model, "disable_adapter")
            with model.disable_adapter() if switch_off else contextlib.nullcontext():
                results[system] = _run_system(
                    system, use, tokenizer, rows, system_prompts, task, labels, progress
                )
                if config.free_answers and task == "classification" and labels:
                    results[system].update(_free_answers(use, tokenizer, rows, system_prompts, labels))
            done[(on_tuned, tuple(system_prompts))] = system
        if kind is not None:
            results[system]["context"] = sources
        headline = {m: v for m, v in results[system].items() if isinstance(v, float)}
        log.info("%s: %s", system, ", ".join(f"{m}={v:.3f}" for m, v in headline.items()))
        if on_metrics:
            on_metrics(system, headline)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = _headline(task, results)
    gold = [_gold(row, task) for row in rows] if task != "text" else []
    if task == "text":
        significance = perplexity_intervals({s: m.pop("per_document") for s, m in results.items()}, seed)
    elif task == "classification":
        significance = compare_systems(gold, {s: m["predictions"] for s, m in results.items()}, labels, seed)
    else:
        scores = {s: per_example_scores(task, name, gold, m["predictions"]) for s, m in results.items()}
        significance = compare_systems(None, scores, None, seed)
    report = {
        "task": task,
        "headline": name,
        "labels": labels if task == "classification" else None,
        "n_examples": len(rows),
        "systems": results,
        "significance": significance,
        "overfitting": overfitting(train_dir) if train_dir is not None else None,
    }
    path = out_dir / "report.json"
    write_atomic(path, json.dumps(report, indent=2, ensure_ascii=False))
    return EvalReport(task, results, len(rows), path, name)


def _task(rows: list[dict[str, Any]], labels: list[str] | None, source: Path) -> str:
    """classification, multiple_choice or generation, from the label set and the rows' shape."""
    with_choices = [r for r in rows if "choices" in r]
    if with_choices and len(with_choices) < len(rows):
        without = next(r for r in rows if "choices" not in r)
        raise EvalError(
            f"{without.get('source', source)}: no 'choices' list, while {len(with_choices)} other rows have one; "
            "give every multiple-choice row its choices, or none"
        )
    for row in with_choices:
        choices, gold = row["choices"], _gold(row, "multiple_choice")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise EvalError(f"{row.get('source', source)}: 'choices' must be a list of at least two strings")
        if gold not in choices:
            raise EvalError(
                f"{row.get('source', source)}: the answer {gold!r} is not one of its choices {choices}; make the "
                "assistant answer (or label) exactly one of the choices"
            )
    if all("messages" not in r for r in rows):
        return "text"
    if any("messages" not in r for r in rows):
        raise EvalError(
            f"{source}: plain-text rows mixed with chat rows; evaluate each kind from its own file"
        )
    if all("rejected" in r for r in rows):
        return "preference"
    return "multiple_choice" if with_choices else "classification" if labels else "generation"


def _gold(row: dict[str, Any], task: str) -> str:
    if task == "preference":
        return "chosen"
    if task == "classification" or (task == "multiple_choice" and row.get("label") is not None):
        return str(row["label"])
    return str(row["messages"][-1]["content"])


def _headline(task: str, results: dict[str, dict[str, Any]]) -> str:
    """The metric systems are ranked by: macro-F1 (every label counts), accuracy over choices, and for
    generation the final number when every reference has one (math), else exact match."""
    if task == "classification":
        return "macro_f1"
    if task == "multiple_choice":
        return "accuracy"
    if task == "preference":
        return "preference_accuracy"
    if task == "text":
        return "perplexity"
    return "numeric_match" if all("numeric_match" in m for m in results.values()) else "exact_match"


class _SystemPrompts:
    """The prompts of each kind of context, built once and shared by the systems that use them.

    Alongside each prompt: where its context came from (the `source` of each training example, or `file#n` of
    each passage), so a report shows what a retrieval system was given and that it never saw the question.
    """

    def __init__(
        self,
        config: EvalConfig,
        tokenizer: Any,
        rows: list[dict[str, Any]],
        shots: list[dict[str, Any]],
        context: int,
        seed: int,
    ) -> None:
        self.config, self.tokenizer, self.rows, self.shots = config, tokenizer, rows, shots
        self.context, self.seed = context, seed
        self._built: dict[str | None, tuple[list[str], list[list[str]]]] = {}

    def for_context(self, kind: str | None) -> tuple[list[str], list[list[str]]]:
        if kind not in self._built:
            self._built[kind] = self._build(kind)
        return self._built[kind]

    def _build(self, kind: str | None) -> tuple[list[str], list[list[str]]]:
        config = self.config
        documents = config.rag_documents if kind == "rag" else None
        passages = documents is not None
        if kind is None:
            chosen: list[list[Any]] = [[] for _ in self.rows]
        elif kind == "few_shot" and config.few_shot_selection == "random":
            # One seeded draw serves every question (the usual k-shot protocol); identical demonstrations also
            # make the prompts share a long prefix that is computed once.
            drawn = random.Random(self.seed).sample(self.shots, min(config.few_shot_k, len(self.shots)))
            chosen = [drawn for _ in self.rows]
        else:
            pool: list[Any] = document_passages(documents) if documents is not None else self.shots
            index = Retriever([p.text for p in pool] if passages else [question_text(s) for s in pool])
            k = config.few_shot_k if kind == "few_shot" else config.rag_k
            # Least similar first: the most similar item sits next to the question and is the last to be cut.
            chosen = [[pool[i] for i in reversed(index.search(question_text(row), k))] for row in self.rows]
        prompts, sources = [], []
        for row, items in zip(self.rows, chosen, strict=True):
            prompt, used = fitting_prompt(self.tokenizer, row, items, self.context, passages=passages)
            prompts.append(prompt)
            sources.append([item.source if passages else str(item.get("source", "")) for item in used])
        return prompts, sources


def _perplexity(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], context: int, progress: bool
) -> dict[str, Any]:
    """Perplexity on held-out documents (continued pre-training): exp of the mean token cross-entropy.

    A document longer than the context is scored in consecutive windows of the context length.
    """
    import math

    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from specialize.data import encode_text

    per_document = []
    for row in tqdm(rows, desc="perplexity", unit="doc", disable=not progress, dynamic_ncols=True):
        ids = encode_text(tokenizer, row["text"]).input_ids
        total = 0.0
        for start in range(0, len(ids) - 1, context):
            window = torch.tensor([ids[start : start + context + 1]])
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


def _free_answers(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], prompts: list[str], labels: list[str]
) -> dict[str, Any]:
    """Answers decoded freely (greedy, batched) next to the label-scored ones, and how many name no label."""
    from specialize.evaluate.metrics import free_answer_metrics
    from specialize.models.generation import generate_batch

    budget = max(len(tokenizer(label)["input_ids"]) for label in labels) + 4
    answers = generate_batch(model, tokenizer, prompts, budget, batch_size=GENERATE_BATCH)
    return {**free_answer_metrics([r["label"] for r in rows], answers, labels), "free_answers": answers}


def _run_system(
    system: str,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    prompts: list[str],
    task: str,
    labels: list[str] | None,
    progress: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from specialize.evaluate.metrics import classification_metrics, generation_metrics
    from specialize.evaluate.scoring import (
        SharedPrefix,
        answer_loss,
        label_token_ids,
        pick_labels,
        score_labels,
    )
    from specialize.models.generation import generate_batch

    predictions: list[str] = []
    loss_sum, n_tokens = 0.0, 0
    bar = tqdm(total=len(rows), desc=system, unit="ex", disable=not progress, dynamic_ncols=True)
    if task == "classification" and labels:
        predictions = pick_labels(model, tokenizer, prompts, labels, EVAL_BATCH, progress=bar.update)
    elif task == "multiple_choice":  # each row has its own choices, so each is scored alone after the prefix
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        prefix = SharedPrefix(model, encoded)
        for row, ids in zip(rows, encoded, strict=True):
            choices = row["choices"]
            [scores] = score_labels(
                model, prefix, [ids], label_token_ids(tokenizer, choices), tokenizer.pad_token_id
            )
            predictions.append(choices[max(range(len(choices)), key=scores.__getitem__)])
            bar.update(1)
    elif task == "preference":
        # Which answer of the pair does the system find more likely after its prompt, the one people preferred?
        # Per token, so that a short answer does not win on length alone (summed log-likelihoods favour it).
        for row, prompt in zip(rows, prompts, strict=True):
            chosen, n_chosen = answer_loss(model, tokenizer, prompt, row["chosen"][-1]["content"])
            rejected, n_rejected = answer_loss(model, tokenizer, prompt, row["rejected"][-1]["content"])
            predictions.append("chosen" if chosen / n_chosen < rejected / n_rejected else "rejected")
            bar.update(1)
    else:
        references = [row["messages"][-1]["content"] for row in rows]
        budgets = [min(512, len(tokenizer(r)["input_ids"]) * 2 + 16) for r in references]
        predictions = generate_batch(
            model, tokenizer, prompts, budgets, batch_size=GENERATE_BATCH, progress=bar.update
        )
        for prompt, reference in zip(prompts, references, strict=True):
            loss, n = answer_loss(model, tokenizer, prompt, reference)
            loss_sum, n_tokens = loss_sum + loss, n_tokens + n
    bar.close()
    gold = [_gold(row, task) for row in rows]
    if task == "classification" and labels:
        metrics = classification_metrics(gold, predictions, labels)
    elif task == "multiple_choice":
        metrics = {"accuracy": sum(g == p for g, p in zip(gold, predictions, strict=True)) / len(rows)}
    elif task == "preference":
        metrics = {"preference_accuracy": predictions.count("chosen") / len(rows)}
    else:
        metrics = generation_metrics(gold, predictions, loss_sum, n_tokens)
    metrics["predictions"] = predictions
    return metrics

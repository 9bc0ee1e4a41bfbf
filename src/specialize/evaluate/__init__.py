"""Evaluation: the fine-tuned model side by side with the base model zero-shot and few-shot.

Reads the prepared splits and the trained adapter of a run, writes `eval/report.json` (metrics and predictions of
every system) and `eval/report.html` (plots). Every system answers the same validation examples, so the
comparison is paired. The base model is the fine-tuned model with its adapter switched off: one model in memory.
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
from specialize.data import read_prepared, render_prompt
from specialize.data.split import seeded_sample
from specialize.errors import EvalError
from specialize.runs import write_atomic

log = logging.getLogger(__name__)

EVAL_BATCH = 4  # prompts scored together; bounds the label-expanded cache to a few hundred MB
HEADLINE = {"classification": "macro_f1", "generation": "exact_match"}


@dataclass(frozen=True)
class EvalReport:
    """Metrics of each evaluated system, and where the report was written."""

    task: str
    metrics: dict[str, dict[str, Any]]
    n_examples: int
    report_path: Path

    @property
    def headline(self) -> str:
        return HEADLINE[self.task]


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
) -> EvalReport:
    """Evaluate each configured system on the validation split.

    Args:
        config: the `eval:` section.
        model_path: the base model directory.
        adapter_path: the trained adapter (None when only base systems are asked for).
        train_file: prepared training split; few-shot examples are drawn from it, never from validation.
        validation_file: the examples to evaluate on.
        out_dir: the run's `eval/` directory.
        labels: the label set of a classification task, None for generation.
        seed: seeds the sample of examples and the few-shot draws.
        on_metrics: called with (system, headline metrics) as each system finishes.
        progress: show a progress bar.

    Returns:
        The metrics of every system.
    """
    from specialize.evaluate.metrics import normalise_answer
    from specialize.evaluate.significance import compare_systems
    from specialize.models import load_model

    systems = list(config.systems)
    if "fine_tuned" in systems and adapter_path is None:
        raise EvalError("eval.systems lists fine_tuned but the run has no trained model; train it first")
    rows = read_prepared(validation_file)
    if config.max_examples is not None:
        rows = seeded_sample(rows, config.max_examples, seed)
    shots = read_prepared(train_file)
    model, tokenizer = load_model(model_path)
    tuned = None
    if adapter_path is not None and (adapter_path / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    elif adapter_path is not None:
        tuned = load_model(adapter_path)[0].eval()
    model.eval()
    task = "classification" if labels else "generation"
    results: dict[str, dict[str, Any]] = {}
    for system in systems:
        k = config.few_shot_k if system == "base_few_shot" else 0
        use = tuned if system == "fine_tuned" and tuned is not None else model
        # PEFT injects the adapter into the base modules in place: base systems run on the same model with the
        # adapter switched off, never on a second reference to the "base" object.
        switch_off = system != "fine_tuned" and hasattr(model, "disable_adapter")
        with model.disable_adapter() if switch_off else contextlib.nullcontext():
            results[system] = _run_system(system, use, tokenizer, rows, shots, k, labels, seed, progress)
        headline = {m: v for m, v in results[system].items() if isinstance(v, float)}
        log.info("%s: %s", system, ", ".join(f"{m}={v:.3f}" for m, v in headline.items()))
        if on_metrics:
            on_metrics(system, headline)
    out_dir.mkdir(parents=True, exist_ok=True)
    if labels:
        gold = [r["label"] for r in rows]
        answers = {s: m["predictions"] for s, m in results.items()}
    else:
        gold = [normalise_answer(r["messages"][-1]["content"]) for r in rows]
        answers = {s: [normalise_answer(p) for p in m["predictions"]] for s, m in results.items()}
    report = {
        "task": task,
        "labels": labels,
        "n_examples": len(rows),
        "systems": results,
        "significance": compare_systems(gold, answers, labels, seed),
    }
    path = out_dir / "report.json"
    write_atomic(path, json.dumps(report, indent=2, ensure_ascii=False))
    return EvalReport(task, results, len(rows), path)


def few_shot_messages(row: dict[str, Any], shots: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The row's conversation up to its last user turn, preceded by solved training examples as earlier turns."""
    messages = row["messages"][:-1]
    system = [m for m in messages[:1] if m["role"] == "system"]
    examples = [m for shot in shots for m in shot["messages"] if m["role"] != "system"]
    return system + examples + messages[len(system) :]


def _fitting_prompt(tokenizer: Any, row: dict[str, Any], shots: list[dict[str, Any]], context: int) -> str:
    """The few-shot prompt with as many of `shots` as fit the model's context, leaving room for the answer."""
    shots = list(shots)
    while True:
        prompt = render_prompt(tokenizer, few_shot_messages(row, shots))
        if not shots or len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= context - 64:
            return prompt
        shots.pop(0)


def _run_system(
    system: str,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    shots: list[dict[str, Any]],
    k: int,
    labels: list[str] | None,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from specialize.evaluate.metrics import classification_metrics, generation_metrics
    from specialize.evaluate.scoring import (
        SharedPrefix,
        answer_loss,
        generate_answer,
        label_token_ids,
        score_labels,
    )

    # One seeded draw of k solved examples serves every question (the usual k-shot protocol); identical
    # demonstrations also make the prompts share a long prefix that is computed once.
    demonstrations = random.Random(seed).sample(shots, min(k, len(shots)))
    context = getattr(model.config, "max_position_embeddings", 2048)
    prompts = [_fitting_prompt(tokenizer, row, demonstrations, context) for row in rows]
    label_ids = label_token_ids(tokenizer, labels) if labels else []
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts] if labels else []
    prefix = SharedPrefix(model, encoded) if labels else None
    predictions, loss_sum, n_tokens = [], 0.0, 0
    bar = tqdm(total=len(rows), desc=system, unit="ex", disable=not progress, dynamic_ncols=True)
    if labels and prefix is not None:
        for start in range(0, len(rows), EVAL_BATCH):
            batch = encoded[start : start + EVAL_BATCH]
            for scores in score_labels(model, prefix, batch, label_ids, tokenizer.pad_token_id):
                predictions.append(labels[max(range(len(labels)), key=scores.__getitem__)])
            bar.update(len(batch))
    else:
        for row, prompt in zip(rows, prompts, strict=True):
            reference = row["messages"][-1]["content"]
            budget = min(512, len(tokenizer(reference)["input_ids"]) * 2 + 16)
            predictions.append(generate_answer(model, tokenizer, prompt, budget))
            loss, n = answer_loss(model, tokenizer, prompt, reference)
            loss_sum, n_tokens = loss_sum + loss, n_tokens + n
            bar.update(1)
    bar.close()
    if labels:
        metrics = classification_metrics([r["label"] for r in rows], predictions, labels)
    else:
        metrics = generation_metrics(
            [r["messages"][-1]["content"] for r in rows], predictions, loss_sum, n_tokens
        )
    metrics["predictions"] = predictions
    return metrics

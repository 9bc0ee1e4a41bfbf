"""`specialize parity`: how close a fine-tuned run comes to the model it replaces, on that model's own answers.

Reads a JSONL of recorded exchanges of the replaced model (`{"messages": [..., {"role": "assistant", "content":
<its answer>}]}`, a `label` next to them for classification), lets the run answer every conversation greedily
(batched, `generate_batch`) and scores its answers against the recorded ones: exact match, token-level F1 and
ROUGE-L. For a classification run the run's label is the one of highest raw log-probability over the label set
(the `raw` variant of its own evaluation), compared with the row's `label` (or, without one, the recorded answer). Writes
`eval/parity-<file stem>.json` (metrics and every answer), records the metrics in the registry as stage
`parity:<file stem>`, and returns them next to the run's held-out evaluation from `eval/report.json`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.data import read_chat_jsonl, render_prompt, with_system
from specialize.errors import RunNotFoundError
from specialize.runs import open_run, write_atomic

MAX_ANSWER_TOKENS = 512


@dataclass(frozen=True)
class ParityReport:
    """The run's agreement with the recorded answers, and its own held-out evaluation."""

    run_id: str
    reference: Path
    task: str
    n_examples: int
    metrics: dict[str, float]
    held_out: dict[str, float]  # the fine-tuned system's metrics in eval/report.json
    report_path: Path


def compare_parity(run: str, reference: Path, registry_url: str | None = None) -> ParityReport:
    """Score a finished run's greedy answers against the recorded answers of the model it replaces.

    Args:
        run: a run id in the registry, or the path of a run directory.
        reference: chat JSONL of recorded exchanges, each ending with the replaced model's answer.
        registry_url: the registry holding the run (default: the one named in the run's config).

    Raises:
        DataError: lines of `reference` that are not chat rows ending with an assistant answer, all listed.
        RunNotFoundError: the run has no trained adapter or evaluation yet.
    """
    from peft import PeftModel

    from specialize.evaluate.answers import EVAL_BATCH
    from specialize.evaluate.metrics import normalise_answer
    from specialize.evaluate.scoring import pick_labels
    from specialize.models import load_model, resolve_model
    from specialize.models.generation import generate_batch

    run_dir, config, registry = open_run(run, registry_url)
    adapter, eval_report = run_dir.train / "adapter", run_dir.eval / "report.json"
    if not (adapter / "adapter_config.json").is_file() or not eval_report.is_file():
        raise RunNotFoundError(
            f"run {run_dir.id} has no trained adapter and evaluation yet; finish it with "
            f"`specialize train --resume {run_dir.id}` (a full fine-tune: export it and compare that)"
        )
    examples = read_chat_jsonl(reference, config.data.label_field)
    held = json.loads(eval_report.read_text(encoding="utf-8"))
    labels: list[str] | None = held.get("labels")
    model, tokenizer = load_model(resolve_model(config.base_model))
    model = PeftModel.from_pretrained(model, adapter).eval()
    system = config.data.system_prompt
    prompts = [
        render_prompt(tokenizer, with_system(e.prompt, system) if system else e.prompt) for e in examples
    ]
    recorded = [e.messages[-1]["content"] for e in examples]
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in recorded)
    answers = generate_batch(model, tokenizer, prompts, min(MAX_ANSWER_TOKENS, 2 * longest + 16))
    metrics = {
        "exact_match": _mean(
            normalise_answer(a) == normalise_answer(r) for a, r in zip(answers, recorded, strict=True)
        ),
        "token_f1": _mean(_token_f1(a, r) for a, r in zip(answers, recorded, strict=True)),
        "rouge_l": _rouge_l(answers, recorded),
    }
    predicted: list[str] = []
    if labels:
        predicted = pick_labels(model, tokenizer, prompts, labels, EVAL_BATCH)
        gold = [e.label if e.label is not None else r for e, r in zip(examples, recorded, strict=True)]
        metrics["label_accuracy"] = _mean(
            normalise_answer(p) == normalise_answer(g) for p, g in zip(predicted, gold, strict=True)
        )
    fine_tuned = held["systems"].get("fine_tuned", {})
    held_out = {k: float(v) for k, v in fine_tuned.items() if isinstance(v, float | int)}
    stem = reference.stem
    path = run_dir.eval / f"parity-{stem}.json"
    rows: list[dict[str, str]] = [
        {"recorded": r, "answer": a} for r, a in zip(recorded, answers, strict=True)
    ]
    for row, label in zip(rows, predicted, strict=False):  # no labels: nothing to add
        row["label"] = label
    doc = {"reference": str(reference), "n_examples": len(examples), "metrics": metrics, "answers": rows}
    write_atomic(path, json.dumps(doc, indent=2, ensure_ascii=False))
    registry.log_metrics(run_dir.id, f"parity:{stem}", metrics, system="fine_tuned")
    task = "classification" if labels else "generation"
    return ParityReport(run_dir.id, reference, task, len(examples), metrics, held_out, path)


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def _token_f1(answer: str, recorded: str) -> float:
    """SQuAD's token F1: overlap of the normalised words, as a bag."""
    from specialize.evaluate.metrics import normalise_answer

    a, r = normalise_answer(answer).split(), normalise_answer(recorded).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _rouge_l(answers: list[str], recorded: list[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of words), by the `rouge-score` package."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return _mean(scorer.score(r, a)["rougeL"].fmeasure for a, r in zip(answers, recorded, strict=True))

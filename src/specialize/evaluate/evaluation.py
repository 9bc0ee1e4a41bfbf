"""Evaluation: the fine-tuned model side by side with every cheaper alternative, on the same examples.

Reads the prepared splits and the trained adapter of a run, writes `eval/report.json` (metrics, predictions and
label scores of every system) which `report.py` renders as `eval/report.html`. The systems (`systems.SYSTEMS`):
the base model zero-shot, few-shot (solved training examples, drawn at random or the most similar) and with
retrieval (`base_rag`: the most similar training examples, or passages of `eval.rag_documents`), the fine-tuned
model, and the fine-tuned model with the same retrieved context (`fine_tuned_rag`). Every system answers the same
validation examples, so the comparison is paired. The base model is the fine-tuned model with its adapter
switched off: one model in memory.

Tasks (`systems.Task`): classification (a label per row; scored over the label set), multiple choice (a `choices`
list per row, the answer being one of them; scored over that row's choices), generation (greedy answers),
preference pairs and held-out text. Label scores are kept under every variant of `calibration.Scoring`; each
system is reported under `eval.scoring` (`best`: its best variant on the validation split).

With a `reward:` (the run's reward, `train.rewards`), every system's answers to the held-out prompts are also
scored by it (`reward`, with its interval). A reward model's own run (`train.method: reward`) is evaluated on its
pairs: its fine-tuned system ranks each pair by the reward head, the base systems by likelihood.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specialize.config import EvalConfig
from specialize.data import read_prepared
from specialize.data.split import seeded_sample
from specialize.errors import EvalError
from specialize.evaluate.answers import EVAL_BATCH, GENERATE_BATCH, gold_answer
from specialize.evaluate.calibration import BEST, LabelScores, Scoring, choose, score_variants
from specialize.evaluate.memo import AnswerMemo
from specialize.evaluate.prompts import SystemPrompts
from specialize.evaluate.sampling import stratified_sample
from specialize.evaluate.systems import SYSTEMS, Prompting, System, Task
from specialize.runs import write_atomic

if TYPE_CHECKING:
    from specialize.train import Reward

log = logging.getLogger(__name__)

__all__ = ["EVAL_BATCH", "GENERATE_BATCH", "REPORT_SCHEMA", "EvalReport", "evaluate"]

# report.json's layout and definitions. 2: macro averages over the labels present in the examples evaluated (1
# averaged over the whole label set); gold answers, label scores and scoring variants kept.
REPORT_SCHEMA = 2
DEFINITIONS = {
    "macro": "mean over the labels present in the gold answers or the predictions of the examples evaluated "
    "(scikit-learn without labels=, zero_division=0); labels_averaged counts them",
    "intervals": "95% percentile interval of the same statistic over bootstrap resamples of the examples, the same "
    "resamples for every system, so that differences are paired",
}


@dataclass(frozen=True)
class EvalReport:
    """Metrics of each evaluated system, the metric they are ranked by, and where the report was written."""

    task: Task
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
    scoring_choice: Mapping[str, str] | None = None,
    reward: Reward | None = None,
) -> EvalReport:
    """Evaluate each configured system on the validation split (or another file of examples).

    Args:
        config: the `eval:` section.
        model_path: the base model directory.
        adapter_path: the trained adapter (None when only base systems are asked for).
        train_file: prepared training split; few-shot and retrieved examples come from it, never from validation.
        validation_file: the examples to evaluate on.
        out_dir: the run's `eval/` directory.
        labels: the label set of a classification task, None otherwise.
        seed: seeds the sample of examples, the random few-shot draw and the bootstrap.
        on_metrics: called with (system, headline metrics) as each system finishes.
        progress: show a progress bar.
        train_dir: the run's `train/` directory; its losses tell whether the model overfitted.
        scoring_choice: each system's scoring variant as chosen on the run's validation split (see
            `report.recorded_scoring`); with `eval.scoring: best` a test file is scored with it rather than
            choosing again on the test examples. None: choose on these examples (they are the validation split).
        reward: scores every system's answers to the held-out prompts (`reward` in each system's metrics).

    Returns:
        The metrics of every system.
    """
    from specialize.evaluate.overfitting import overfitting
    from specialize.evaluate.significance import compare_systems, perplexity_intervals

    systems = [SYSTEMS[name] for name in config.systems]
    tuned_systems = [s.name for s in systems if s.fine_tuned]
    if tuned_systems and adapter_path is None:
        raise EvalError(
            f"eval.systems lists {', '.join(tuned_systems)} but the run has no trained model; train it first"
        )
    rows = read_prepared(validation_file)
    if rows and all("desirable" in r for r in rows):
        # Rated answers (KTO's feedback rows): the good ones are references to answer like; the bad are not.
        rows = [r for r in rows if r["desirable"]] or rows
    rows, excluded = _without_excluded(rows, config.exclude_examples)
    task = _task(rows, labels, validation_file)
    available = len(rows)
    if config.max_examples is not None and task == Task.CLASSIFICATION:
        rows = stratified_sample(rows, [r.get("label") for r in rows], config.max_examples, seed)
    elif config.max_examples is not None:
        rows = seeded_sample(rows, config.max_examples, seed)
    runner = _Runner(
        config,
        model_path,
        adapter_path,
        train_file,
        rows,
        task,
        labels,
        seed,
        progress,
        scoring_choice,
        reward,
    )
    results: dict[str, dict[str, Any]] = {}
    done: dict[tuple[bool, tuple[str, ...]], str] = {}
    for system in systems:
        if task == Task.TEXT:
            if system.prompting != Prompting.ZERO_SHOT:
                log.info(
                    "%s skipped: held-out text has no question to put examples or passages before",
                    system.name,
                )
                continue
            results[system.name] = runner.perplexity(system)
            if on_metrics:
                on_metrics(system.name, {"perplexity": results[system.name]["perplexity"]})
            continue
        if runner.ranker is not None and system.fine_tuned and system.prompting != Prompting.ZERO_SHOT:
            log.info(
                "%s skipped: a reward model scores prompt and answer, with no context before them",
                system.name,
            )
            continue
        prompts, sources = runner.prompts.for_context(system.prompting)
        same = done.get((system.fine_tuned, tuple(prompts)))
        if same is not None:  # e.g. similarity few-shot and RAG over training examples: identical prompts
            log.info("%s sees the same prompts as %s; its answers are reused", system.name, same)
            results[system.name] = dict(results[same])
            runner.reuse(system.name, same)
        else:
            results[system.name] = runner.answer(system, prompts)
            done[(system.fine_tuned, tuple(prompts))] = system.name
        if system.prompting != Prompting.ZERO_SHOT:
            results[system.name]["context"] = sources
        headline = {m: v for m, v in results[system.name].items() if isinstance(v, float)}
        log.info("%s: %s", system.name, ", ".join(f"{m}={v:.3f}" for m, v in headline.items()))
        if on_metrics:
            on_metrics(system.name, headline)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = _headline(task, results)
    gold = [gold_answer(row, task) for row in rows] if task != Task.TEXT else []
    if task == Task.TEXT:
        significance = perplexity_intervals({s: m.pop("per_document") for s, m in results.items()}, seed)
    elif task == Task.CLASSIFICATION:
        significance = compare_systems(gold, {s: m["predictions"] for s, m in results.items()}, labels, seed)
    else:
        significance = compare_systems(
            None, {s: _per_example(task, name, gold, m) for s, m in results.items()}, None, seed
        )
    report = {
        "schema": REPORT_SCHEMA,
        "task": str(task),
        "headline": name,
        "labels": labels if task == Task.CLASSIFICATION else None,
        "n_examples": len(rows),
        "sample": _sample(rows, available, config.max_examples, task, labels, excluded),
        "definitions": DEFINITIONS
        if task == Task.CLASSIFICATION
        else {"intervals": DEFINITIONS["intervals"]},
        "gold": gold if task.scores_labels else None,
        "systems": results,
        "scoring": runner.scoring_section(gold) if task.scores_labels else None,
        "significance": significance,
        "overfitting": overfitting(train_dir) if train_dir is not None else None,
        "answers_kept_from_earlier_runs": runner.reused,
    }
    path = out_dir / "report.json"
    write_atomic(path, json.dumps(report, indent=2, ensure_ascii=False))
    return EvalReport(task, results, len(rows), path, name)


class _Runner:
    """The loaded model and the prompts, and every system's label scores under each scoring variant."""

    def __init__(
        self,
        config: EvalConfig,
        model_path: Path,
        adapter_path: Path | None,
        train_file: Path,
        rows: list[dict[str, Any]],
        task: Task,
        labels: list[str] | None,
        seed: int,
        progress: bool,
        fixed: Mapping[str, str] | None,
        reward: Reward | None = None,
    ) -> None:
        from specialize.models import for_inference, load_model
        from specialize.train.reward_model import is_reward_model, load_reward_model

        model, self.tokenizer = load_model(model_path)
        self.tuned = None
        self.reward = reward
        self.ranker: Any = None  # a reward model's run: the fine-tuned system ranks pairs by its head
        if adapter_path is not None and is_reward_model(adapter_path):
            if task != Task.PREFERENCE:
                raise EvalError(
                    f"{adapter_path} is a reward model, which ranks preference pairs; evaluate it on pairs"
                )
            self.ranker = load_reward_model(model_path, adapter_path)[0]
        elif adapter_path is not None and (adapter_path / "adapter_config.json").exists():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_path)
        elif adapter_path is not None:
            self.tuned = for_inference(load_model(adapter_path)[0])
        self.model = for_inference(model)  # a CUDA GPU in bfloat16 where there is one
        self.memo = AnswerMemo(model_path, self.model)
        self.reused: list[str] = []  # base systems whose model outputs an earlier run kept
        self.context = getattr(model.config, "max_position_embeddings", 2048)
        self.config, self.rows, self.task, self.labels, self.seed = config, rows, task, labels, seed
        self.progress = progress
        self.prompts = SystemPrompts(
            config, self.tokenizer, rows, read_prepared(train_file), self.context, seed
        )
        self.fixed = fixed  # scoring variants recorded for the run, if a test file is scored
        self.scores: dict[str, list[LabelScores]] = {}
        self.chosen: dict[str, Scoring] = {}
        self.variants: dict[str, dict[Scoring, dict[str, Any]]] = {}

    @contextlib.contextmanager
    def weights(self, system: System) -> Any:
        """The model a system runs on. PEFT injects the adapter into the base modules in place: base systems run
        on the same model with the adapter switched off, never on a second reference to the "base" object."""
        if system.fine_tuned:
            yield self.tuned if self.tuned is not None else self.model
        elif hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model

    def perplexity(self, system: System) -> dict[str, Any]:
        from specialize.evaluate.answers import perplexity

        with self.weights(system) as model:
            return perplexity(model, self.tokenizer, self.rows, self.context, self.progress)

    def answer(self, system: System, prompts: list[str]) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from specialize.evaluate.answers import answer_freely, free_answers, rewarded, score_label_sets

        bar = tqdm(
            total=len(prompts), desc=system.name, unit="ex", disable=not self.progress, dynamic_ncols=True
        )
        if system.fine_tuned and self.ranker is not None:
            from specialize.train.reward_model import rank_pairs

            ranked = rank_pairs(self.ranker, self.tokenizer, self.rows, on_progress=bar.update)
            bar.close()
            predictions = ["chosen" if right else "rejected" for right in ranked]
            return {"preference_accuracy": sum(ranked) / len(ranked), "predictions": predictions}
        with self.weights(system) as model:
            if self.task.scores_labels:
                question_free = self.prompts.question_free(system.prompting)
                self.scores[system.name] = self._kept(
                    system,
                    "label-scores",
                    [prompts, question_free, self.labels, self.rows],
                    lambda: score_label_sets(
                        model, self.tokenizer, self.rows, prompts, question_free, self.labels, bar.update
                    ),
                    lambda groups: [g.to_json(exact=True) for g in groups],
                    lambda doc: [LabelScores.from_json(g) for g in doc],
                )
                result = self._variants(system.name)
            else:
                result = self._kept(
                    system,
                    "answers",
                    [prompts, self.rows, str(self.task)],
                    lambda: answer_freely(model, self.tokenizer, self.rows, prompts, self.task, bar.update),
                )
            labels = self.labels
            if self.config.free_answers and self.task == Task.CLASSIFICATION and labels:
                result.update(
                    self._kept(
                        system,
                        "free-answers",
                        [prompts, self.rows, labels],
                        lambda: free_answers(model, self.tokenizer, self.rows, prompts, labels),
                    )
                )
            if system.name in self.reused:
                bar.update(len(prompts))
            if self.reward is not None:
                result.update(
                    rewarded(model, self.tokenizer, self.rows, prompts, self.task, result, self.reward)
                )
        bar.close()
        if "rewards" in result:
            from specialize.evaluate.significance import interval, resampled_scores

            result["reward_interval"] = interval(resampled_scores(None, result["rewards"], None, self.seed))
        return result

    def _kept(
        self,
        system: System,
        what: str,
        inputs: Any,
        compute: Callable[[], Any],
        encode: Callable[[Any], Any] = lambda value: value,
        decode: Callable[[Any], Any] = lambda doc: doc,
    ) -> Any:
        """`compute()`, or for a base system the output an earlier run with the same model and inputs kept."""
        if system.fine_tuned:
            return compute()
        value, reused = self.memo.get(what, inputs, compute, encode, decode)
        if reused and system.name not in self.reused:
            log.info("%s: the base model's outputs kept by an earlier run with the same prompts", system.name)
            self.reused.append(system.name)
        return value

    def reuse(self, system: str, same: str) -> None:
        if same in self.scores:
            self.scores[system] = self.scores[same]
            self.variants[system], self.chosen[system] = self.variants[same], self.chosen[same]

    def _variants(self, system: str) -> dict[str, Any]:
        """Metrics under every variant, and the system's result under the one it is reported with."""
        gold = [gold_answer(row, self.task) for row in self.rows]
        classification = self.task == Task.CLASSIFICATION
        by_variant = score_variants(self.scores[system], gold, self.labels if classification else None)
        self.variants[system] = by_variant
        metric = "macro_f1" if classification and self.labels else "accuracy"
        if self.config.scoring != BEST:
            chosen = Scoring(self.config.scoring)
        elif self.fixed is not None:
            chosen = Scoring(self.fixed.get(system, Scoring.RAW))
        else:
            chosen = choose({v: m[metric] for v, m in by_variant.items()})
        self.chosen[system] = chosen
        log.info(
            "%s scored %s (%s)",
            system,
            chosen,
            ", ".join(f"{v} {m[metric]:.3f}" for v, m in by_variant.items()),
        )
        return {**by_variant[chosen], "scoring": str(chosen)}

    def scoring_section(self, gold: list[str]) -> dict[str, Any]:
        """`report.json`'s `scoring`: what was asked, what each system got, every variant with its interval (the
        same bootstrap resamples as the headline table), and the label scores they all come from."""
        from specialize.evaluate.significance import interval, resampled_scores

        if self.config.scoring != BEST:
            how = f"fixed by eval.scoring: {self.config.scoring}"
        elif self.fixed is not None:
            how = "recorded: chosen on the run's validation split"
        else:
            how = "chosen on this validation split"
        variants: dict[str, dict[str, Any]] = {}
        for system, by_variant in self.variants.items():
            variants[system] = {}
            for variant, m in by_variant.items():
                if self.task == Task.CLASSIFICATION:
                    value, scores = (
                        m["macro_f1"],
                        resampled_scores(gold, m["predictions"], self.labels, self.seed),
                    )
                    extra = {"labels_averaged": m["labels_averaged"], "collapse": m["collapse"]}
                else:
                    correct = [float(g == p) for g, p in zip(gold, m["predictions"], strict=True)]
                    value, scores, extra = m["accuracy"], resampled_scores(None, correct, None, self.seed), {}
                variants[system][str(variant)] = {"value": value, "interval": interval(scores), **extra}
        return {
            "requested": self.config.scoring,
            "chosen": {s: str(v) for s, v in self.chosen.items()},
            "how": how,
            "variants": variants,
            "label_scores": {s: [g.to_json() for g in groups] for s, groups in self.scores.items()},
        }


def _per_example(task: Task, headline: str, gold: list[str], metrics: dict[str, Any]) -> list[float]:
    from specialize.evaluate.metrics import per_example_scores

    return per_example_scores(task, headline, gold, metrics["predictions"])


def _without_excluded(rows: list[dict[str, Any]], exclude: Path | None) -> tuple[list[dict[str, Any]], int]:
    """The rows whose `source` is not among `exclude`'s rows (`eval.exclude_examples`), and how many were left
    out."""
    if exclude is None:
        return rows, 0
    if not exclude.is_file():
        raise EvalError(f"eval.exclude_examples: {exclude} does not exist; give a JSONL of prepared examples")
    left_out = {r.get("source") for r in read_prepared(exclude)}
    kept = [r for r in rows if r.get("source") not in left_out]
    if not kept:
        raise EvalError(
            f"eval.exclude_examples ({exclude}) leaves out every one of the {len(rows)} examples; nothing is left "
            "to evaluate on. Give a larger validation split, or exclude fewer examples."
        )
    return kept, len(rows) - len(kept)


def _sample(
    rows: list[dict[str, Any]],
    available: int,
    cap: int | None,
    task: Task,
    labels: list[str] | None,
    excluded: int = 0,
) -> dict[str, Any]:
    """Which examples were evaluated: all, or a sample (stratified by label for classification), how many were
    left out by `eval.exclude_examples` before it, and for classification how many labels of the set they cover."""
    method = "all" if cap is None or cap >= available else "stratified by label"
    if method != "all" and task != Task.CLASSIFICATION:
        method = "seeded random"
    out: dict[str, Any] = {"method": method, "examples": len(rows), "of": available}
    if excluded:
        out["excluded"] = excluded
    if task == Task.CLASSIFICATION and labels:
        out["labels_covered"] = len({r["label"] for r in rows} & set(labels))
        out["labels"] = len(labels)
    return out


def _task(rows: list[dict[str, Any]], labels: list[str] | None, source: Path) -> Task:
    """The task, from the label set and the rows' shape."""
    with_choices = [r for r in rows if "choices" in r]
    if with_choices and len(with_choices) < len(rows):
        without = next(r for r in rows if "choices" not in r)
        raise EvalError(
            f"{without.get('source', source)}: no 'choices' list, while {len(with_choices)} other rows have one; "
            "give every multiple-choice row its choices, or none"
        )
    for row in with_choices:
        choices, gold = row["choices"], gold_answer(row, Task.MULTIPLE_CHOICE)
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise EvalError(f"{row.get('source', source)}: 'choices' must be a list of at least two strings")
        if gold not in choices:
            raise EvalError(
                f"{row.get('source', source)}: the answer {gold!r} is not one of its choices {choices}; make the "
                "assistant answer (or label) exactly one of the choices"
            )
    if all("messages" not in r for r in rows):
        return Task.TEXT
    if any("messages" not in r for r in rows):
        raise EvalError(
            f"{source}: plain-text rows mixed with chat rows; evaluate each kind from its own file"
        )
    if all("rejected" in r for r in rows):
        return Task.PREFERENCE
    if with_choices:
        return Task.MULTIPLE_CHOICE
    return Task.CLASSIFICATION if labels else Task.GENERATION


def _headline(task: Task, results: dict[str, dict[str, Any]]) -> str:
    """The metric systems are ranked by: macro-F1 (every label counts), accuracy over choices, and for
    generation the final number when every reference has one (math), else exact match."""
    if task == Task.CLASSIFICATION:
        return "macro_f1"
    if task == Task.MULTIPLE_CHOICE:
        return "accuracy"
    if task == Task.PREFERENCE:
        return "preference_accuracy"
    if task == Task.TEXT:
        return "perplexity"
    return "numeric_match" if all("numeric_match" in m for m in results.values()) else "exact_match"

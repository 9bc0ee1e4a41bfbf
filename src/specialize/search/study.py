"""The search stage: an Optuna study over the `search:` space, in the registry's database, within a wall-time
budget; its trials are runs whose parent is the study.

Reads the study run's prepared data (`data/`), writes `search/objective_sample.jsonl` (the rows every trial is
scored on: validation rows, or training rows the data caps left out) and the trials' runs under `trials/`.
`search_hyperparameters` starts or continues the study, runs `workers` worker processes (`worker.py`) until the
deadline or the number of trials, and returns every trial.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.config import RunConfig
from specialize.data import PreparedData, read_prepared
from specialize.data.audit import SAMPLED_OUT
from specialize.data.split import seeded_sample
from specialize.errors import ConfigError
from specialize.evaluate.sampling import stratified_sample
from specialize.runs import write_atomic
from specialize.search.metric import GENERATION_SAMPLE, SAMPLE, headline, task_of
from specialize.search.worker import SAMPLE_FILE, StudyJob, recover_lost_trials, run_worker, storage_for

log = logging.getLogger(__name__)

EVALUATIONS_PER_EPOCH = 4  # default evaluation interval: a quarter of the training split
THIN_SAMPLE = 3  # examples per label below which the search sample's macro-F1 is mostly noise (`_note_thin`)


@dataclass(frozen=True)
class TrialRow:
    """One trial as the trials table shows it."""

    number: int
    run: str | None
    state: str  # completed, pruned, failed, not started, running, queued
    value: float | None
    params: dict[str, Any]
    steps: int | None
    seconds: float | None
    reason: str | None
    scoring: str | None = None  # label tasks: the scoring variant its value was read under


@dataclass(frozen=True)
class StudyResult:
    """Every trial of a study, and what they were scored by."""

    study: str
    metric: str
    maximize: bool
    trials: list[TrialRow]
    eval_every: int
    sample: int
    sample_from: str = "validation"  # or "unused-train": where the objective's rows come from

    @property
    def best(self) -> TrialRow | None:
        done = [t for t in self.trials if t.state == "completed" and t.value is not None]
        if not done:
            return None
        return (max if self.maximize else min)(done, key=lambda t: t.value or 0.0)


def search_hyperparameters(
    config: RunConfig,
    study: str,
    study_dir: Path,
    data: PreparedData,
    model_path: Path,
    storage: str,
    budget_seconds: float | None,
    max_trials: int | None = None,
    workers: int = 1,
    resume: bool = False,
    eval_every: int | None = None,
    sample: int | None = None,
    sample_from: str = "validation",
    progress: bool = False,
) -> StudyResult:
    """Start (or continue) the study `study` and run trials until the budget or the number of trials is spent.

    Args:
        config: the study's config, its `search:` space filled in (`space.space_of`).
        study: the study run's id; the Optuna study has the same name.
        study_dir: the study run's directory, its data stage done.
        data: the study's prepared data.
        model_path: the base model's directory.
        storage: SQLAlchemy URL of the registry, which holds the study.
        budget_seconds: wall time from now; None when continuing: what is left of the study's own deadline.
        max_trials: trials in the whole study (all workers, earlier sessions included); None: no limit.
        workers: worker processes on this machine, each with its own copy of the model.
        resume: continue the existing study instead of creating it.
        eval_every: training examples between a trial's evaluations (default: a quarter of the training split).
        sample: examples the objective is computed on (default 200; 64 for generation), stratified by label for
            classification.
        sample_from: "validation", or "unused-train": training rows that data.max_train_examples or
            data.max_per_label left out, so the whole validation split stays unseen by the search.
        progress: show the training progress bar of this process's trials.

    Raises:
        ConfigError: continuing a study whose deadline has passed without a new budget, or one not found.
    """
    import optuna

    search_dir = study_dir / "search"
    search_dir.mkdir(exist_ok=True)
    if resume:
        try:
            opened = optuna.load_study(study_name=study, storage=storage_for(storage))
        except KeyError:
            raise ConfigError(
                f"--resume {study}: no such study in {storage}; `specialize runs` lists the studies (*-study-*)"
            ) from None
        attrs = opened.user_attrs
        deadline = time.time() + budget_seconds if budget_seconds is not None else attrs["deadline"]
        if deadline <= time.time():
            raise ConfigError(
                f"study {study}: its budget was spent; give it more time with --budget, e.g. --budget 30m"
            )
        if max_trials is None:
            max_trials = attrs.get("max_trials")
        if not (search_dir / SAMPLE_FILE).exists():  # a study directory made again on another machine
            write_sample(
                search_dir, data, int(attrs["sample"]), config.seed, attrs.get("sample_from", "validation")
            )
    else:
        task = task_of(read_prepared(data.validation_path), data.labels)
        size = sample or (GENERATION_SAMPLE if task == "generation" else SAMPLE)
        chosen = write_sample(search_dir, data, size, config.seed, sample_from)
        name, maximize = headline(task, chosen)
        opened = optuna.create_study(
            study_name=study, storage=storage_for(storage), direction="maximize" if maximize else "minimize"
        )
        deadline = time.time() + (budget_seconds or 0.0)
        attrs = {
            "metric": name,
            "eval_every": eval_every or max(1, data.n_train // EVALUATIONS_PER_EPOCH),
            "sample": len(chosen),
            "sample_from": sample_from,
        }
        for key, value in attrs.items():
            opened.set_user_attr(key, value)
    opened.set_user_attr("deadline", deadline)
    opened.set_user_attr("max_trials", max_trials)
    job = StudyJob(
        study=study,
        storage=storage,
        config=config,
        study_dir=study_dir,
        model_path=model_path,
        labels=data.labels,
        deadline=deadline,
        max_trials=max_trials,
        eval_every=int(attrs["eval_every"]),
        n_train=data.n_train,
    )
    _run_workers(job, workers, progress)
    recover_lost_trials(opened, storage)  # a worker process that died leaves no trial running
    return study_result(study, storage)


def write_sample(
    search_dir: Path, data: PreparedData, size: int, seed: int, sample_from: str = "validation"
) -> list[dict[str, Any]]:
    """The rows every trial is scored on: a seeded sample, the same wherever it is drawn; for classification
    stratified by label as the evaluation's `eval.max_examples` sample is, so that 100 rows of a 77-label split
    cover as many of its labels as they can rather than as many as luck gives.

    Raises:
        ConfigError: `unused-train` where the data caps left no training row out.
    """
    rows = read_prepared(data.validation_path) if sample_from == "validation" else unused_train_rows(data)
    if task_of(rows, data.labels) == "classification":
        chosen = stratified_sample(rows, [r.get("label") for r in rows], size, seed)
        _note_thin(chosen, sample_from)
    else:
        chosen = seeded_sample(rows, size, seed)
    if sample_from != "validation":
        _note_coverage(chosen, read_prepared(data.validation_path))
    write_atomic(search_dir / SAMPLE_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen))
    return chosen


def unused_train_rows(data: PreparedData) -> list[dict[str, Any]]:
    """Training rows that passed every check but were left out by `data.max_train_examples` or
    `data.max_per_label`: prepared like the rest, never trained on, and not validation rows, so a search scored on
    them leaves the whole validation split to judge the winner (a small split need not be cut in two)."""
    rows = [
        {k: v for k, v in r.items() if k not in ("split", "kind", "reason")}
        for r in read_prepared(data.directory / "rejects.jsonl")
        if r.get("split") == "train" and r.get("kind") in SAMPLED_OUT
    ]
    if not rows:
        raise ConfigError(
            "--sample-from unused-train: no training row was left out by data.max_train_examples or "
            "data.max_per_label; set one of them below the training split, or score on --sample-from validation"
        )
    return rows


def _note_thin(chosen: list[dict[str, Any]], sample_from: str) -> None:
    """Warn when the sample holds too few rows per label for its macro-F1 to rank trials: a label seen once or
    twice turns its F1 on a single answer. On banking77, 100 rows over 77 labels (1.3 each) put the default
    config's macro-F1 at 0.232 on them and 0.322 on the other 131 validation rows, and the search's pick led the
    default by 0.085 on the sample and trailed it elsewhere."""
    labels = {r.get("label") for r in chosen}
    per_label = len(chosen) / max(len(labels), 1)
    if per_label < THIN_SAMPLE:
        more = (
            "a larger --sample"
            if sample_from != "validation"
            else "a larger --sample, or --sample-from unused-train where data.max_train_examples or "
            "data.max_per_label leaves training rows out"
        )
        log.warning(
            "the search sample has %.1f examples per label (%d over %d labels): its macro-F1 turns on single "
            "answers, and the search may pick noise; give %s (at least %d per label)",
            per_label,
            len(chosen),
            len(labels),
            more,
            THIN_SAMPLE,
        )


def _note_coverage(chosen: list[dict[str, Any]], validation: list[dict[str, Any]]) -> None:
    """Say so when the left-out training rows miss labels the validation split has: the caps keep every row of a
    rare label for training, and the objective then cannot reward getting that label right."""
    missing = {r.get("label") for r in validation} - {r.get("label") for r in chosen} - {None}
    if missing:
        log.warning(
            "the search sample (training rows the data caps left out) has no example of %d validation label(s): %s; "
            "the objective cannot reward them",
            len(missing),
            ", ".join(sorted(map(str, missing))),
        )


def _run_workers(job: StudyJob, workers: int, progress: bool) -> None:
    """This process is worker 0; the others are spawned (a fresh interpreter each: no forked torch state)."""
    import multiprocessing

    if workers <= 1:
        run_worker(job, 0, None, progress)
        return
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(workers)
    children = [context.Process(target=run_worker, args=(job, i, ready)) for i in range(1, workers)]
    for child in children:
        child.start()
    finished = False
    try:
        run_worker(job, 0, ready, progress)
        finished = True
    finally:
        for child in children:
            if not finished:  # an interrupt: the others' trials in flight are lost too, and found on resume
                child.terminate()
            child.join()
            if child.exitcode:
                log.warning("search worker %s ended with exit code %s", child.pid, child.exitcode)


def study_result(study: str, storage: str) -> StudyResult:
    """Every trial of the study, read back from its storage."""
    import optuna
    from optuna.trial import TrialState

    opened = optuna.load_study(study_name=study, storage=storage_for(storage))
    states = {
        TrialState.COMPLETE: "completed",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "queued",
    }
    rows = []
    for t in opened.get_trials(deepcopy=False):
        attrs = t.user_attrs
        reason = attrs.get("reason")
        state = states[t.state]
        if state == "failed" and str(reason).startswith("not started"):
            state = "not started"
        value = t.value if t.value is not None else _last(t.intermediate_values)
        rows.append(
            TrialRow(
                t.number,
                attrs.get("run"),
                state,
                value,
                dict(t.params),
                attrs.get("steps"),
                attrs.get("seconds"),
                reason,
                attrs.get("scoring"),
            )
        )
    u = opened.user_attrs
    return StudyResult(
        study,
        u["metric"],
        opened.direction == optuna.study.StudyDirection.MAXIMIZE,
        rows,
        int(u["eval_every"]),
        int(u["sample"]),
        u.get("sample_from", "validation"),
    )


def _last(values: dict[int, float]) -> float | None:
    """A pruned trial's value: its last evaluation."""
    return values[max(values)] if values else None

"""A search worker: one process that loads the base model once and runs trials of a study until the study's
deadline, its number of trials, or an interrupt.

Each trial is a run in the registry whose parent is the study: its directory under the study's `trials/`, its
config (the study's config with the trial's values), its training metrics and the validation metric at each
evaluation, and how it ended (completed; pruned, with the step and the reason; failed). Between trials only the
adapter is reset (`train.Preloaded`); the prepared data and their encoded rows are shared by every trial.

Several workers share a study through its storage (the registry's database): on one machine `specialize tune
--workers K` starts them; on others, `specialize tune --resume STUDY --search-only` pointed at the same
PostgreSQL URL joins them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from specialize.config import RunConfig, save_resolved
from specialize.errors import SpecializeError
from specialize.runs import Registry, RunDir, build_run_dir, write_atomic
from specialize.search.space import apply, space_of, suggest

if TYPE_CHECKING:
    import optuna

    from specialize.search.metric import ValidationMetric
    from specialize.train import Preloaded

log = logging.getLogger(__name__)

SAMPLE_FILE = "objective_sample.jsonl"  # in the study's search/ folder: the rows the objective is computed on
HEARTBEAT_SECONDS = 20  # a trial's worker writes a heartbeat this often...
GRACE_SECONDS = 90  # ...and a trial without one for this long lost its worker (another machine's, say)
MAX_NOT_STARTED = 3  # trials in a row too long for the time left, after which a worker stops
REDUCTION = 3  # successive halving keeps the best third of the trials at each rung
INTERRUPTED = "interrupted (Ctrl-C); its values are queued again"
LOST = "lost: its worker stopped while it ran (killed?); its values are queued again"


@dataclass(frozen=True)
class StudyJob:
    """What a worker needs to run trials of a study; plain values, so that it can be sent to a new process."""

    study: str  # the study run's id, also the Optuna study's name
    storage: str  # SQLAlchemy URL of the registry, which holds the study too
    config: RunConfig  # the study's config, its `search:` space filled in
    study_dir: Path
    model_path: Path
    labels: list[str] | None
    deadline: float  # time.time() after which no trial runs on
    max_trials: int | None
    eval_every: int  # training examples between two evaluations of a trial: the pruner's smallest resource
    n_train: int

    @property
    def search_dir(self) -> Path:
        return self.study_dir / "search"


class _Stop(Exception):
    """Raised from the evaluation hook to end a trial early: pruned, or out of time."""

    def __init__(self, reason: str, step: int) -> None:
        super().__init__(reason)
        self.reason, self.step = reason, step


def storage_for(url: str) -> optuna.storages.RDBStorage:
    """Optuna's tables in the registry's database, with heartbeats so that a dead worker's trial is found."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # workers of one machine queue for SQLite's lock
    import sqlalchemy

    for attempt in range(3):
        try:
            with (
                warnings.catch_warnings()
            ):  # heartbeats are "experimental" in Optuna, and have been since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=lambda study, trial: _requeue(study, trial, url),
                )
        except sqlalchemy.exc.SQLAlchemyError as exc:
            # Two processes making Optuna's tables at once: the later one finds them made, and opens them again.
            if attempt == 2 or "already exists" not in str(exc):
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def open_study(job: StudyJob, worker: int) -> optuna.Study:
    """The study, with this worker's sampler and pruner (neither is stored: every worker builds its own).

    TPE is seeded per worker (the config's seed plus the worker's number), so that one worker's study is
    reproducible and several workers do not draw the same values; the constant liar keeps concurrent trials
    apart. The pruner is asynchronous successive halving on training examples seen, with rungs at one, three,
    nine... evaluation intervals: a trial goes on past a rung when it is in the best third of the trials that
    reached it (the best, while fewer than three have). Hyperband would run several such brackets side by side,
    each with its own trials; a budget of a few dozen trials on a CPU leaves each bracket too few to prune.
    """
    import optuna

    sampler = optuna.samplers.TPESampler(
        seed=job.config.seed + worker, n_startup_trials=5, multivariate=True, constant_liar=True
    )
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=job.eval_every, reduction_factor=REDUCTION)
    return optuna.load_study(
        study_name=job.study, storage=storage_for(job.storage), sampler=sampler, pruner=pruner
    )


def run_worker(job: StudyJob, worker: int = 0, ready: Any = None, progress: bool = False) -> int:
    """Run trials of the study until its deadline or number of trials; returns how many this worker ran.

    Args:
        job: the study and its settings.
        worker: this worker's number (0 for the process that started the study); seeds its sampler.
        ready: a barrier every worker of one `specialize tune --workers K` waits at once its model is loaded,
            so that they start together.
        progress: show each trial's training progress bar.
    """

    from specialize.data import read_prepared
    from specialize.models import load_model
    from specialize.search.metric import ValidationMetric
    from specialize.train import Preloaded

    model, tokenizer = load_model(job.model_path)
    preloaded = Preloaded(model, tokenizer)
    context = getattr(model.config, "max_position_embeddings", 2048)
    rows = read_prepared(job.search_dir / SAMPLE_FILE)
    shots = read_prepared(job.study_dir / "data" / "train.jsonl")
    metric = ValidationMetric(rows, job.labels, tokenizer, context, job.config.seed, job.config.eval, shots)
    if ready is not None:
        # A worker that failed to start breaks the barrier: the others go on without it.
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait(timeout=600)
    study = open_study(job, worker)
    registry = Registry(job.storage)
    parent = os.getppid()
    ran = skipped = 0
    while time.time() < job.deadline and (ready is None or os.getppid() == parent):
        recover_lost_trials(study, job.storage)
        if job.max_trials is not None and _started(study) >= job.max_trials:
            break
        if job.deadline - time.time() < _shortest(study):  # not even the quickest trial so far would fit
            break
        outcome = _run_trial(study, job, registry, preloaded, metric, progress)
        if outcome in ("out of time", "full"):
            break
        # A trial too long for the time left is not started; shorter values may still fit, but a sampler that
        # keeps drawing long ones means the budget is spent.
        skipped = skipped + 1 if outcome == "not started" else 0
        if skipped == MAX_NOT_STARTED:
            break
        ran += outcome == "ran"
    return ran


def _shortest(study: optuna.Study) -> float:
    """Seconds of the quickest trial that ran to its end (0 before any has)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min((t.user_attrs.get("seconds", 0.0) for t in done), default=0.0)


def _started(study: optuna.Study, before: int | None = None) -> int:
    """Trials that ran or are running; with `before`, only those numbered below it (asked earlier)."""
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    trials = study.get_trials(deepcopy=False, states=counted)
    return len(trials) if before is None else sum(t.number < before for t in trials)


def _run_trial(
    study: optuna.Study,
    job: StudyJob,
    registry: Registry,
    preloaded: Preloaded,
    metric: ValidationMetric,
    progress: bool,
) -> Literal["ran", "not started", "out of time", "full"]:
    """Ask the sampler for a trial and run it, unless the trials so far say it cannot finish before the deadline
    ("not started"); "out of time" when the deadline stopped it; "full" when other workers' trials, asked at the
    same moment, already make up `max_trials`."""
    from optuna.trial import TrialState

    from specialize.train import train

    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for Study.optimize; this loop records them itself (_heartbeat),
        # because it must look at a trial's values before deciding to run it (the budget), which optimize() cannot.
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    # Workers check the count before asking, so two can ask for the last trial at once; the storage numbers trials
    # in order, and the later one gives its trial up.
    if job.max_trials is not None and _started(study, before=trial.number) >= job.max_trials:
        trial.set_user_attr("reason", f"not started: the study already has its {job.max_trials} trials")
        study.tell(trial, state=TrialState.FAIL)
        return "full"
    config = apply(
        job.config,
        suggest(trial, space_of(job.config)),
        name=f"{job.config.name.removesuffix('-study')}-trial",
    )
    t = config.train
    per_step = t.batch_size * t.gradient_accumulation
    n_train = min(job.n_train, config.data.max_train_examples or job.n_train)
    steps = t.max_steps or max(1, math.ceil(t.epochs * n_train / per_step))
    every = max(1, round(job.eval_every / per_step))
    estimate = estimate_seconds(study, steps * per_step, math.ceil(steps / every))
    left = job.deadline - time.time()
    if estimate is not None and estimate > left:
        trial.set_user_attr(
            "reason", f"not started: needs about {estimate:.0f} s, {left:.0f} s of the budget left"
        )
        study.tell(trial, state=TrialState.FAIL)
        log.info("trial %d not started: about %.0f s needed, %.0f s left", trial.number, estimate, left)
        return "not started"
    run_dir = _trial_run(job, config, trial.number, n_train)
    registry.create_run(run_dir, config.name, config.base_model, config.model_dump(mode="json"), job.study)
    trial.set_user_attr("run", run_dir.id)
    trial.set_user_attr("steps_planned", steps)
    started, evaluated = time.perf_counter(), {"seconds": 0.0, "count": 0, "value": math.nan, "step": 0}

    def on_evaluation(step: int, model: Any) -> None:
        clock = time.perf_counter()
        value = metric(model)
        evaluated["seconds"] += time.perf_counter() - clock
        evaluated["count"] += 1
        evaluated["value"], evaluated["step"] = value, step
        trial.report(value, step * per_step)  # the resource is examples seen: comparable across batch sizes
        if metric.scoring is not None:  # the label-scoring variant the value was read under
            trial.set_user_attr("scoring", metric.scoring)
        registry.log_metrics(run_dir.id, "search", {metric.name: value}, step=step)
        if step == steps:
            return
        if time.time() >= job.deadline:
            raise _Stop(f"budget: the study's time ran out at step {step} of {steps}", step)
        if trial.should_prune():
            raise _Stop(
                f"pruned at step {step} of {steps} ({step * per_step} examples seen): {metric.name} "
                f"{value:.4f} was not in the best third of the trials at that point",
                step,
            )

    def record(state: str, reason: str | None) -> None:
        seconds = time.perf_counter() - started
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("eval_seconds", evaluated["seconds"])
        trial.set_user_attr("evaluations", evaluated["count"])
        trial.set_user_attr("steps", evaluated["step"])
        trial.set_user_attr("examples", evaluated["step"] * per_step)
        if reason:
            trial.set_user_attr("reason", reason)
        registry.log_metrics(
            run_dir.id,
            "search",
            {"trial": trial.number, "steps": evaluated["step"], "seconds": seconds}
            | ({"pruned_step": evaluated["step"]} if state == "pruned" else {}),
        )
        registry.finish_run(run_dir.id, state, error=reason)

    try:
        with _heartbeat(study, trial):
            train(
                config.train,
                job.model_path,
                run_dir.data / "train.jsonl",
                job.search_dir / SAMPLE_FILE,
                run_dir.train,
                config.seed,
                on_metrics=lambda step, values: registry.log_metrics(run_dir.id, "train", values, step=step),
                progress=progress,
                preloaded=preloaded,
                evaluate_every=every,
                on_evaluation=on_evaluation,
            )
    except _Stop as stop:
        record("pruned", stop.reason)
        study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d: %s", trial.number, stop.reason)
        return "out of time" if stop.reason.startswith("budget") else "ran"
    except (SpecializeError, MemoryError) as exc:  # a diverging loss, too little memory: the values' fault
        record("failed", f"{type(exc).__name__}: {exc}")
        study.tell(trial, state=TrialState.FAIL)
        log.info("trial %d failed: %s", trial.number, exc)
        return "ran"
    except BaseException as exc:  # an interrupt too: the trial in flight is lost, and says why
        interrupted = isinstance(exc, KeyboardInterrupt)
        record("failed", INTERRUPTED if interrupted else f"{type(exc).__name__}: {exc}")
        study.tell(trial, state=TrialState.FAIL)
        if interrupted:  # its values were not at fault: tried again when the study goes on
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    record("completed", None)
    value = evaluated["value"]
    study.tell(trial, value)
    log.info("trial %d: %s %.4f after %d steps", trial.number, metric.name, value, steps)
    return "ran"


def _trial_run(job: StudyJob, config: RunConfig, number: int, n_train: int) -> RunDir:
    """The trial's run directory: its config, and the study's prepared data (a seeded subset of the training
    split when the trial samples `data.max_train_examples`: the same rows a run with that value keeps)."""
    from specialize.data import read_prepared
    from specialize.data.split import seeded_sample

    data = job.study_dir / "data"

    def fill(staging: RunDir) -> None:
        for name in ("validation.jsonl", "rejects.jsonl", "audit.json", "train.jsonl"):
            if name == "train.jsonl" and n_train < job.n_train:
                rows = seeded_sample(read_prepared(data / name), n_train, config.seed)
                write_atomic(staging.data / name, "".join(_json_line(r) for r in rows))
            else:
                (staging.data / name).symlink_to(data / name)
        save_resolved(config, staging.config)

    run_dir, _ = build_run_dir(job.study_dir / "trials", f"{job.study}-trial{number:03d}", fill)
    return run_dir


def _json_line(row: dict[str, Any]) -> str:
    import json

    return json.dumps(row, ensure_ascii=False) + "\n"


def estimate_seconds(study: optuna.Study, examples: int, evaluations: int) -> float | None:
    """How long a trial of `examples` training examples and `evaluations` evaluations will take, from the
    trials that ran so far (their seconds per training example and per evaluation); None before any ran."""
    from optuna.trial import TrialState

    done = [
        t.user_attrs
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.user_attrs.get("examples")
    ]
    if not done:
        return None
    train_seconds = sum(a["seconds"] - a["eval_seconds"] for a in done)
    per_example = train_seconds / sum(a["examples"] for a in done)
    per_evaluation = sum(a["eval_seconds"] for a in done) / max(sum(a["evaluations"] for a in done), 1)
    return examples * per_example + evaluations * per_evaluation


def recover_lost_trials(study: optuna.Study, storage_url: str) -> None:
    """Fail the trials whose worker died (SIGKILL, a lost machine) and queue their values again.

    A worker of this machine that no longer runs is found at once; one elsewhere, when its heartbeat is older
    than the grace period (Optuna's `fail_stale_trials`, which calls the same `_requeue`).
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    # Optuna offers no public way from a study to its storage or from a trial to its id; both are stable.
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if where == host and pid.isdigit() and not _alive(int(pid)):
            try:
                storage.set_trial_user_attr(trial._trial_id, "reason", LOST)
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
            _requeue(study, trial, storage_url)
    with warnings.catch_warnings():  # experimental in Optuna, as its own optimize() says when it calls it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, storage_url: str) -> None:
    """A lost trial: its run marked failed, its values queued to be tried again."""
    run = trial.user_attrs.get("run")
    if run:
        Registry(storage_url).finish_run(run, "failed", error=LOST)
    if "retry_of" not in trial.user_attrs:  # once: values that kill their worker twice are not tried again
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    log.info("trial %d lost its worker; its values are queued again", trial.number)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every few seconds while it runs, from a daemon thread."""
    storage: Any = study._storage  # an RDBStorage (storage_for); see recover_lost_trials
    trial_id = trial._trial_id
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            storage.record_heartbeat(trial_id)
            stop.wait(HEARTBEAT_SECONDS)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

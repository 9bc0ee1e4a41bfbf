"""`specialize tune`: a hyperparameter study from start to finish, at the orchestration layer beside `pipeline.py`.

The search itself is a stage (`specialize.search`: the Optuna study, its workers and trials, its report); what
this module adds is everything around it that creates runs, which a stage may not do: the study's own run (its
data prepared once), the best config's full run next to the default config's, and the learning curve, all
children of the study in the registry.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specialize.config import RunConfig
from specialize.data import PreparedData
from specialize.errors import ConfigError, TrainingError
from specialize.models import resolve_model
from specialize.pipeline import RunResult, build_run, check_inputs, create_run, run
from specialize.runs import Registry, RunDir, open_run

if TYPE_CHECKING:
    from specialize.search import CurvePoint, StudyResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneResult:
    """What `specialize tune` produced: the study and its trials, then (unless only searching) the best config,
    its full run and the default config's, the learning curve and the study's report."""

    study: str
    study_dir: RunDir
    search: StudyResult
    best_config: Path | None = None
    tuned: RunResult | None = None
    default: RunResult | None = None
    curve: tuple[CurvePoint, ...] = ()
    report: Path | None = None
    verdict: dict[str, Any] | None = None  # `search.verdict`: did the search help, and what to use


CURVE_SHARES = (0.25, 0.5)  # of the tuned run's training examples; its own run is the 100% point


def tune(
    config: RunConfig | None,
    budget_seconds: float | None,
    trials: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    resume: str | None = None,
    eval_every: int | None = None,
    sample: int | None = None,
    sample_from: str = "validation",
    search_only: bool = False,
    progress: bool = True,
) -> TuneResult:
    """`specialize tune`: search the `search:` space within a wall-time budget, then train the best config as a
    full run next to the default config, with a learning curve, all children of the study in the registry.

    The study is a run (`<name>-study-...`): the data are prepared once, in its `data/`; its trials are runs under
    its `trials/` and its Optuna study lives in the registry's database, so that workers here and elsewhere share
    it and `resume` continues it after an interrupt or a kill (the trial in flight is lost, and tried again).

    Args:
        config: the run config (None with `resume`: the study's own config is used).
        budget_seconds: wall time of the search; with `resume`, None continues to the study's own deadline.
        trials: most trials in the study (all workers together); None: as many as the budget allows.
        storage: SQLAlchemy URL of the registry holding runs and study (PostgreSQL to share it across
            machines); default: the config's registry.
        workers: worker processes on this machine, each with its own copy of the model.
        resume: a study's run id: continue it (or, with `search_only`, join it as more workers).
        eval_every: training examples between evaluations of a trial (default: a quarter of the training split).
        sample: examples the objective is computed on (default 200; 64 for generation).
        sample_from: where they come from: "validation", or "unused-train" (training rows the data caps left
            out; the final runs are then compared on the whole validation split).
        search_only: run trials only; the process that started the study trains the best config.
        progress: show progress bars.

    Raises:
        ConfigError: an unknown or completed study, or a continued study whose budget is spent.
        TrainingError: no trial finished within the budget.
    """
    from specialize.search import apply, search_hyperparameters, space_of, study_result, write_best_config
    from specialize.search.worker import SAMPLE_FILE

    if resume is not None:
        _mirror_study(resume, storage)
        run_dir, study_config, registry = open_run(resume, storage)
        if registry.get_run(run_dir.id)["status"] == "completed":
            raise ConfigError(
                f"study {run_dir.id} is completed (report: {run_dir.root / 'search' / 'report.html'}); "
                "start a new one with `specialize tune CONFIG`"
            )
        registry.set_status(run_dir.id, "running")
        data, model_path = PreparedData.load(run_dir.data), resolve_model(study_config.base_model)
    else:
        if config is None:
            raise ConfigError("specialize tune needs a run config, or --resume STUDY")
        update = {"registry": storage} if storage else {}
        base = config.model_copy(update=update)
        study_config = base.model_copy(update={"name": f"{config.name}-study", "search": space_of(base)})
        inputs = check_inputs(study_config)
        run_dir, data, registry = create_run(study_config, inputs)
        model_path = inputs.model_path
    study = run_dir.id
    try:
        searched = search_hyperparameters(
            study_config,
            study,
            run_dir.root,
            data,
            model_path,
            study_config.registry_url,
            budget_seconds,
            trials,
            workers,
            resume=resume is not None,
            eval_every=eval_every,
            sample=sample,
            sample_from=sample_from,
            progress=progress,
        )
        if search_only:
            return TuneResult(study, run_dir, searched)
        best = searched.best
        if best is None:
            raise TrainingError(
                f"study {study}: no trial finished within the budget ({len(searched.trials)} started); give it "
                f"more time with `specialize tune --resume {study} --budget 30m`, or shorten trials (a smaller "
                "data.max_train_examples or train.epochs in search:)"
            )
        name = study_config.name.removesuffix("-study")
        best_config = write_best_config(
            apply(study_config, best.params, name=f"{name}-tuned"),
            study,
            best.number,
            run_dir.root / "search" / "best.yaml",
        )
        final_config = _held_out(
            study_config, run_dir.root / "search" / SAMPLE_FILE, searched, data.n_validation
        )
        tuned = run(apply(final_config, best.params, name=f"{name}-tuned"), progress, parent_run=study)
        default = run(apply(final_config, {}, name=f"{name}-default"), progress, parent_run=study)
        curve = _learning_curve(final_config, best.params, tuned, name, study, progress)
        from specialize.search import study_verdict, write_study_report

        half = next((p for p in curve if p.fraction == 0.5), None)
        verdict = study_verdict(
            json.loads(tuned.eval.report_path.read_text(encoding="utf-8")),
            json.loads(default.eval.report_path.read_text(encoding="utf-8")),
            study_config.seed,
            chose_winner=_sample_is_whole_split(searched, data.n_validation),
            half_data=json.loads(Path(half.report).read_text(encoding="utf-8")) if half else None,
        )
        report = write_study_report(
            run_dir.root,
            study_result(study, study_config.registry_url),
            study_config.registry_url,
            best_config,
            tuned.eval.report_path,
            default.eval.report_path,
            list(curve),
            verdict,
        )
        registry.add_artifact(study, "report", report)
        registry.add_artifact(study, "best_config", best_config)
    except BaseException as exc:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # A config error names its own fix, which continuing the same study would not apply.
        hint = "" if isinstance(exc, ConfigError) else f"; continue with specialize tune --resume {study}"
        registry.finish_run(study, "failed", error=what + hint)
        raise
    registry.finish_run(study, "completed")
    return TuneResult(study, run_dir, searched, best_config, tuned, default, curve, report, verdict)


def _held_out(config: RunConfig, sample: Path, searched: StudyResult, n_validation: int) -> RunConfig:
    """The config of the study's final runs: evaluated on the validation rows outside the sample the trials were
    ranked on. The winner was chosen for its score on those rows, so a comparison drawn from them would flatter it
    (on banking77 the tuned config led the default by 0.085 macro-F1 there and trailed it by 0.012 on the rest).
    Where the sample holds the whole split there is nothing else to compare on; the report then says so. A sample
    of left-out training rows (`unused-train`) leaves the whole split to the comparison."""
    if searched.sample_from != "validation":
        return config
    if _sample_is_whole_split(searched, n_validation):
        log.warning(
            "the search sample holds all %d validation examples: the tuned and default runs are compared on the "
            "examples that chose the winner; give --sample fewer than the split for a held-out comparison",
            n_validation,
        )
        return config
    return config.model_copy(update={"eval": config.eval.model_copy(update={"exclude_examples": sample})})


def _sample_is_whole_split(searched: StudyResult, n_validation: int) -> bool:
    """The trials were ranked on every validation row, so the final runs can only be judged on those."""
    return searched.sample_from == "validation" and searched.sample >= n_validation


def _mirror_study(study: str, storage: str | None) -> None:
    """On a machine that does not see the study's directory (one joining it through a shared registry), make
    the same directory here from the study's registry row: its config, and its data prepared again (the same
    rows: the same files, the same seed). Trials run here keep their files here."""
    from specialize.config import DEFAULT_REGISTRY

    if (Path(study) / "config.resolved.yaml").is_file():
        return
    row = Registry(storage or DEFAULT_REGISTRY).get_run(study)
    root = Path(row["run_dir"])
    if root.exists():
        return
    config = RunConfig.model_validate(json.loads(row["config"]))
    inputs = check_inputs(config)
    log.info("study %s: its directory is not on this machine; preparing its data here in %s", study, root)
    build_run(config, inputs, root.parent, root.name)


def _learning_curve(
    config: RunConfig, params: dict[str, Any], tuned: RunResult, name: str, study: str, progress: bool
) -> tuple[CurvePoint, ...]:
    """The tuned config on 25% and 50% of its training examples (fine-tuned system only), and its own run."""
    from specialize.search import CurvePoint, apply

    def point(share: float, result: RunResult) -> CurvePoint:
        report = json.loads(result.eval.report_path.read_text(encoding="utf-8"))
        low, high = report["significance"]["intervals"]["fine_tuned"]
        value = report["systems"]["fine_tuned"][report["headline"]]
        return CurvePoint(
            share, result.data.n_train, result.run_id, value, low, high, str(result.eval.report_path)
        )

    points = []
    for share in CURVE_SHARES:
        n = max(round(share * tuned.data.n_train), config.eval.few_shot_k)
        if n >= tuned.data.n_train:
            continue
        changes = {**params, "data.max_train_examples": n, "eval.systems": ["fine_tuned"]}
        smaller = apply(config, changes, name=f"{name}-curve{round(share * 100)}")
        points.append(point(share, run(smaller, progress, parent_run=study)))
    return (*points, point(1.0, tuned))
